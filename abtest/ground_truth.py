"""What the simulation's ground truth says about the lists each variant served: which ones were truly better.

The simulator knows each user's true affinity and click propensity, so for every list served it knows the
probability of at least one click: its expected CTR, free of click noise. Averaged per variant (a ratio
over users, as the report's CTR is), the two variants still differ by which users each happened to get;
`truly_better` names a variant only when the gap exceeds that (99%, two-sided), so identical models are
called equal about 99 times in 100.

    >>> a = expected_ctr(np.array([2, 3, 1]), np.array([0.8, 1.2, 0.3]))
    >>> round(a.ctr, 4), a.users
    (0.3833, 3)

This needs no model: it judges the lists actually served. A judgement of each *model* on the same users
(each model's ground-truth CTR, computed from the models themselves) plugs in as a `ModelTruth`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

#: Two-sided 99% normal quantile: the ground truth "prefers" a variant only beyond this many standard errors.
Z_99 = 2.5758293035489004

#: The hook for a ground truth computed from the models themselves: variant -> its true CTR on the population.
ModelTruth = Callable[[], Mapping[str, float]]


@dataclass(frozen=True)
class ExpectedCtr:
    """Expected CTR of one variant's served lists, with its standard error over users (None below 2 users)."""

    ctr: float
    se: float | None
    users: int


def expected_ctr(exposures: ArrayLike, expected_clicked: ArrayLike) -> ExpectedCtr:
    """Ratio estimate over users: sum of P(at least one click) / exposures, delta-method standard error.

    `exposures[i]` and `expected_clicked[i]` are user i's exposures and the sum of their click probabilities.
    """
    x = np.asarray(exposures, dtype=np.float64)
    y = np.asarray(expected_clicked, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0 or x.sum() <= 0:
        raise ValueError("exposures and expected_clicked must be equally long, non-empty, with some exposures")
    ratio = float(y.sum() / x.sum())
    n = len(x)
    if n < 2:
        return ExpectedCtr(ratio, None, n)
    residual = y - ratio * x
    se = math.sqrt(float(np.sum(residual**2)) / (n * (n - 1))) / float(x.mean())
    return ExpectedCtr(ratio, se, n)


def truly_better(by_variant: Mapping[str, ExpectedCtr], z: float = Z_99) -> str | None:
    """The variant whose lists are worth more beyond the noise of who got which variant; None if none is."""
    ranked = sorted(by_variant, key=lambda name: by_variant[name].ctr, reverse=True)
    if len(ranked) < 2:
        return None
    best, runner_up = by_variant[ranked[0]], by_variant[ranked[1]]
    if best.se is None or runner_up.se is None:
        return None
    spread = math.hypot(best.se, runner_up.se)
    return ranked[0] if best.ctr - runner_up.ctr > z * spread else None
