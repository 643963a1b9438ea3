"""Pure statistics for the A/B report: intervals, treatment-vs-control comparisons, sample ratio, power.

Nothing here reads the store: inputs are counts or per-unit numpy arrays, outputs are frozen values.
Distributions, tests and intervals come from scipy and statsmodels.

The unit of analysis is the unit of randomisation. Under ``hash`` a unit is a user who makes several
requests, so CTR per exposure is a ratio metric (clicked exposures / exposures, summed over users) and its
variance comes from the delta method, which is the same as standard errors clustered by user. Under
``random`` a unit is one request, and CTR is a plain proportion compared with a two-proportion score test.

    >>> control = UnitCounts.of(exposures=[3, 1, 4], clicked=[1, 0, 2])
    >>> round(control.ratio, 3)
    0.375
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)

Unit = Literal["user", "request"]

ALPHA = 0.05
POWER = 0.80
SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """Treatment minus control: absolute difference, relative difference (treatment / control - 1), p-value.

    ``p_value`` is None when the test is undefined (no events in either arm, or too few units).
    """

    control: float
    treatment: float
    absolute: Estimate | None
    relative: Estimate | None
    p_value: float | None
    method: str


@dataclass(frozen=True)
class SampleRatio:
    """Chi-square goodness of fit of units per variant against the configured (normalised) weights."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    mismatch: bool


@dataclass(frozen=True)
class UnitCounts:
    """Per randomisation unit: how many exposures it had and how many of them got at least one click.

    Under ``random`` every unit is one request, so every ``exposures`` entry is 1.
    """

    exposures: NDArray[np.int64]
    clicked: NDArray[np.int64]

    @classmethod
    def of(cls, exposures: ArrayLike, clicked: ArrayLike) -> UnitCounts:
        exposures_array = np.asarray(exposures, dtype=np.int64)
        clicked_array = np.asarray(clicked, dtype=np.int64)
        if exposures_array.shape != clicked_array.shape or exposures_array.ndim != 1:
            raise ValueError("exposures and clicked must be 1-D arrays of the same length")
        if np.any(clicked_array > exposures_array) or np.any(clicked_array < 0):
            raise ValueError("clicked must lie between 0 and exposures for every unit")
        return cls(exposures_array, clicked_array)

    @classmethod
    def per_request(cls, clicked: ArrayLike) -> UnitCounts:
        """Units that are single requests: one exposure each, clicked 0 or 1."""
        clicked_array = np.asarray(clicked, dtype=np.int64)
        return cls.of(np.ones_like(clicked_array), clicked_array)

    @property
    def units(self) -> int:
        return int(self.exposures.size)

    @property
    def total_exposures(self) -> int:
        return int(self.exposures.sum())

    @property
    def total_clicked(self) -> int:
        return int(self.clicked.sum())

    @property
    def ratio(self) -> float:
        """Clicked exposures / exposures; NaN when there are no exposures."""
        total = self.total_exposures
        return self.total_clicked / total if total else math.nan


def group_units(unit_ids: ArrayLike, clicked: ArrayLike) -> UnitCounts:
    """Collapse exposure rows (one unit id and one 0/1 clicked flag each) into per-unit counts.

    >>> counts = group_units(["u1", "u2", "u1"], [1, 0, 0])
    >>> counts.exposures.tolist(), counts.clicked.tolist()
    ([2, 1], [1, 0])
    """
    _, codes = np.unique(np.asarray(unit_ids), return_inverse=True)
    flags = np.asarray(clicked, dtype=np.int64)
    return UnitCounts.of(np.bincount(codes), np.bincount(codes, weights=flags).astype(np.int64))


def wilson(successes: float, trials: float, alpha: float = ALPHA) -> Estimate | None:
    """Share with a Wilson score interval (good near 0 and 1, unlike the Wald interval); None if no trials."""
    if trials <= 0:
        return None
    low, high = proportion_confint(successes, trials, alpha=alpha, method="wilson")
    return Estimate(successes / trials, float(low), float(high))


def ratio_variance(units: UnitCounts) -> float:
    """Delta-method variance of the ratio sum(clicked) / sum(exposures), clustered by unit.

    Linearise R = C/N around its value: each unit contributes (c_i - R n_i) / mean(n), and the variance of
    the mean of those contributions is the ratio's variance. NaN with fewer than two units.
    """
    if units.units < 2:
        return math.nan
    ratio = units.ratio
    residuals = units.clicked - ratio * units.exposures
    mean_exposures = units.exposures.mean()
    return float(np.sum(residuals**2) / (units.units - 1) / units.units / mean_exposures**2)


def ratio_interval(units: UnitCounts, alpha: float = ALPHA) -> Estimate | None:
    """CTR per exposure with a Wilson interval at the effective sample size of the clustered design.

    The effective number of exposures is R(1 - R) / Var(R): fewer than the exposures when a user's clicks
    go together. With one exposure per unit it is the plain Wilson interval.
    """
    if units.total_exposures == 0:
        return None
    ratio = units.ratio
    variance = ratio_variance(units)
    if not math.isfinite(variance) or variance <= 0:
        effective = float(units.total_exposures)
    else:
        effective = ratio * (1 - ratio) / variance
    low, high = proportion_confint(ratio * effective, effective, alpha=alpha, method="wilson")
    return Estimate(ratio, float(low), float(high))


def compare_ratios(control: UnitCounts, treatment: UnitCounts, alpha: float = ALPHA) -> Difference:
    """Treatment vs control on a per-unit ratio metric: z-test with delta-method (user-clustered) errors.

    The relative difference's interval is computed on the log of the ratio of ratios, so it stays positive.
    """
    control_ratio, treatment_ratio = control.ratio, treatment.ratio
    method = "delta method, standard errors clustered by user"
    variance = ratio_variance(control) + ratio_variance(treatment)
    if not math.isfinite(variance) or variance <= 0:
        return Difference(control_ratio, treatment_ratio, None, None, None, method)
    z_crit = float(scipy_stats.norm.ppf(1 - alpha / 2))
    diff = treatment_ratio - control_ratio
    se = math.sqrt(variance)
    p_value = float(2 * scipy_stats.norm.sf(abs(diff) / se))
    absolute = Estimate(diff, diff - z_crit * se, diff + z_crit * se)
    relative = None
    if control_ratio > 0 and treatment_ratio > 0:
        log_se = math.sqrt(ratio_variance(control) / control_ratio**2 + ratio_variance(treatment) / treatment_ratio**2)
        log_rr = math.log(treatment_ratio / control_ratio)
        relative = Estimate(
            math.expm1(log_rr), math.expm1(log_rr - z_crit * log_se), math.expm1(log_rr + z_crit * log_se)
        )
    return Difference(control_ratio, treatment_ratio, absolute, relative, p_value, method)


def compare_proportions(
    control_successes: int,
    control_trials: int,
    treatment_successes: int,
    treatment_trials: int,
    alpha: float = ALPHA,
) -> Difference:
    """Treatment vs control on a proportion over independent units.

    p-value: the two-proportion score (pooled z) test. Interval of the difference: Newcombe's hybrid score
    interval; of the ratio: the adjusted log interval. Both are closed forms (statsmodels' inverted score
    interval can fail to bracket its root), and they agree with the test except within a hair of p = alpha.
    """
    method = "two-proportion score test, Newcombe interval"
    control_share = control_successes / control_trials if control_trials else math.nan
    treatment_share = treatment_successes / treatment_trials if treatment_trials else math.nan
    successes = control_successes + treatment_successes
    trials = control_trials + treatment_trials
    if control_trials == 0 or treatment_trials == 0 or successes in (0, trials):
        return Difference(control_share, treatment_share, None, None, None, method)
    args = (treatment_successes, treatment_trials, control_successes, control_trials)
    result = test_proportions_2indep(*args, method="score", compare="diff")
    low, high = confint_proportions_2indep(*args, method="newcomb", compare="diff", alpha=alpha)
    diff = treatment_share - control_share
    relative = None
    if control_successes > 0 and treatment_successes > 0:
        ratio_low, ratio_high = confint_proportions_2indep(*args, method="log-adjusted", compare="ratio", alpha=alpha)
        relative = Estimate(treatment_share / control_share - 1, float(ratio_low) - 1, float(ratio_high) - 1)
    return Difference(
        control_share,
        treatment_share,
        Estimate(diff, float(low), float(high)),
        relative,
        float(result.pvalue),
        method,
    )


def compare_ctr(control: UnitCounts, treatment: UnitCounts, unit: Unit, alpha: float = ALPHA) -> Difference:
    """CTR per exposure, treatment vs control, analysed per unit of randomisation.

    ``user`` (hash): ratio metric with user-clustered errors. ``request`` (random): two-proportion test.
    This is the one function the report and the statistical tests both call.
    """
    if unit == "user":
        return compare_ratios(control, treatment, alpha)
    return compare_proportions(
        control.total_clicked, control.total_exposures, treatment.total_clicked, treatment.total_exposures, alpha
    )


def holm(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm-adjusted p-values (controls the family-wise error over all treatment-vs-control tests)."""
    if not p_values:
        return ()
    adjusted = multipletests(list(p_values), method="holm")[1]
    return tuple(float(p) for p in adjusted)


def sample_ratio(
    observed: Sequence[int], weights: Sequence[float], threshold: float = SRM_THRESHOLD
) -> SampleRatio | None:
    """Sample-ratio-mismatch check: chi-square of units per variant against the configured weights.

    Weights are normalised here. Units on a variant with zero weight are a mismatch by definition
    (p = 0). None when there are no units to test.

    >>> sample_ratio([4500, 5500], [50, 50]).mismatch
    True
    """
    counts = np.asarray(observed, dtype=np.float64)
    shares = np.asarray(weights, dtype=np.float64)
    if counts.shape != shares.shape or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError("one non-negative weight per variant is needed, not all zero")
    total = counts.sum()
    if total <= 0:
        return None
    expected = shares / shares.sum() * total
    observed_ints = tuple(int(c) for c in counts)
    expected_floats = tuple(float(e) for e in expected)
    if np.any((expected == 0) & (counts > 0)):
        return SampleRatio(observed_ints, expected_floats, math.inf, 0.0, True)
    tested = expected > 0
    if tested.sum() < 2:
        return SampleRatio(observed_ints, expected_floats, 0.0, 1.0, False)
    chi2, p_value = scipy_stats.chisquare(counts[tested], f_exp=expected[tested])
    return SampleRatio(observed_ints, expected_floats, float(chi2), float(p_value), bool(p_value < threshold))


def unit_sd(units: UnitCounts) -> float:
    """Standard deviation of one unit's contribution to the ratio (so that Var(ratio) = sd**2 / units)."""
    return math.sqrt(ratio_variance(units) * units.units)


def power(effect: float, sd: float, control_units: float, ratio: float = 1.0, alpha: float = ALPHA) -> float:
    """Power of the two-sided z-test to detect ``effect`` with ``control_units`` and ratio x as many treated."""
    return float(NormalIndPower().power(effect_size=abs(effect) / sd, nobs1=control_units, alpha=alpha, ratio=ratio))


def units_needed(
    effect: float, sd: float, ratio: float = 1.0, alpha: float = ALPHA, target_power: float = POWER
) -> float:
    """Control units needed for ``target_power`` to detect ``effect`` (treatment needs ``ratio`` times as many).

    >>> round(units_needed(effect=0.01, sd=0.2))
    6279
    """
    return float(
        NormalIndPower().solve_power(
            effect_size=abs(effect) / sd, nobs1=None, alpha=alpha, power=target_power, ratio=ratio
        )
    )


def percentiles(values: ArrayLike, qs: Sequence[float] = (50, 95, 99)) -> tuple[float, ...] | None:
    """Percentiles (linear interpolation); None for no values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return None
    return tuple(float(v) for v in np.percentile(array, qs))
