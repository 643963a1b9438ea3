"""The shadow comparison: golden values for Jaccard@k, RBO and Kendall's tau on fixed lists, cross-checks against
a brute-force RBO, Corsi & Urbano's reference RBO and scipy's tau, the clustered intervals validated by
simulation, and odd data (empty, disjoint, one request) never crashing or returning NaN."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from router.report import shadow as compare
from router.report.shadow import (
    Measure,
    availability,
    click_coverage,
    click_coverage_by_user,
    clicks_covered,
    clustered_mean,
    compare_affinity,
    compare_lists,
    jaccard_at_k,
    kendall_tau,
    latency_side_by_side,
    mean_affinity,
    noise_floor,
    rank_biased_overlap,
    ratio_of_sums,
    tau_b,
)
from router.report.stats import UnitCounts, ratio_variance

Z95 = float(scipy_stats.norm.ppf(0.975))


def coverage_band(experiments: int, level: float = 0.95) -> tuple[float, float]:
    """The 99% binomial band of the share of `experiments` intervals that should cover the truth."""
    low, high = scipy_stats.binom.ppf([0.005, 0.995], experiments, level)
    return low / experiments, high / experiments


# -- Jaccard@k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("live", "shadow", "k", "expected"),
    [
        ([1, 2, 3], [3, 2, 9], 3, 2 / 4),
        ([1, 2, 3], [3, 2, 9], 1, 0.0),  # {1} vs {3}
        ([1, 2, 3], [3, 2, 9], 2, 1 / 3),  # {1, 2} vs {3, 2}
        ([1, 2, 3], [1, 2, 3], 10, 1.0),
        ([1, 2, 3], [4, 5, 6], 3, 0.0),
        ([1, 2, 2, 3], [1], 2, 1 / 2),  # the repeat is dropped: top-2 of live is {1, 2}
        ([1, 2, 3], [], 3, 0.0),
        ([], [], 3, None),
    ],
)
def test_jaccard_at_k_golden_values(live: list[int], shadow: list[int], k: int, expected: float | None) -> None:
    assert jaccard_at_k(live, shadow, k) == expected


def test_jaccard_refuses_k_below_one() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        jaccard_at_k([1], [1], 0)


# -- rank-biased overlap ------------------------------------------------------------------------------


def test_rbo_hand_computed_from_the_papers_definition() -> None:
    """RBO_EXT = (1-p) sum_{d<=k} p^(d-1) A_d + A_k p^k for two lists of length k (Webber et al. 2010, eq. 30).

    [1,2,3] vs [1,3,2], p = 0.9: A_1 = 1, A_2 = 1/2, A_3 = 1, so 0.1 (1 + 0.9/2 + 0.81) + 0.729 = 0.955.
    [1..5] vs [2,3,4,1,5]: A = 0, 1/2, 2/3, 1, 1, so 0.1 (0 + 0.45 + 0.54 + 0.729 + 0.6561) + 0.59049 = 0.828.
    Uneven (eq. 32), [1,2] vs [3,4,5,1], p = 0.5: X_1..X_4 = 0, 0, 0, 1 and X_s = 0, so
    (1-p)/p (1/4 p^4) + (X_4/4) p^4 = 1/64 + 1/64 = 0.03125.
    """
    assert rank_biased_overlap([1, 2, 3], [1, 3, 2], 0.9) == pytest.approx(0.955, abs=1e-15)
    assert rank_biased_overlap([1, 2, 3, 4, 5], [2, 3, 4, 1, 5], 0.9) == pytest.approx(0.828, abs=1e-15)
    assert rank_biased_overlap([1, 2], [3, 4, 5, 1], 0.5) == pytest.approx(0.03125, abs=1e-15)
    assert rank_biased_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert rank_biased_overlap([1, 2, 3], [4, 5, 6]) == 0.0


def test_rbo_of_a_prefix_extrapolates_to_one() -> None:
    """The extrapolation assumes the shorter list goes on agreeing: [1,2] vs [1,2,3] is 1 (Jaccard@3 is 2/3)."""
    assert rank_biased_overlap([1, 2], [1, 2, 3]) == pytest.approx(1.0, abs=1e-15)
    assert jaccard_at_k([1, 2], [1, 2, 3], 3) == pytest.approx(2 / 3)


#: (live, shadow, p, RBO_EXT) from Corsi & Urbano's reference implementation (SIGIR 2024), produced with:
#:   python3 -m venv /tmp/urbano/venv && /tmp/urbano/venv/bin/pip install numpy==1.26.4
#:   # rbo/Python/rbo.py of github.com/julian-urbano/sigir2024-rbo at 0338fd9dee6d51b5c51a40cb72c9fc73837c3a4a
#:   # saved as /tmp/urbano/rbo.py, then in /tmp/urbano:
#:   /tmp/urbano/venv/bin/python -c 'from rbo import rbo; print(repr(float(rbo(a.split(), b.split(), p,
#:       score=("ext",))["ext"])))'    # for each (a, b, p) below, items as strings
URBANO_RBO_EXT = [
    ("1 2 3 4 5", "2 3 4 1 5", 0.9, 0.828),
    ("1 2 3", "1 3 2", 0.9, 0.955),
    ("1 2 3 4 5 6 7 8 9 10", "10 9 8 7 6 5 4 3 2 1", 0.9, 0.5116075656428571),
    ("1 2 3 4 5 6 7 8 9 10", "1 2 3 11 12 13 14 15 16 17", 0.9, 0.5658527303071427),
    ("1 2 3", "1 4 2 5 3 6 7", 0.9, 0.7838836428571427),
    ("1 2 3 4", "5 6 7 1 2 8 9 10 11 12", 0.8, 0.1851894182603175),
    ("7 3 9 1 4 8 2", "3 7 1 12 9 4", 0.95, 0.78713259375),
    ("1 2", "3 4 5 1", 0.5, 0.03125),
]


@pytest.mark.parametrize(("live", "shadow", "p", "expected"), URBANO_RBO_EXT)
def test_rbo_matches_the_reference_implementation(live: str, shadow: str, p: float, expected: float) -> None:
    a, b = [int(x) for x in live.split()], [int(x) for x in shadow.split()]
    assert rank_biased_overlap(a, b, p) == pytest.approx(expected, abs=1e-12)
    assert rank_biased_overlap(b, a, p) == pytest.approx(expected, abs=1e-12)  # symmetric


def brute_force_rbo(first: list[int], second: list[int], p: float, depth: int = 4000) -> float:
    """RBO as the paper's expected agreement, summed depth by depth: (1-p) sum_d p^(d-1) A_d.

    A_d is counted with sets at every depth; past the shorter list (length s) its unseen items are assumed to
    agree at its seen rate X_s/s (eq. 32's assumption), and past the longer one (length l) the agreement stays
    at its depth-l value. Truncated at `depth` (p^4000 is 0 in floating point for p <= 0.95).
    """
    short, long = (first, second) if len(first) <= len(second) else (second, first)
    s, length = len(short), len(long)
    x_s = len(set(short) & set(long[:s]))
    agreements = []  # A_1 .. A_l; A_d = A_l beyond l
    for d in range(1, length + 1):
        x_d = len(set(short[:d]) & set(long[:d]))
        agreements.append(x_d / d if d <= s else (x_d + (d - s) * x_s / s) / d)
    return sum((1 - p) * p ** (d - 1) * agreements[min(d, length) - 1] for d in range(1, depth + 1))


def test_rbo_matches_a_brute_force_sum_on_random_lists() -> None:
    rng = np.random.default_rng(16)
    for _ in range(150):
        universe = int(rng.integers(3, 25))
        a = [int(x) for x in rng.permutation(universe)[: rng.integers(1, min(universe, 12) + 1)]]
        b = [int(x) for x in rng.permutation(universe)[: rng.integers(1, min(universe, 12) + 1)]]
        p = float(rng.choice([0.5, 0.8, 0.9, 0.95]))
        assert rank_biased_overlap(a, b, p) == pytest.approx(brute_force_rbo(a, b, p), abs=1e-12)


def test_rbo_is_undefined_for_an_empty_list_and_refuses_a_bad_persistence() -> None:
    assert rank_biased_overlap([], [1, 2]) is None
    assert rank_biased_overlap([], []) is None
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="persistence"):
            rank_biased_overlap([1], [1], p)


# -- Kendall's tau ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("live", "shadow"),
    [
        (list(range(1, 11)), [3, 1, 2, 11, 12, 5, 4, 13, 14, 15]),
        (list(range(1, 11)), list(range(10, 0, -1))),
        ([5, 9, 2, 7, 1, 3], [9, 5, 7, 2, 3, 1, 8]),
        ([1, 2, 3, 4], [4, 30, 1, 2, 40, 3]),
    ],
)
def test_kendall_tau_matches_scipy_over_the_common_items(live: list[int], shadow: list[int]) -> None:
    common = [item for item in live if item in shadow]
    expected = scipy_stats.kendalltau(range(len(common)), [shadow.index(i) for i in common]).statistic
    assert kendall_tau(live, shadow) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_golden_values() -> None:
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    # common items 1, 2, 3, 4, 5 ranked 0..4 by live and (1, 2, 0, 6, 5) by the shadow: 7 concordant, 3 discordant
    assert kendall_tau(list(range(1, 11)), [3, 1, 2, 11, 12, 5, 4, 13, 14, 15]) == pytest.approx(0.4)
    assert kendall_tau([1, 2, 3], [1, 9, 8]) is None  # one common item
    assert kendall_tau([1, 2], [3, 4]) is None
    assert kendall_tau([], []) is None


def test_tau_b_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        x, y = rng.integers(0, 5, n), rng.integers(0, 5, n)
        expected = scipy_stats.kendalltau(x, y).statistic
        value = tau_b(x, y)
        if math.isnan(expected):
            assert value is None
        else:
            assert value == pytest.approx(expected, abs=1e-12)
    assert tau_b([1, 1, 1], [1, 2, 3]) is None  # a constant side


# -- click coverage -----------------------------------------------------------------------------------


def test_clicks_covered_counts_distinct_clicked_live_items_in_the_shadows_top_k() -> None:
    assert clicks_covered(live=[1, 2, 3, 4], clicked=[2, 4, 9], shadow=[4, 5, 6], k=3) == (1, 2)  # 9 not shown
    assert clicks_covered(live=[1, 2, 3, 4], clicked=[2, 4], shadow=[4, 5, 6, 2], k=3) == (1, 2)  # 2 is 4th
    assert clicks_covered(live=[1, 2, 3, 4], clicked=[2, 4], shadow=[4, 5, 6, 2], k=4) == (2, 2)
    assert clicks_covered(live=[5, 6], clicked=[6, 6], shadow=[6], k=3) == (1, 1)  # one item, clicked twice
    assert clicks_covered(live=[5, 6], clicked=[], shadow=[6], k=3) == (0, 0)


def test_click_coverage_golden_value_over_users() -> None:
    users = ["u1", "u1", "u2", "u3"]
    counts = [
        clicks_covered([1, 2, 3, 4], [2, 4, 9], [4, 5, 6], 3),  # (1, 2)
        clicks_covered([1, 2], [1], [1], 3),  # (1, 1)
        clicks_covered([5, 6], [6, 6], [6], 3),  # (1, 1)
        clicks_covered([7, 8], [], [7], 3),  # (0, 0): no clicks, no information
    ]
    measure = click_coverage(users, [c[0] for c in counts], [c[1] for c in counts])
    assert measure.value == pytest.approx(3 / 4)
    assert (measure.requests, measure.users) == (4, 2)  # four clicked items from two users
    assert measure.low is not None and measure.high is not None and 0 <= measure.low < 0.75 < measure.high <= 1


def test_click_coverage_interval_covers_the_truth_and_the_naive_one_does_not() -> None:
    """400 simulated experiments of 300 users whose coverage varies a lot by user (Beta(0.5, 0.5), mean 0.5):
    the user-clustered interval covers 0.5 as often as it claims (99% binomial band around 95%); the naive
    Wilson interval over clicked items, which treats a user's items as independent, covers far less often."""
    rng = np.random.default_rng(2010)
    experiments, users = 400, 300
    clicked = 1 + rng.poisson(2.0, (experiments, users))
    covered = rng.binomial(clicked, rng.beta(0.5, 0.5, (experiments, users)))
    clustered = naive = 0
    for hits, clicks in zip(covered, clicked, strict=True):
        measure = click_coverage_by_user(hits, clicks)
        assert measure.low is not None and measure.high is not None
        clustered += measure.low <= 0.5 <= measure.high
        low, high = proportion_confint(hits.sum(), clicks.sum(), method="wilson")
        naive += low <= 0.5 <= high
    low_band, high_band = coverage_band(experiments)
    assert low_band <= clustered / experiments <= high_band
    assert naive / experiments < low_band


# -- clustered means ----------------------------------------------------------------------------------


def test_ratio_of_sums_variance_is_the_reports_clustered_ratio_variance() -> None:
    rng = np.random.default_rng(3)
    denominators = rng.integers(1, 8, 60)
    numerators = rng.binomial(denominators, 0.3)
    measure = ratio_of_sums(numerators, denominators)
    half = Z95 * math.sqrt(ratio_variance(UnitCounts.of(denominators, numerators)))
    assert measure.value is not None
    assert measure.value == pytest.approx(numerators.sum() / denominators.sum())
    assert measure.low == pytest.approx(measure.value - half) and measure.high == pytest.approx(measure.value + half)


def test_clustered_mean_interval_covers_the_truth_in_simulation() -> None:
    """400 experiments of 200 users with 1-8 requests each and a per-user mean ~ Beta(2, 2): the interval
    of the mean over requests covers 0.5 within the 99% binomial band around 95%."""
    rng = np.random.default_rng(1852102)
    experiments, users, most = 400, 200, 8
    requests = rng.integers(1, most + 1, (experiments, users))
    user_mean = rng.beta(2, 2, (experiments, users))
    draws = rng.beta(4 * user_mean[..., None], 4 * (1 - user_mean[..., None]), (experiments, users, most))
    sums = np.where(np.arange(most) < requests[..., None], draws, 0.0).sum(axis=2)
    covered = 0
    for num, den in zip(sums, requests, strict=True):
        measure = ratio_of_sums(num, den, bounds=(0.0, 1.0))
        assert measure.low is not None and measure.high is not None
        covered += measure.low <= 0.5 <= measure.high
    low_band, high_band = coverage_band(experiments)
    assert low_band <= covered / experiments <= high_band


def test_clustered_mean_groups_requests_by_user_and_skips_undefined_values() -> None:
    measure = clustered_mean(["a", "a", "b", "c"], [1.0, None, 0.0, 0.5], bounds=(0.0, 1.0))
    assert measure.value == pytest.approx(0.5)
    assert (measure.requests, measure.users, measure.skipped) == (3, 3, 1)
    one = clustered_mean(["a", "a"], [0.2, 0.4])
    assert one.value == pytest.approx(0.3) and one.low is None and one.reason == "one user: no interval"
    assert clustered_mean([], []).reason == "no requests"
    assert clustered_mean(["a", "b"], [None, None]).reason == "undefined for all 2 requests"


# -- availability, latency, affinity, noise floor -----------------------------------------------------


def test_availability_is_the_share_of_calls_that_succeeded_clustered_by_user() -> None:
    measure = availability(["u1", "u1", "u1", "u2", "u3"], [True, True, False, True, True])
    assert measure.value == pytest.approx(4 / 5) and (measure.requests, measure.users) == (5, 3)
    assert measure.low is not None and measure.high is not None and measure.low < 0.8 < measure.high <= 1
    assert availability(["u1"], [False]) == Measure(0.0, None, None, 1, 1, reason="one user: no interval")
    assert availability([], []).reason == "no shadow calls"


def test_latency_side_by_side_reports_both_percentiles_and_missing_sides() -> None:
    result = latency_side_by_side(np.arange(1.0, 101.0), np.arange(1.0, 101.0) * 2)
    assert (result.live_p50, result.shadow_p50) == pytest.approx((50.5, 101.0))
    assert (result.live_p99, result.shadow_p99) == pytest.approx((99.01, 198.02))
    assert result.reason is None and (result.live_calls, result.shadow_calls) == (100, 100)
    empty = latency_side_by_side([3.0], [])
    assert empty.shadow_p50 is None and empty.live_p50 == 3.0 and empty.reason == "no successful shadow calls"
    assert "fewer than 100" in (latency_side_by_side([1.0, 2.0], [1.0]).reason or "")


def test_affinity_comparison_agrees_with_the_ground_truth() -> None:
    """A shadow that picks each user's 10 best items vs a live model that picks 10 at random: the measured
    difference is the truth's (computed from the matrix directly) and its interval excludes 0."""
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(300, 200))
    users = np.repeat(np.arange(300), 3)
    live_lists = [rng.choice(200, 10, replace=False) for _ in users]
    shadow_lists = [np.argsort(-truth[u])[:10] for u in users]
    live = [mean_affinity(truth[u, items]) for u, items in zip(users, live_lists, strict=True)]
    shadow = [mean_affinity(truth[u, items]) for u, items in zip(users, shadow_lists, strict=True)]
    result = compare_affinity(users.astype(str), live, shadow)
    pairs = zip(users, live_lists, shadow_lists, strict=True)
    expected = np.mean([truth[u, s].mean() - truth[u, a].mean() for u, a, s in pairs])
    assert result.difference.value == pytest.approx(expected)
    assert result.difference.low is not None and result.difference.low > 0
    assert result.shadow.value == pytest.approx(np.mean(shadow))  # type: ignore[arg-type]
    assert result.live.value == pytest.approx(np.mean(live))  # type: ignore[arg-type]
    assert mean_affinity([]) is None


def test_affinity_golden_values_and_missing_sides() -> None:
    result = compare_affinity(["u1", "u1", "u2", "u3"], [1.0, 2.0, 0.0, None], [1.5, 2.5, 1.0, 4.0])
    assert result.live.value == pytest.approx(1.0) and result.live.skipped == 1
    assert result.shadow.value == pytest.approx(9.0 / 4)
    assert result.difference.value == pytest.approx(2.0 / 3) and result.difference.skipped == 1


def test_noise_floor_says_deterministic_when_every_self_comparison_is_identical() -> None:
    lists = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    floor = noise_floor(["a", "b", "c"], lists, [list(x) for x in lists])
    assert floor.deterministic is True and floor.statement.startswith("deterministic: noise floor 0")
    assert floor.comparison is not None and floor.comparison.jaccard.value == 1.0
    noisy = noise_floor(["a", "b", "c"], lists, [[1, 2, 3], [4, 5, 6], [9, 8, 7]])
    assert noisy.deterministic is False and noisy.statement.startswith("non-deterministic: 1 of 3")
    assert noisy.comparison is not None and noisy.comparison.kendall_tau.value == pytest.approx(1 / 3)
    none = noise_floor([], [], [])
    assert none.deterministic is None and none.comparison is None and none.statement.startswith("no self-comparison")


# -- the whole comparison on odd data -----------------------------------------------------------------


def test_compare_lists_golden_values_on_fixed_requests() -> None:
    result = compare_lists(
        ["u1", "u1", "u2"],
        [[1, 2, 3], [1, 2, 3], [4, 5, 6]],
        [[1, 3, 2], [1, 2, 3], [7, 8, 9]],
        [[3], [], [4]],
        k=3,
    )
    assert result.jaccard.value == pytest.approx((1 + 1 + 0) / 3)
    assert result.rbo.value == pytest.approx((0.955 + 1 + 0) / 3)
    assert result.kendall_tau.value == pytest.approx((1 / 3 + 1) / 2) and result.kendall_tau.skipped == 1
    assert result.click_coverage.value == pytest.approx(1 / 2)  # 3 is covered, 4 is not
    assert (result.requests, result.users, result.identical, result.persistence) == (3, 2, 1, 0.9)


def test_compare_lists_on_no_requests_one_request_and_disjoint_lists() -> None:
    empty = compare_lists([], [], [], [])
    assert empty.jaccard.value is None and empty.jaccard.reason == "no requests"
    assert empty.click_coverage.reason == "no requests"
    assert compare_lists(["u"], [[1]], [[1]], [[]]).click_coverage.reason == "no clicked live items"
    one = compare_lists(["u"], [[1, 2]], [[3, 4]])
    assert one.jaccard.value == 0.0 and one.rbo.value == 0.0 and one.jaccard.reason == "one user: no interval"
    assert one.kendall_tau.value is None and one.kendall_tau.reason == "undefined for all 1 requests"
    assert one.click_coverage.reason == "no clicks were given"
    with pytest.raises(ValueError, match="one entry per request"):
        compare_lists(["u"], [[1]], [])


def no_nan(value: Any) -> bool:
    """True if no float anywhere in a (nested) dataclass is NaN or infinite."""
    if dataclasses.is_dataclass(value):
        return all(no_nan(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, float):
        return math.isfinite(value)
    return True


lists = st.lists(st.integers(0, 12), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), lists, lists, lists), max_size=8),
    st.integers(1, 12),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_compare_lists_never_returns_nan_and_stays_in_bounds(
    requests: list[tuple[str, list[int], list[int], list[int]]], k: int, p: float
) -> None:
    users, live, shadow, clicked = (list(column) for column in zip(*requests, strict=True)) if requests else ([],) * 4
    result = compare_lists(users, live, shadow, clicked, k=k, persistence=p)
    assert no_nan(result)
    for measure, (low, high) in (
        (result.jaccard, (0, 1)),
        (result.rbo, (0, 1)),
        (result.kendall_tau, (-1, 1)),
        (result.click_coverage, (0, 1)),
    ):
        for bound in (measure.value, measure.low, measure.high):
            assert bound is None or low <= bound <= high
        assert (measure.value is None) <= (measure.reason is not None)  # no value without a reason
    for a, b in zip(live, shadow, strict=True):
        value = compare.rank_biased_overlap(a, b, p)
        assert value == compare.rank_biased_overlap(b, a, p)
        if len(compare.distinct(a)) == len(compare.distinct(b)) and value is not None:
            assert (value == pytest.approx(1.0)) == (compare.distinct(a) == compare.distinct(b))


# -- fed in chunks ------------------------------------------------------------------------------------


def random_requests(seed: int, requests: int = 300) -> dict[str, Any]:
    """Requests of 40 users with overlapping lists, some empty or short, clicks, and some missing affinities."""
    rng = np.random.default_rng(seed)
    users = [f"u{rng.integers(40)}" for _ in range(requests)]
    live, shadow, clicked, a_live, a_shadow = [], [], [], [], []
    for _ in range(requests):
        pool = rng.permutation(30)
        live.append([int(x) for x in pool[: rng.integers(0, 12)]])
        shadow.append([int(x) for x in rng.permutation(pool[:15])[: rng.integers(0, 12)]])
        clicked.append([int(x) for x in rng.choice(30, size=rng.integers(0, 3), replace=False)])
        a_live.append(None if rng.random() < 0.1 else float(rng.normal()))
        a_shadow.append(None if rng.random() < 0.1 else float(rng.normal()))
    return {"users": users, "live": live, "shadow": shadow, "clicked": clicked, "a_live": a_live, "a_shadow": a_shadow}


def approx_measure(measure: Measure) -> Any:
    """The measure with its numbers compared to 1e-9 (the accumulator sums per user in another order)."""
    approximate: dict[str, Any] = {
        name: pytest.approx(getattr(measure, name), rel=1e-9)
        for name in ("value", "low", "high")
        if getattr(measure, name) is not None
    }
    return dataclasses.replace(measure, **approximate)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_accumulator_equals_compare_lists_and_compare_affinity_over_the_same_requests(seed: int) -> None:
    data = random_requests(seed)
    accumulator = compare.ListAccumulator(k=5, persistence=0.8)
    for user, live, shadow, clicked, a, b in zip(*data.values(), strict=True):
        accumulator.add(user, live, shadow, clicked, live_affinity=a, shadow_affinity=b, with_affinity=True)
    expected = compare_lists(data["users"], data["live"], data["shadow"], data["clicked"], k=5, persistence=0.8)
    found = accumulator.comparison()
    assert (found.k, found.persistence, found.requests, found.users, found.identical) == (
        expected.k,
        expected.persistence,
        expected.requests,
        expected.users,
        expected.identical,
    )
    for name in ("jaccard", "rbo", "kendall_tau", "click_coverage"):
        assert getattr(expected, name) == approx_measure(getattr(found, name)), name
    affinity = accumulator.affinity()
    expected_affinity = compare_affinity(data["users"], data["a_live"], data["a_shadow"])
    assert affinity is not None
    for name in ("live", "shadow", "difference"):
        assert getattr(expected_affinity, name) == approx_measure(getattr(affinity, name)), name


def test_the_accumulator_says_why_when_there_is_nothing_to_compare() -> None:
    empty = compare.ListAccumulator()
    assert empty.comparison() == compare_lists([], [], [], [])
    assert empty.affinity() is None
    empty_lists = compare.ListAccumulator()
    empty_lists.add("u", [], [])
    assert empty_lists.comparison().jaccard == Measure(None, None, None, 0, 0, 1, "undefined for all 1 requests")
    assert empty_lists.comparison() == compare_lists(["u"], [[]], [[]], [[]])


def test_availability_and_latency_from_aggregates_equal_their_per_call_forms() -> None:
    rng = np.random.default_rng(5)
    users = [f"u{rng.integers(30)}" for _ in range(500)]
    ok = rng.random(500) < 0.9
    _, codes = np.unique(users, return_inverse=True)
    per_user = compare.availability_by_user(np.bincount(codes), np.bincount(codes, weights=ok).astype(int))
    assert per_user == availability(users, ok)
    live, shadow = rng.lognormal(size=80), rng.lognormal(size=80)
    quantiles = compare.latency_of_quantiles(
        tuple(np.percentile(live, [50, 99])), tuple(np.percentile(shadow, [50, 99])), 80, 80
    )
    assert quantiles == latency_side_by_side(live, shadow)
    assert compare.latency_of_quantiles(None, None, 0, 0) == latency_side_by_side([], [])
