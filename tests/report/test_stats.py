"""The report's statistics on small inline inputs: exact values, agreement with statsmodels, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from router.report import stats
from router.report.stats import UnitCounts


def test_group_units_counts_exposures_and_clicked_per_unit() -> None:
    counts = stats.group_units(["u2", "u1", "u2", "u3", "u2"], [1, 0, 0, 1, 1])

    assert counts.exposures.tolist() == [1, 3, 1]
    assert counts.clicked.tolist() == [0, 2, 1]
    assert counts.ratio == pytest.approx(3 / 5)


def test_unit_counts_refuse_more_clicked_than_exposures() -> None:
    with pytest.raises(ValueError, match="between 0 and exposures"):
        UnitCounts.of([1, 2], [2, 0])


def test_wilson_matches_statsmodels_and_is_none_without_trials() -> None:
    estimate = stats.wilson(30, 1000)

    assert estimate is not None
    assert (estimate.low, estimate.high) == pytest.approx(proportion_confint(30, 1000, method="wilson"))
    assert estimate.value == pytest.approx(0.03)
    assert stats.wilson(0, 0) is None


def test_ratio_variance_equals_statsmodels_cluster_robust_variance() -> None:
    rng = np.random.default_rng(4)
    exposures = rng.integers(1, 8, 300)
    clicked = rng.binomial(exposures, rng.beta(2, 5, 300))
    units = UnitCounts.of(exposures, clicked)
    # The same data as exposure rows: y = 1 for clicked exposures, clustered by user.
    user = np.repeat(np.arange(300), exposures)
    y = np.concatenate([np.r_[np.ones(c), np.zeros(n - c)] for n, c in zip(exposures, clicked, strict=True)])
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": user})

    assert units.ratio == pytest.approx(fit.params[0])
    assert math.sqrt(stats.ratio_variance(units)) == pytest.approx(fit.bse[0], rel=1e-9)


def test_ratio_interval_with_one_exposure_per_unit_is_the_wilson_interval() -> None:
    clicked = np.r_[np.ones(40, dtype=np.int64), np.zeros(160, dtype=np.int64)]
    estimate = stats.ratio_interval(UnitCounts.per_request(clicked))

    # One exposure per unit: the effective size is n - 1 (the variance's ddof), so nearly plain Wilson.
    low, high = proportion_confint(40, 200, method="wilson")
    assert estimate is not None
    assert (estimate.low, estimate.high) == pytest.approx((low, high), abs=2e-3)


def test_ratio_interval_widens_when_a_users_clicks_go_together() -> None:
    independent = UnitCounts.of(np.full(100, 5), np.r_[np.full(50, 2), np.full(50, 3)])
    together = UnitCounts.of(np.full(100, 5), np.r_[np.full(50, 0), np.full(50, 5)])
    narrow, wide = stats.ratio_interval(independent), stats.ratio_interval(together)

    assert narrow is not None and wide is not None
    assert narrow.value == wide.value == 0.5
    assert wide.high - wide.low > 3 * (narrow.high - narrow.low)


def test_compare_ratios_z_test_matches_its_interval() -> None:
    rng = np.random.default_rng(8)
    control = UnitCounts.of(np.full(500, 4), rng.binomial(4, 0.20, 500))
    treatment = UnitCounts.of(np.full(500, 4), rng.binomial(4, 0.25, 500))
    difference = stats.compare_ratios(control, treatment)

    assert difference.absolute is not None and difference.p_value is not None and difference.relative
    se = (difference.absolute.high - difference.absolute.low) / 2 / scipy_stats.norm.ppf(0.975)
    assert difference.p_value == pytest.approx(2 * scipy_stats.norm.sf(abs(difference.absolute.value) / se))
    assert difference.relative.value == pytest.approx(treatment.ratio / control.ratio - 1)
    assert difference.relative.low < difference.relative.value < difference.relative.high


def test_compare_proportions_p_value_is_the_pooled_z_test() -> None:
    difference = stats.compare_proportions(400, 10_000, 470, 10_000)
    _, p_pooled = proportions_ztest([470, 400], [10_000, 10_000])

    assert difference.absolute is not None and difference.p_value is not None
    assert difference.absolute.value == pytest.approx(0.007)
    assert difference.p_value == pytest.approx(p_pooled, rel=1e-3)  # score test = pooled z up to n/(n-1)
    assert difference.absolute.low < 0.007 < difference.absolute.high


@pytest.mark.parametrize(("control", "treatment"), [((0, 100), (0, 100)), ((100, 100), (100, 100)), ((0, 0), (5, 10))])
def test_compare_proportions_is_undefined_without_variation(
    control: tuple[int, int], treatment: tuple[int, int]
) -> None:
    difference = stats.compare_proportions(*control, *treatment)

    assert difference.p_value is None and difference.absolute is None


def test_compare_ratios_is_undefined_with_fewer_than_two_units() -> None:
    difference = stats.compare_ratios(UnitCounts.of([3], [1]), UnitCounts.of([2, 2], [1, 0]))

    assert difference.p_value is None and difference.absolute is None


def test_compare_ctr_follows_the_unit_of_randomisation() -> None:
    units = UnitCounts.of(np.full(50, 3), np.tile([0, 1, 3], 17)[:50])
    other = UnitCounts.of(np.full(50, 3), np.tile([1, 1, 2], 17)[:50])

    assert stats.compare_ctr(units, other, "user").method.startswith("delta method")
    assert stats.compare_ctr(units, other, "request").method.startswith("two-proportion")


def test_holm_adjusts_like_statsmodels_and_keeps_one_p_value() -> None:
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx((0.03, 0.06, 0.06))
    assert stats.holm([0.02]) == (0.02,)
    assert stats.holm([]) == ()


def test_sample_ratio_normalises_weights_and_flags_mismatch() -> None:
    balanced = stats.sample_ratio([5030, 4970], [50, 50])
    skewed = stats.sample_ratio([4500, 5500], [1, 1])

    assert balanced is not None and skewed is not None
    assert balanced.expected == (5000.0, 5000.0) and not balanced.mismatch
    assert skewed.chi2 == pytest.approx(100.0) and skewed.mismatch


def test_sample_ratio_flags_units_on_a_zero_weight_variant() -> None:
    result = stats.sample_ratio([500, 500, 3], [1, 1, 0])

    assert result is not None and result.mismatch and result.p_value == 0.0


def test_sample_ratio_is_none_without_units_and_refuses_bad_weights() -> None:
    assert stats.sample_ratio([0, 0], [1, 1]) is None
    with pytest.raises(ValueError, match="non-negative weight"):
        stats.sample_ratio([1, 2], [0, 0])


def test_units_needed_is_the_inverse_of_power() -> None:
    needed = stats.units_needed(effect=0.02, sd=0.4, ratio=1.5)

    assert stats.power(0.02, 0.4, needed, ratio=1.5) == pytest.approx(0.80, abs=1e-6)
    # Textbook formula for equal arms: n = 2 (z_{1-a/2} + z_{power})^2 sd^2 / effect^2.
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert stats.units_needed(0.02, 0.4) == pytest.approx(2 * z**2 * 0.4**2 / 0.02**2, rel=1e-3)


def test_percentiles_are_none_for_no_values() -> None:
    assert stats.percentiles([]) is None
    assert stats.percentiles(np.arange(101.0)) == (50.0, 95.0, 99.0)
