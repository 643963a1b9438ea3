"""Ratio metrics per arm: a sum of per-unit numerators over a sum of per-unit denominators.

Every metric the report tests is one: CTR = clicked exposures / exposures, error rate = failed exposures /
exposures, rating mean = rating values / rating events, watch seconds per exposure = watch seconds /
exposures. One entry per unit of analysis (a user under ``hash``, a request under ``random``; for a
per-variant interval under ``random``, one entry per user *within the variant*, see ``per_unit``).

The variance is the delta method's, clustered by unit, with the CR2 small-sample correction: each unit's
squared residual ``(m_i - R d_i)^2`` is divided by ``1 - h_i``, its leverage ``h_i = d_i / sum(d)``. With equal
denominators that is the usual ``n / (n - 1)``; with a few heavy users it stops them from hiding their own
spread. The degrees of freedom are the Kish effective number of units, ``sum(d)^2 / sum(d^2)``, minus one
(n - 1 with equal denominators): the variance estimate leans on the heavy units, so it is as uncertain as
one from that many equal units. tests/report/test_comparison.py shows that this keeps alpha with 20-50
heavy-tailed users per arm, where n - 1 degrees of freedom or a z-test do not.

    >>> ctr = RatioData.of(numerator=[1, 0, 2, 1], denominator=[3, 1, 4, 2])
    >>> round(point(ctr), 3)
    0.4

Undefined results are ``Unavailable(reason)``, never NaN and never an exception; the vectorised
``moments`` (for simulations and for the functions here) marks undefined entries with NaN instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

MIN_UNITS = 20
"""Units (with a positive denominator) needed in each arm before an interval or a verdict is given.

The small-sample validation (20-50 heavy-tailed users per arm) starts here; below it a handful of users
decides everything and no variance estimate is worth a verdict.
"""


NO_DENOMINATOR = "no denominator yet (no exposures or events)"


@dataclass(frozen=True)
class Unavailable:
    """A number that is not defined for this data, and why (shown instead of the number)."""

    reason: str


@dataclass(frozen=True)
class RatioData:
    """One arm of a ratio metric: numerator and denominator per unit (float64, 1-D, same length).

    Raises ValueError only for a programming error (shapes); odd *values* (NaN, negative denominators)
    are accepted here and reported as Unavailable by the functions that use them.
    """

    numerator: NDArray[np.float64]
    denominator: NDArray[np.float64]

    @classmethod
    def of(cls, numerator: ArrayLike, denominator: ArrayLike) -> RatioData:
        numerators = np.asarray(numerator, dtype=np.float64)
        denominators = np.asarray(denominator, dtype=np.float64)
        if numerators.ndim != 1 or numerators.shape != denominators.shape:
            raise ValueError(
                f"numerator and denominator must be 1-D arrays of the same length, not {numerators.shape} "
                f"and {denominators.shape}"
            )
        return cls(numerators, denominators)

    @property
    def units(self) -> int:
        return int(self.numerator.size)


def per_unit(unit_ids: ArrayLike, numerator: ArrayLike, denominator: ArrayLike) -> RatioData:
    """Collapse rows (one unit id, numerator and denominator each) into one entry per unit.

    Under ``random`` pass one variant's exposure rows with the user as unit: the per-variant interval is then
    clustered by user, as one user's requests are correlated (the comparison itself stays per request).

    >>> data = per_unit(["u1", "u2", "u1"], numerator=[1, 0, 0], denominator=[1, 1, 1])
    >>> data.numerator.tolist(), data.denominator.tolist()
    ([1.0, 0.0], [2.0, 1.0])
    """
    ids = np.asarray(unit_ids)
    numerators = np.asarray(numerator, dtype=np.float64)
    denominators = np.asarray(denominator, dtype=np.float64)
    if ids.ndim != 1 or ids.shape != numerators.shape or ids.shape != denominators.shape:
        raise ValueError("unit_ids, numerator and denominator must be 1-D arrays of the same length")
    if ids.size == 0:
        return RatioData.of(np.zeros(0), np.zeros(0))
    _, codes = np.unique(ids, return_inverse=True)
    codes = codes.reshape(-1)
    return RatioData.of(np.bincount(codes, weights=numerators), np.bincount(codes, weights=denominators))


@dataclass(frozen=True)
class RatioMoments:
    """Vectorised summary of ratio metrics: one entry per leading index (e.g. per simulated experiment).

    NaN marks entries where a value is undefined (no denominator, fewer than two active units).
    """

    units: NDArray[np.int64]
    """Units in the arm (entries of the input's last axis), the randomised count."""
    active: NDArray[np.int64]
    """Units with a positive denominator (the ones the ratio is made of)."""
    value: NDArray[np.float64]
    variance: NDArray[np.float64]
    """Variance of ``value`` (CR2 delta method, clustered by unit)."""
    df: NDArray[np.float64]
    """Degrees of freedom of ``variance``: Kish effective units minus one."""


def moments(numerator: ArrayLike, denominator: ArrayLike) -> RatioMoments:
    """The ratio, its variance and degrees of freedom over the last axis of 1-D or 2-D arrays.

    >>> summary = moments([[1, 0, 2, 1]], [[3, 1, 4, 2]])
    >>> summary.value.round(3).tolist(), summary.df.round(2).tolist()
    ([0.4], [2.33])
    """
    m = np.asarray(numerator, dtype=np.float64)
    d = np.asarray(denominator, dtype=np.float64)
    with np.errstate(all="ignore"):
        total_m = m.sum(axis=-1)
        total_d = d.sum(axis=-1)
        active = np.count_nonzero(d > 0, axis=-1)
        defined = (total_d > 0) & np.isfinite(total_d) & np.isfinite(total_m)
        value = np.where(defined, total_m / np.where(defined, total_d, 1.0), np.nan)
        residuals = m - value[..., None] * d
        leverage = d / total_d[..., None]
        variance = np.sum(residuals**2 / (1.0 - leverage), axis=-1) / total_d**2  # h = 0 where d = 0
        df = total_d**2 / np.sum(d**2, axis=-1) - 1.0
    enough = defined & (active >= 2) & np.isfinite(variance) & np.isfinite(df)
    units = np.full(total_m.shape, m.shape[-1], dtype=np.int64)
    return RatioMoments(
        units=units,
        active=np.asarray(active, dtype=np.int64),
        value=np.asarray(value, dtype=np.float64),
        variance=np.asarray(np.where(enough, variance, np.nan), dtype=np.float64),
        df=np.asarray(np.where(enough, df, np.nan), dtype=np.float64),
    )


def binary_moments(successes: ArrayLike, trials: ArrayLike) -> RatioMoments:
    """``moments`` of per-request 0/1 outcomes (denominator 1 each) from their counts alone, vectorised.

    Under ``random`` the comparison unit is the request, but the store hands over per-user totals: for a 0/1
    outcome (clicked, failed, slow) the counts are all ``moments`` needs, so no array per request is built.
    With R = s / n: the CR2 sum is s (1 - R) / (1 - 1/n), so the variance is R (1 - R) / (n - 1) and the Kish
    degrees of freedom n - 1 (tests/report/test_ratio.py checks it against ``moments`` of the expanded data).

    >>> summary = binary_moments(3, 10)
    >>> float(summary.value), round(float(summary.variance), 5), float(summary.df)
    (0.3, 0.02333, 9.0)
    """
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(all="ignore"):
        defined = (n > 0) & np.isfinite(n) & np.isfinite(s) & (s >= 0) & (s <= n)
        value = np.where(defined, s / np.where(defined, n, 1.0), np.nan)
        variance = value * (1.0 - value) / (n - 1.0)
        df = n - 1.0
    enough = defined & (n >= 2)
    return RatioMoments(
        units=np.asarray(np.where(np.isfinite(n), n, 0), dtype=np.int64),
        active=np.asarray(np.where(np.isfinite(n), n, 0), dtype=np.int64),
        value=np.asarray(value, dtype=np.float64),
        variance=np.asarray(np.where(enough, variance, np.nan), dtype=np.float64),
        df=np.asarray(np.where(enough, df, np.nan), dtype=np.float64),
    )


@dataclass(frozen=True)
class ArmEstimate:
    """One arm's ratio with a t interval (clipped to the metric's possible range)."""

    value: float
    low: float
    high: float
    standard_error: float
    df: float
    units: int
    active_units: int

    @property
    def unit_variance(self) -> float:
        """Variance of one unit's contribution (Var(ratio) = unit_variance / units): what sample sizes need."""
        return self.standard_error**2 * self.units


def t_quantile(upper: ArrayLike, df: ArrayLike) -> NDArray[np.float64]:
    """Student's t quantile with ``upper`` probability above it (scipy.special: 20x faster than scipy.stats)."""
    return np.asarray(-special.stdtrit(df, upper), dtype=np.float64)


def t_upper_tail(t: ArrayLike, df: ArrayLike) -> NDArray[np.float64]:
    """P(T > t) for Student's t (scipy.special.stdtr)."""
    return np.asarray(special.stdtr(df, -np.asarray(t, dtype=np.float64)), dtype=np.float64)


def invalid_values(data: RatioData) -> str | None:
    """Why the data cannot be a ratio metric (non-finite values, negative denominators), or None."""
    if not (np.all(np.isfinite(data.numerator)) and np.all(np.isfinite(data.denominator))):
        return "the data holds non-finite values"
    if np.any(data.denominator < 0):
        return "the data holds negative denominators"
    return None


def point(data: RatioData) -> float | Unavailable:
    """The ratio sum(numerator) / sum(denominator) alone, defined as soon as any denominator is positive."""
    problem = invalid_values(data)
    if problem is not None:
        return Unavailable(problem)
    summary = moments(data.numerator, data.denominator)
    value = float(summary.value)
    if not math.isfinite(value):
        return Unavailable(NO_DENOMINATOR)
    return value


def estimate(data: RatioData, alpha: float = 0.05, min_units: int = MIN_UNITS) -> ArmEstimate | Unavailable:
    """The ratio with its (1 - alpha) interval, or why there is none.

    The interval is clipped to [0, inf) when every numerator and denominator is non-negative, and to
    [0, 1] when also no numerator exceeds its denominator (a share): clipping only drops impossible values.
    """
    problem = invalid_values(data)
    if problem is not None:
        return Unavailable(problem)
    summary = moments(data.numerator, data.denominator)
    value = float(summary.value)
    if not math.isfinite(value):
        return Unavailable(NO_DENOMINATOR)
    active = int(summary.active)
    if active < min_units:
        return Unavailable(f"not enough data: {active} units with a denominator, at least {min_units} are needed")
    variance, df = float(summary.variance), float(summary.df)
    if not (math.isfinite(variance) and math.isfinite(df)) or df <= 0:
        return Unavailable("the spread between units cannot be computed from this data")
    if variance <= 0:
        return Unavailable("no variation between units (e.g. no clicks at all, or every exposure clicked)")
    se = math.sqrt(variance)
    half = float(t_quantile(alpha / 2, df)) * se
    low, high = value - half, value + half
    if not (math.isfinite(low) and math.isfinite(high)):
        return Unavailable("the interval is not finite for this data")
    if np.all(data.numerator >= 0):
        low = max(low, 0.0)
        if np.all(data.numerator <= data.denominator):
            high = min(high, 1.0)
    return ArmEstimate(value, low, high, se, df, data.units, active)
