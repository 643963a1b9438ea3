"""Per-arm ratio metrics: collapsing rows into units, the interval, its coverage under hash and random."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from router.report.ratio import (
    ArmEstimate,
    RatioData,
    Unavailable,
    binary_moments,
    estimate,
    moments,
    per_unit,
    point,
)
from tests.report.population import Population


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[float, float]:
    low, high = scipy_stats.binom.interval(confidence, n, p)
    return low / n, high / n


def test_per_unit_sums_rows_by_unit() -> None:
    data = per_unit(["u2", "u1", "u2", "u3", "u2"], [1, 0, 0, 1, 1], [1, 1, 1, 1, 1])

    assert data.numerator.tolist() == [0, 2, 1]
    assert data.denominator.tolist() == [1, 3, 1]
    assert point(data) == pytest.approx(3 / 5)


def test_ratio_data_refuses_arrays_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="same length"):
        RatioData.of([1, 2], [1, 2, 3])


def test_equal_denominators_give_the_plain_mean_and_its_t_interval() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(5.0, 2.0, 30)
    result = estimate(RatioData.of(values, np.ones(30)))
    low, high = scipy_stats.t.interval(0.95, 29, loc=values.mean(), scale=scipy_stats.sem(values))

    assert isinstance(result, ArmEstimate)
    assert result.df == pytest.approx(29)
    assert (result.low, result.high) == pytest.approx((low, high), rel=1e-10)


def test_kish_degrees_of_freedom_follow_the_spread_of_denominators() -> None:
    summary = moments([1.0, 0.0, 2.0, 1.0], [3.0, 1.0, 4.0, 2.0])

    assert float(summary.df) == pytest.approx(10**2 / 30 - 1)
    assert int(summary.active) == 4


def test_interval_of_a_share_is_clipped_to_zero_and_one() -> None:
    clicked = np.r_[np.ones(2), np.zeros(38)]
    result = estimate(RatioData.of(clicked, np.ones(40)))

    assert isinstance(result, ArmEstimate)
    assert result.low == 0.0 and result.high < 1.0


@pytest.mark.parametrize(
    ("numerator", "denominator", "reason"),
    [
        ([], [], "no denominator"),
        ([0.0] * 30, [0.0] * 30, "no denominator"),
        ([1.0] * 10, [2.0] * 10, "not enough data: 10 units"),
        ([0.0] * 30, [3.0] * 30, "no variation"),
        ([3.0] * 30, [3.0] * 30, "no variation"),
        ([1.0, np.inf], [1.0, 1.0], "non-finite"),
        ([1.0, 1.0], [1.0, -1.0], "negative"),
    ],
)
def test_undefined_estimates_say_why(numerator: list[float], denominator: list[float], reason: str) -> None:
    result = estimate(RatioData.of(numerator, denominator))

    assert isinstance(result, Unavailable) and reason in result.reason


COVERAGE_EXPERIMENTS = 1000


def covered(result: ArmEstimate | Unavailable, truth: float) -> bool:
    assert isinstance(result, ArmEstimate)
    return result.low <= truth <= result.high


def test_interval_covers_the_true_ctr_under_hash() -> None:
    population = Population()
    users = population.draw(np.random.default_rng(20240609), (COVERAGE_EXPERIMENTS, 300))
    hits = [
        covered(estimate(RatioData.of(users.clicks[e], users.exposures[e])), population.ctr)
        for e in range(COVERAGE_EXPERIMENTS)
    ]
    low, high = binomial_interval(COVERAGE_EXPERIMENTS, 0.95)

    assert low <= np.mean(hits) <= high, f"coverage {np.mean(hits):.3f} outside [{low:.3f}, {high:.3f}]"


def test_interval_clustered_by_user_covers_under_random_where_a_per_request_one_does_not() -> None:
    # Under random each request is assigned on its own: a user with 10 requests sends about 5 to each arm,
    # and those 5 share the user's propensity. The variant's interval must cluster them by user.
    population = Population(mean_exposures=10.0)
    rng = np.random.default_rng(20240610)
    users = population.draw(rng, (COVERAGE_EXPERIMENTS, 300))
    in_arm = rng.binomial(users.exposures.astype(np.int64), 0.5)
    clicks = rng.binomial(in_arm, users.propensity).astype(np.float64)
    clustered, per_request = [], []
    for e in range(COVERAGE_EXPERIMENTS):
        clustered.append(covered(estimate(RatioData.of(clicks[e], in_arm[e])), population.ctr))
        # The same exposures as one row each (1 if clicked): what a request-level interval sees.
        owner = np.repeat(np.arange(in_arm.shape[1]), in_arm[e])
        rank = np.arange(owner.size) - np.repeat(np.cumsum(in_arm[e]) - in_arm[e], in_arm[e])
        rows = (rank < clicks[e][owner]).astype(np.float64)
        per_request.append(covered(estimate(RatioData.of(rows, np.ones(rows.size))), population.ctr))
        assert np.sum(rows) == np.sum(clicks[e])
    low, high = binomial_interval(COVERAGE_EXPERIMENTS, 0.95)

    assert low <= np.mean(clustered) <= high, f"coverage {np.mean(clustered):.3f} outside [{low:.3f}, {high:.3f}]"
    assert np.mean(per_request) < low, f"per-request coverage {np.mean(per_request):.3f} not below {low:.3f}"


def test_collapsing_request_rows_by_user_gives_the_clustered_interval() -> None:
    user = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3] * 5) + np.repeat(np.arange(5) * 4, 10)
    clicked = np.tile([1, 0, 1, 0, 0, 1, 1, 1, 0, 0], 5).astype(np.float64)
    collapsed = per_unit(user, clicked, np.ones(user.size))
    by_user = moments(collapsed.numerator, collapsed.denominator)

    assert collapsed.units == 20
    assert float(by_user.value) == pytest.approx(clicked.mean())
    assert float(by_user.df) == pytest.approx(50**2 / np.sum(collapsed.denominator**2) - 1)


@pytest.mark.parametrize(("successes", "trials"), [(3, 10), (0, 25), (25, 25), (417, 5000), (1, 2)])
def test_binary_moments_equal_the_moments_of_the_expanded_requests(successes: int, trials: int) -> None:
    expanded = moments(np.r_[np.ones(successes), np.zeros(trials - successes)], np.ones(trials))
    summary = binary_moments(successes, trials)

    for field in ("value", "variance", "df"):
        np.testing.assert_allclose(getattr(summary, field), getattr(expanded, field), rtol=1e-12)
    assert (int(summary.units), int(summary.active)) == (int(expanded.units), int(expanded.active))


def test_binary_moments_mark_what_is_undefined() -> None:
    summary = binary_moments([0, 1, 5, 3], [0, 1, 4, -1])  # no trials, one trial, more successes than trials

    assert np.isnan(summary.value[[0, 2, 3]]).all() and summary.value[1] == 1.0
    assert np.isnan(summary.variance).all()
