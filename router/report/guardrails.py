"""Guardrails as a pure decision: is a treatment harming a metric that must not get worse?

A guardrail is a ratio metric (error rate, the slow-request share below, any feedback metric) with a
direction and a tolerance (non-inferiority margin, absolute or relative). It is judged on the *sequential*
comparison only: guardrails are checked continuously, and only an always-valid sequence may be.

On the harm scale (treatment - control, sign flipped when lower is worse; relative: treatment / control - 1),
with the sequence [low, high] and the margin:

- **harmful**: low > margin, the treatment is worse by more than the tolerance at every look's level;
- **healthy**: high < margin, the treatment is not worse than the tolerance (non-inferior);
- **inconclusive**: the margin lies inside the sequence (or there is no comparison yet).

So a healthy variant is stopped by mistake with probability at most about alpha / 2 over the whole
experiment, however often it is checked (tests/report/test_guardrails.py measures it).

**Latency** ("p99 latency must not get worse"): a percentile is not a sum over units, so it has no
delta-method variance and cannot be compared per unit honestly. Its per-unit stand-in is the share of a
unit's requests slower than a threshold, a ratio metric (slow requests / requests) where higher is worse.
The threshold is the configured ``threshold_ms``, or by default the control's observed p99 in the phase
(``latency_threshold``): the control's share is then 1 % by construction, and "the treatment's p99 is worse"
is "more than 1 % of the treatment's requests are slower than the control's p99". The threshold's own
estimation error is carried by the control arm's variance (the control's share varies with it).

    result = judge(compare(control, treatment, Analysis()), "higher_is_worse", Tolerance(0.5, relative=True))
    result.state   # "healthy" | "harmful" | "inconclusive"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from router.report.comparison import Comparison
from router.report.ratio import RatioData, Unavailable, per_unit
from router.report.stats import Estimate

Direction = Literal["higher_is_worse", "lower_is_worse"]
GuardrailState = Literal["healthy", "harmful", "inconclusive"]
LATENCY_QUANTILE = 0.99


@dataclass(frozen=True)
class Tolerance:
    """How much worse the treatment may be: ``margin`` on the metric's scale, or relative to the control."""

    margin: float = 0.0
    relative: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"a guardrail's tolerance must be a finite margin >= 0, not {self.margin}")


@dataclass(frozen=True)
class GuardrailResult:
    """The state, and the numbers that decided it (None when there is no comparison yet)."""

    state: GuardrailState
    reason: str
    worse_by: Estimate | None
    """How much worse the treatment is (positive = worse), with its always-valid sequence."""
    margin: float
    scale: Literal["absolute", "relative"]


def judge(comparison: Comparison | Unavailable, direction: Direction, tolerance: Tolerance) -> GuardrailResult:
    """Healthy, harmful or inconclusive, with the numbers (see the module docstring)."""
    scale: Literal["absolute", "relative"] = "relative" if tolerance.relative else "absolute"

    def inconclusive(reason: str) -> GuardrailResult:
        return GuardrailResult("inconclusive", reason, None, tolerance.margin, scale)

    if isinstance(comparison, Unavailable):
        return inconclusive(comparison.reason)
    if comparison.analysis != "sequential":
        return inconclusive("guardrails are judged on the sequential analysis only (they are checked continuously)")
    difference = comparison.relative if tolerance.relative else comparison.absolute
    if isinstance(difference, Unavailable):
        return inconclusive(difference.reason)
    low, high = worse_bounds(difference.low, difference.high, direction)
    worse = Estimate(difference.value if direction == "higher_is_worse" else -difference.value, float(low), float(high))
    code = int(classify(low, high, tolerance.margin))
    shown = f"{tolerance.margin:.3g}" + (" relative" if tolerance.relative else "")
    reason = {
        HARMFUL: f"worse by more than the tolerance ({shown}) at every look's level",
        HEALTHY: f"not worse than the tolerance ({shown})",
        INCONCLUSIVE: f"the tolerance ({shown}) lies inside the sequence",
    }[code]
    return GuardrailResult(STATES[code], reason, worse, tolerance.margin, scale)


HEALTHY, INCONCLUSIVE, HARMFUL = -1, 0, 1
STATES: dict[int, GuardrailState] = {HEALTHY: "healthy", INCONCLUSIVE: "inconclusive", HARMFUL: "harmful"}


def worse_bounds(
    low: ArrayLike, high: ArrayLike, direction: Direction
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The interval of (treatment - control) turned into "how much worse" (positive = worse); vectorised."""
    lows, highs = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return (lows, highs) if direction == "higher_is_worse" else (-highs, -lows)


def classify(worse_low: ArrayLike, worse_high: ArrayLike, margin: float) -> NDArray[np.int64]:
    """HARMFUL where worse_low > margin, HEALTHY where worse_high < margin, else INCONCLUSIVE; vectorised.

    ``judge`` decides with this, and so do the simulations that validate it (over many experiments at once).
    """
    lows, highs = np.asarray(worse_low, dtype=np.float64), np.asarray(worse_high, dtype=np.float64)
    return np.asarray(np.where(lows > margin, HARMFUL, np.where(highs < margin, HEALTHY, INCONCLUSIVE)), np.int64)


def latency_threshold(control_latencies_ms: ArrayLike, quantile: float = LATENCY_QUANTILE) -> float | Unavailable:
    """The control's observed latency percentile (default p99): the default slow-request threshold."""
    values = np.asarray(control_latencies_ms, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Unavailable("no control latencies to set the slow-request threshold from")
    if not 0 < quantile < 1:
        return Unavailable(f"the latency quantile must lie strictly between 0 and 1, not {quantile}")
    return float(np.quantile(values, quantile))


def slow_requests(unit_ids: ArrayLike, latencies_ms: ArrayLike, threshold_ms: float) -> RatioData:
    """Per unit: requests slower than ``threshold_ms`` (numerator) over requests (denominator).

    A request with no latency (NaN) counts as slow: a request that never answered is the slowest of all.
    """
    latencies = np.asarray(latencies_ms, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        slow = ~(latencies <= threshold_ms)
    return per_unit(unit_ids, slow.astype(np.float64), np.ones_like(latencies))
