"""Treatment vs control: agreement with statsmodels, consistency of interval and verdict, small samples."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as scipy_stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from router.report.comparison import Analysis, Comparison, compare, compare_treatments, difference_batch, fieller
from router.report.ratio import RatioData, Unavailable, moments
from router.report.stats import Estimate
from tests.report.population import Population

FIXED = Analysis(sequential=False)


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[float, float]:
    low, high = scipy_stats.binom.interval(confidence, n, p)
    return low / n, high / n


def arms(
    seed: int, n: tuple[int, int] = (300, 250), rates: tuple[float, float] = (0.10, 0.13)
) -> tuple[RatioData, ...]:
    rng = np.random.default_rng(seed)
    out = []
    for units, rate in zip(n, rates, strict=True):
        users = Population().with_ctr(rate).draw(rng, (units,))
        out.append(RatioData.of(users.clicks, users.exposures))
    return tuple(out)


def test_fixed_comparison_of_plain_means_is_welchs_t_test_in_statsmodels() -> None:
    rng = np.random.default_rng(11)
    control, treatment = rng.gamma(2.0, 3.0, 40), rng.gamma(2.0, 4.0, 55)
    result = compare(RatioData.of(control, np.ones(40)), RatioData.of(treatment, np.ones(55)), FIXED)
    _, p_value, df = ttest_ind(treatment, control, usevar="unequal")
    low, high = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).tconfint_diff(usevar="unequal")

    assert isinstance(result, Comparison)
    assert result.p_value == pytest.approx(p_value, rel=1e-10)
    assert result.df == pytest.approx(df, rel=1e-10)
    assert (result.absolute.low, result.absolute.high) == pytest.approx((low, high), rel=1e-10)


def test_ratio_variance_is_the_hc2_variance_of_the_weighted_regression_in_statsmodels() -> None:
    # The ratio sum(m) / sum(d) is the weighted mean of m / d with weights d; CR2 by unit is that
    # regression's HC2 variance (leverage d_i / sum(d)), also for the difference of two arms.
    control, treatment = arms(12)
    y = np.r_[control.numerator / control.denominator, treatment.numerator / treatment.denominator]
    treated = np.r_[np.zeros(control.units), np.ones(treatment.units)]
    weights = np.r_[control.denominator, treatment.denominator]
    fit = sm.WLS(y, sm.add_constant(treated), weights=weights).fit(cov_type="HC2")
    intercept = sm.WLS(y[: control.units], np.ones(control.units), weights=weights[: control.units]).fit(cov_type="HC2")
    result = compare(control, treatment, FIXED)

    assert isinstance(result, Comparison)
    assert result.absolute.value == pytest.approx(fit.params[1], rel=1e-10)
    assert result.standard_error == pytest.approx(fit.bse[1], rel=1e-10)
    assert float(moments(control.numerator, control.denominator).variance) == pytest.approx(
        intercept.bse[0] ** 2, rel=1e-10
    )


@pytest.mark.parametrize("sequential", [False, True])
def test_significance_p_value_and_interval_never_disagree(sequential: bool) -> None:
    analysis = Analysis(sequential=sequential)
    for seed in range(100):
        control, treatment = arms(seed, n=(60, 60), rates=(0.10, 0.10 + 0.001 * (seed % 50)))
        for comparisons in (1, 3):
            result = compare(control, treatment, analysis, comparisons)
            assert isinstance(result, Comparison)
            excludes_zero = result.absolute.low > 0 or result.absolute.high < 0
            assert result.significant == excludes_zero
            assert result.significant == (result.p_value < 0.05) or abs(result.p_value - 0.05) < 1e-9
            if isinstance(result.relative, Estimate):
                assert (result.relative.low > 0 or result.relative.high < 0) == excludes_zero


def test_bonferroni_interval_is_the_interval_at_alpha_over_m() -> None:
    control, treatment = arms(3)
    treatments = {"b": treatment, "c": treatment, "d": treatment}
    adjusted = compare_treatments(control, treatments, FIXED)["b"]
    single = compare(control, treatment, Analysis(sequential=False, alpha=0.05 / 3))
    unadjusted = compare(control, treatment, FIXED)

    assert isinstance(adjusted, Comparison) and isinstance(single, Comparison) and isinstance(unadjusted, Comparison)
    assert (adjusted.absolute.low, adjusted.absolute.high) == pytest.approx((single.absolute.low, single.absolute.high))
    assert adjusted.p_value == pytest.approx(min(1.0, 3 * unadjusted.p_value))
    assert adjusted.comparisons == 3 and "Bonferroni over 3" in adjusted.method


def test_bonferroni_keeps_the_family_wise_error_rate_over_three_treatments() -> None:
    experiments, users = 2000, 200
    rng = np.random.default_rng(20240607)
    population = Population()
    drawn = [population.draw(rng, (experiments, users)) for _ in range(4)]
    summaries = [moments(u.clicks, u.exposures) for u in drawn]
    any_rejected = np.zeros(experiments, dtype=bool)
    for treatment in summaries[1:]:
        any_rejected |= difference_batch(summaries[0], treatment, FIXED, comparisons=3).significant
    _, high = binomial_interval(experiments, 0.05)

    # Bonferroni bounds the family-wise rate by alpha (slightly below it: the tests share a control).
    assert any_rejected.mean() <= high


def test_fieller_interval_contains_the_estimate_and_is_unbounded_near_a_zero_control() -> None:
    estimate = fieller(0.10, 0.01**2, 0.12, 0.01**2, 1.96)
    unbounded = fieller(0.01, 0.01**2, 0.12, 0.01**2, 1.96)

    assert isinstance(estimate, Estimate)
    assert estimate.value == pytest.approx(0.2)
    assert estimate.low < estimate.value < estimate.high
    # Each end is a ratio theta = 1 + end where the standardised difference is exactly the critical value.
    for end in (estimate.low, estimate.high):
        theta = 1 + end
        assert abs(0.12 - theta * 0.10) / np.sqrt(0.01**2 + theta**2 * 0.01**2) == pytest.approx(1.96)
    assert isinstance(unbounded, Unavailable) and "unbounded" in unbounded.reason
    assert isinstance(fieller(0.0, 0.0, 0.1, 0.01, 1.96), Unavailable)


def test_no_verdict_below_the_minimum_number_of_units() -> None:
    control, treatment = arms(5, n=(19, 400))
    result = compare(control, treatment)

    assert isinstance(result, Unavailable)
    assert "control has 19 units" in result.reason and "at least 20" in result.reason


@pytest.mark.parametrize(
    ("control", "treatment", "reason"),
    [
        (RatioData.of(np.zeros(50), np.full(50, 3.0)), RatioData.of(np.zeros(50), np.full(50, 3.0)), "no variation"),
        (
            RatioData.of(np.full(50, 3.0), np.full(50, 3.0)),
            RatioData.of(np.full(50, 2.0), np.full(50, 2.0)),
            "no variation",
        ),
        (RatioData.of(np.zeros(0), np.zeros(0)), RatioData.of(np.ones(30), np.ones(30)), "not enough data"),
        (RatioData.of(np.zeros(50), np.zeros(50)), RatioData.of(np.ones(30), np.ones(30)), "not enough data"),
        (RatioData.of(np.full(50, np.nan), np.ones(50)), RatioData.of(np.ones(30), np.ones(30)), "non-finite"),
    ],
)
def test_degenerate_data_gives_a_reason_not_a_number(control: RatioData, treatment: RatioData, reason: str) -> None:
    for sequential in (False, True):
        result = compare(control, treatment, Analysis(sequential=sequential))
        assert isinstance(result, Unavailable) and reason in result.reason


def test_an_enormous_effect_is_a_finite_significant_difference() -> None:
    rng = np.random.default_rng(6)
    exposures = np.full(40, 50.0)
    control = RatioData.of(rng.binomial(50, 0.001, 40).astype(float), exposures)
    treatment = RatioData.of(rng.binomial(50, 0.999, 40).astype(float), exposures)
    result = compare(control, treatment)

    assert isinstance(result, Comparison) and result.significant
    assert np.isfinite([result.absolute.low, result.absolute.high, result.p_value]).all()


SMALL_EXPERIMENTS = 3000


@pytest.mark.parametrize("users", [20, 50])
def test_t_with_kish_degrees_of_freedom_keeps_alpha_for_few_heavy_tailed_users_where_z_does_not(users: int) -> None:
    # Heavy-tailed users: exposures 1 + floor(LogNormal(1, 1.5)), so a few users in each arm carry most of
    # its exposures (and, with their own fixed propensity, most of its variance).
    rng = np.random.default_rng(20240608 + users)
    population = Population(exposures="heavy")
    shape = (SMALL_EXPERIMENTS, users)
    a, b = population.draw(rng, shape), population.draw(rng, shape)
    batch = difference_batch(moments(a.clicks, a.exposures), moments(b.clicks, b.exposures), FIXED)
    z_p = 2 * scipy_stats.norm.sf(np.abs(batch.difference / batch.standard_error))
    t_rate, z_rate = float(np.mean(batch.significant)), float(np.mean(z_p < 0.05))
    low, high = binomial_interval(SMALL_EXPERIMENTS, 0.05)

    assert low <= t_rate <= high, f"t false-positive rate {t_rate:.3f} outside [{low:.3f}, {high:.3f}]"
    assert z_rate > high, f"z false-positive rate {z_rate:.3f} not above {high:.3f}"
