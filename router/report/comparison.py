"""Treatment vs control on a ratio metric: difference, relative difference, interval and p-value that agree.

Two analyses (``Analysis.sequential``):

- **fixed horizon**: Welch's t on the two arms' delta-method variances, with Satterthwaite degrees of
  freedom combining each arm's (``ratio.moments``). Always t, never z: with many units t is z, with few it
  is the honest one. Valid once, at a sample size planned in advance (``planning``).
- **sequential**: the asymptotic confidence sequence (``sequential``): valid at every look.

Several treatments against one control: **Bonferroni** for both the p-value and the interval. Each
comparison is run at level alpha / m (m = the number of treatments configured, not the number with data,
so the rule does not move as data arrives); the p-value shown is min(1, m p) and the interval is the
(1 - alpha / m) interval (or sequence), so "significant" (adjusted p < alpha) and "the interval excludes 0"
are the same statement. Holm would reject a little more often, but its compatible intervals
(Strassburger and Bretz 2008) degenerate to a bound at 0 for every rejected hypothesis, which tells an
experimenter nothing about the size of the effect; with the two or three treatments an experiment here
has, Bonferroni costs little (m = 2: z 2.24 instead of Holm's 1.96 for the second test).

The relative difference's interval is Fieller's: the ratios theta = treatment / control with
|treatment - theta control| <= c * sqrt(var_t + theta^2 var_c) for the same multiplier c as the absolute
interval. So it excludes 0 exactly when the absolute one does; it is unbounded (Unavailable) when the
control itself is not distinguishable from 0.

    comparison = compare(control, treatment, Analysis(sequential=True))
    if isinstance(comparison, Unavailable): print(comparison.reason)
    else: print(comparison.difference, comparison.p_value, comparison.significant)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from router.report import sequential as always_valid
from router.report.ratio import (
    MIN_UNITS,
    RatioData,
    RatioMoments,
    Unavailable,
    invalid_values,
    moments,
    t_quantile,
    t_upper_tail,
)
from router.report.stats import Estimate

AnalysisKind = Literal["fixed", "sequential"]


@dataclass(frozen=True)
class Analysis:
    """How comparisons are analysed (the experiment config's ``analysis`` section).

    ``tuning``: total units (both arms) where the sequence is tightest (see ``sequential``).
    """

    sequential: bool = True
    alpha: float = 0.05
    tuning: float = always_valid.DEFAULT_TUNING
    min_units: int = MIN_UNITS

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie strictly between 0 and 1, not {self.alpha}")
        if not (math.isfinite(self.tuning) and self.tuning > 0):
            raise ValueError(f"the sequential tuning parameter must be a positive number of units, not {self.tuning}")
        if self.min_units < 2:
            raise ValueError(f"min_units must be at least 2, not {self.min_units}")

    @property
    def kind(self) -> AnalysisKind:
        return "sequential" if self.sequential else "fixed"


@dataclass(frozen=True)
class DifferenceBatch:
    """Vectorised treatment - control differences (one entry per leading index); NaN where undefined."""

    difference: NDArray[np.float64]
    standard_error: NDArray[np.float64]
    critical: NDArray[np.float64]
    """The interval's half-width in standard errors (t quantile, or the sequence's multiplier)."""
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    p_value: NDArray[np.float64]
    """Bonferroni-adjusted over ``comparisons``: min(1, m p)."""
    df: NDArray[np.float64]
    """Welch-Satterthwaite degrees of freedom (used by the fixed-horizon analysis only)."""

    @property
    def significant(self) -> NDArray[np.bool_]:
        """The interval excludes 0 (equivalently, adjusted p < alpha); False where undefined."""
        return np.asarray((self.low > 0) | (self.high < 0), dtype=np.bool_)


def difference_batch(
    control: RatioMoments, treatment: RatioMoments, analysis: Analysis, comparisons: int = 1
) -> DifferenceBatch:
    """The comparison kernel, vectorised for simulations; ``compare`` is the checked scalar front."""
    level = analysis.alpha / max(comparisons, 1)
    with np.errstate(all="ignore"):
        difference = treatment.value - control.value
        variance = control.variance + treatment.variance
        se = np.sqrt(variance)
        z = difference / se
        df = variance**2 / (control.variance**2 / control.df + treatment.variance**2 / treatment.df)
        if analysis.sequential:
            n = control.units + treatment.units
            critical = always_valid.halfwidth_multiplier(n, level, analysis.tuning)
            p = always_valid.p_value(z, n, level, analysis.tuning)
        else:
            critical = t_quantile(level / 2, df)
            p = 2.0 * t_upper_tail(np.abs(z), df)
        p_adjusted = np.minimum(1.0, p * max(comparisons, 1))
        low, high = difference - critical * se, difference + critical * se
    return DifferenceBatch(
        difference=np.asarray(difference, dtype=np.float64),
        standard_error=np.asarray(se, dtype=np.float64),
        critical=np.asarray(critical, dtype=np.float64),
        low=np.asarray(low, dtype=np.float64),
        high=np.asarray(high, dtype=np.float64),
        p_value=np.asarray(np.where(np.isfinite(z), p_adjusted, np.nan), dtype=np.float64),
        df=np.asarray(df, dtype=np.float64),
    )


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control on one ratio metric, adjusted for ``comparisons`` treatments.

    ``significant`` is "the interval excludes 0", which is "adjusted p < alpha" (they cannot disagree).
    """

    control: float
    treatment: float
    absolute: Estimate
    """treatment - control with its (adjusted) interval or sequence."""
    relative: Estimate | Unavailable
    """treatment / control - 1 with the Fieller interval at the same level."""
    p_value: float
    """Bonferroni-adjusted; always-valid under the sequential analysis."""
    significant: bool
    standard_error: float
    critical: float
    df: float | None
    """Welch-Satterthwaite degrees of freedom (fixed horizon); None under the sequential analysis."""
    control_units: int
    treatment_units: int
    analysis: AnalysisKind
    alpha: float
    comparisons: int
    method: str


def compare(
    control: RatioData, treatment: RatioData, analysis: Analysis | None = None, comparisons: int = 1
) -> Comparison | Unavailable:
    """Treatment vs control, or why no verdict can be given (too few units, no variation, no data)."""
    for name, data in (("control", control), ("treatment", treatment)):
        problem = invalid_values(data)
        if problem is not None:
            return Unavailable(f"{problem} ({name})")
    return compare_moments(
        moments(control.numerator, control.denominator),
        moments(treatment.numerator, treatment.denominator),
        analysis,
        comparisons,
    )


def compare_moments(
    control: RatioMoments, treatment: RatioMoments, analysis: Analysis | None = None, comparisons: int = 1
) -> Comparison | Unavailable:
    """``compare`` over each arm's summary (``ratio.moments``, or ``ratio.binary_moments`` from counts).

    The report compares per-request 0/1 outcomes under ``random`` this way, without an array per request.
    """
    analysis = analysis or Analysis()
    m = max(comparisons, 1)
    arms = control, treatment
    for name, arm in zip(("control", "treatment"), arms, strict=True):
        active = int(arm.active)
        if active < analysis.min_units:
            return Unavailable(
                f"not enough data: the {name} has {active} units with a denominator, "
                f"at least {analysis.min_units} per variant are needed for a verdict"
            )
    batch = difference_batch(*arms, analysis, m)
    se, critical = float(batch.standard_error), float(batch.critical)
    if float(arms[0].variance) + float(arms[1].variance) <= 0:
        return Unavailable("no variation between units in either variant (e.g. no clicks at all, or all clicked)")
    numbers = (float(batch.difference), se, critical, float(batch.low), float(batch.high), float(batch.p_value))
    if not all(math.isfinite(x) for x in numbers) or se <= 0:
        return Unavailable("the comparison cannot be computed from this data (numbers out of range)")
    control_value, treatment_value = float(arms[0].value), float(arms[1].value)
    difference, _, _, low, high, p = numbers
    relative = fieller(control_value, float(arms[0].variance), treatment_value, float(arms[1].variance), critical)
    if analysis.sequential:
        method = f"asymptotic confidence sequence (tuning {analysis.tuning:g} units), delta method by unit"
    else:
        method = "Welch t with Satterthwaite df, delta method by unit"
    if m > 1:
        method += f", Bonferroni over {m} treatments"
    return Comparison(
        control=control_value,
        treatment=treatment_value,
        absolute=Estimate(difference, low, high),
        relative=relative,
        p_value=p,
        significant=bool(low > 0 or high < 0),
        standard_error=se,
        critical=critical,
        df=None if analysis.sequential else float(batch.df),
        control_units=int(arms[0].units),
        treatment_units=int(arms[1].units),
        analysis=analysis.kind,
        alpha=analysis.alpha,
        comparisons=m,
        method=method,
    )


def compare_treatments(
    control: RatioData, treatments: Mapping[str, RatioData], analysis: Analysis | None = None
) -> dict[str, Comparison | Unavailable]:
    """Every treatment vs the control, Bonferroni-adjusted over all of them (see the module docstring)."""
    return {name: compare(control, data, analysis, comparisons=len(treatments)) for name, data in treatments.items()}


def fieller(
    control: float, control_variance: float, treatment: float, treatment_variance: float, critical: float
) -> Estimate | Unavailable:
    """treatment / control - 1 with Fieller's interval at ``critical`` standard errors (independent arms).

    >>> est = fieller(0.10, 0.01**2, 0.12, 0.01**2, 1.96)
    >>> round(est.value, 3), round(est.low, 3), round(est.high, 3)
    (0.2, -0.068, 0.564)
    """
    if not control > 0:
        return Unavailable("the control's value is not positive, so a relative difference is not defined")
    with np.errstate(all="ignore"):
        # numpy scalars: they overflow to inf (caught below) where Python floats would raise OverflowError.
        mu_c, mu_t, var_c, var_t = (np.float64(x) for x in (control, treatment, control_variance, treatment_variance))
        c2 = np.float64(critical) ** 2
        a = mu_c**2 - c2 * var_c
        if not a > 0:
            return Unavailable(
                "the control is not distinguishable from zero yet, so the relative interval is unbounded"
            )
        root = np.sqrt(np.maximum(c2 * (var_c * mu_t**2 + var_t * a), 0.0))
        low, high = float((mu_c * mu_t - root) / a - 1.0), float((mu_c * mu_t + root) / a - 1.0)
        value = float(mu_t / mu_c - 1.0)
    if not all(math.isfinite(x) for x in (value, low, high)):
        return Unavailable("the relative difference cannot be computed from this data (numbers out of range)")
    return Estimate(value, min(low, value), max(high, value))
