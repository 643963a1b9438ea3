"""Always-valid inference: asymptotic confidence sequences for a difference, safe to look at any time.

Waudby-Smith, Arnold, Wu, Howard and Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences" (Annals of Statistics, 2024; arXiv:2103.06476), eq. 9 (the sequence) and the mixture e-value
behind it, in the form GrowthBook's gbstats uses (``SequentialTwoSidedTTest``, gbstats 0.8.0): with ``n``
units in both arms and the estimate's standard error ``se``,

    half-width = se * sqrt(2 (n rho^2 + 1) / (n rho^2) * log(sqrt(n rho^2 + 1) / alpha))
    rho^2      = (-2 log alpha + log(-2 log alpha + 1)) / tuning

The sequence covers the true difference at *every* n at once with probability about 1 - alpha, so a live
report may be refreshed, and an experiment stopped, at any moment. The price: it is wider than the
fixed-horizon interval everywhere (about 3.0 standard errors at its tightest instead of 1.96 at alpha 0.05).

The tuning parameter is the total number of units (both arms) at which the sequence is tightest (the
minimum sits a few per cent later, but the width at ``tuning`` is within 0.01 % of it). Ours
defaults to gbstats' 5000 (so the values agree with GrowthBook's out of the box, and it sits where this
project's experiments of a few thousand users end); when a planned sample size exists, pass the planned
total (``planning.SamplePlan.total_units``), where the decision is expected.

The always-valid p-value is the smallest level whose sequence (with ``rho`` fixed by the configured alpha)
excludes 0, i.e. 1 / the mixture e-value: p < alpha exactly when the sequence at alpha excludes 0.

    >>> round(float(halfwidth_multiplier(5000, alpha=0.05, tuning=5000)), 3)
    3.035
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

DEFAULT_TUNING = 5000.0


def rho_squared(alpha: float, tuning: float) -> float:
    """The mixture's variance parameter, chosen so the sequence is tightest at ``tuning`` units (eq. 161)."""
    log_alpha = float(np.log(alpha))
    return float((-2.0 * log_alpha + np.log(-2.0 * log_alpha + 1.0)) / tuning)


def halfwidth_multiplier(n: ArrayLike, alpha: float, tuning: float = DEFAULT_TUNING) -> NDArray[np.float64]:
    """The sequence's half-width in standard errors at ``n`` total units (vectorised over ``n``).

    Decreases from +inf at n = 0 to its minimum at n = tuning, then grows like sqrt(log n).
    """
    units = np.asarray(n, dtype=np.float64)
    r2 = rho_squared(alpha, tuning)
    with np.errstate(all="ignore"):
        spread = units * r2 + 1.0
        squared = 2.0 * spread / (units * r2) * (0.5 * np.log(spread) - np.log(alpha))
    return np.asarray(np.sqrt(squared), dtype=np.float64)


def tightest_multiplier(alpha: float) -> float:
    """The half-width in standard errors at n = tuning, where the sequence is tightest: 3.035 at alpha 0.05.

    The same for every tuning value, so a plan for the sequential analysis tuned to its own planned size
    has a closed form (``planning.plan_units(..., sequential=True)``).
    """
    return float(halfwidth_multiplier(1.0, alpha, tuning=1.0))


def log_e_value(z: ArrayLike, n: ArrayLike, alpha: float, tuning: float = DEFAULT_TUNING) -> NDArray[np.float64]:
    """Log of the normal-mixture e-value for a standardised difference ``z`` at ``n`` total units (eq. 155)."""
    units = np.asarray(n, dtype=np.float64)
    statistic = np.asarray(z, dtype=np.float64)
    r2 = rho_squared(alpha, tuning)
    with np.errstate(over="ignore"):  # a huge z overflows to an infinite e-value: p = 0, as it should be
        spread = units * r2 + 1.0
        return np.asarray(r2 * units * statistic**2 / (2.0 * spread) - 0.5 * np.log(spread), dtype=np.float64)


def p_value(z: ArrayLike, n: ArrayLike, alpha: float, tuning: float = DEFAULT_TUNING) -> NDArray[np.float64]:
    """Always-valid p-value min(1, 1 / e-value); computed in logs, so it never overflows."""
    return np.asarray(np.exp(np.minimum(0.0, -log_e_value(z, n, alpha, tuning))), dtype=np.float64)
