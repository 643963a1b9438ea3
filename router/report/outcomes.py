"""Every metric the report tests, as a ratio metric per arm, built from the per-(user, variant) totals.

| metric | numerator per unit | denominator per unit | 0/1 per exposure |
|---|---|---|---|
| ctr | clicked exposures | exposures | yes |
| conversion | 1 if the user clicked at all | 1 | (per user) |
| error_rate | errors + fallbacks (the exposures the variant failed) | exposures | yes |
| latency_p99 | exposures slower than the threshold | exposures | yes |
| a feedback metric, ``per: event`` | sum of the event's values | the event's count | no |
| a feedback metric, ``per: exposure`` | sum of the event's values | exposures | no |

**Which unit is compared.** Under ``hash`` the user (the unit of randomisation). Under ``random`` the
request: for a 0/1 outcome the arm's counts are all the comparison needs (``ratio.binary_moments``); a
value metric has no per-request sums in the store's aggregates, so it is compared per user within each
variant - conservative, because a user's requests in the two variants are positively correlated and that
covariance is left out. Per-variant intervals are always clustered by user (``arm_data``).

    arms = split_arms(outcomes.totals, ["model_a", "model_b"])
    control = arm_data(arms["model_a"], CTR)       # RatioData: one entry per user
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from router.config import FeedbackMetric
from router.report.comparison import Analysis, Comparison, compare_moments
from router.report.ratio import RatioData, RatioMoments, Unavailable, binary_moments, invalid_values, moments
from router.report.stats import Unit
from router.store.reader import UnitTotals

Source = Literal["clicked", "converted", "failed", "slow", "values"]


@dataclass(frozen=True)
class Metric:
    """A ratio metric over the totals: what its numerator and denominator are, and how it is shown."""

    name: str
    label: str
    numerator: Source
    denominator: Literal["exposures", "events", "one"]
    event: str | None = None
    """The feedback event of a value metric."""

    @property
    def binary(self) -> bool:
        """Each exposure contributes 0 or 1 to a denominator of exposures: comparable per request from counts."""
        return self.numerator in ("clicked", "failed", "slow") and self.denominator == "exposures"

    @property
    def scale(self) -> Literal["share", "value"]:
        return "value" if self.numerator == "values" else "share"


CTR = Metric("ctr", "CTR per exposure", "clicked", "exposures")
CONVERSION = Metric("conversion", "conversion per user", "converted", "one")
ERROR_RATE = Metric("error_rate", "error rate (errors and fallbacks per exposure)", "failed", "exposures")
SLOW_SHARE = Metric("latency_p99", "share of requests slower than the threshold (p99 latency)", "slow", "exposures")


def feedback_metric(config: FeedbackMetric) -> Metric:
    """The ratio metric a configured feedback metric is: e.g. rating per rating event, watch per exposure."""
    if config.per == "event":
        return Metric(config.name, f"{config.name} (mean {config.event} value)", "values", "events", config.event)
    return Metric(
        config.name, f"{config.name} ({config.event} value per exposure)", "values", "exposures", config.event
    )


def split_arms(totals: UnitTotals, names: Sequence[str]) -> dict[str, UnitTotals]:
    """Each variant's pairs (one entry per user who was assigned to it), in the order of `names`."""
    return {name: _subset(totals, totals.of(name)) for name in names}


def _subset(totals: UnitTotals, mask: NDArray[np.bool_]) -> UnitTotals:
    return UnitTotals(
        variants=totals.variants,
        user=totals.user[mask],
        variant=totals.variant[mask],
        exposures=totals.exposures[mask],
        clicked=totals.clicked[mask],
        errors=totals.errors[mask],
        fallbacks=totals.fallbacks[mask],
        events={event: counts[mask] for event, counts in totals.events.items()},
        values={event: sums[mask] for event, sums in totals.values.items()},
        slow=None if totals.slow is None else totals.slow[mask],
    )


def arm_data(arm: UnitTotals, metric: Metric) -> RatioData | Unavailable:
    """One entry per (user, variant) pair: the metric's numerator and denominator, or why it has none."""
    size = arm.user.size
    zeros: NDArray[np.float64] = np.zeros(size, np.float64)
    numerator: NDArray[np.float64]
    if metric.numerator == "clicked":
        numerator = arm.clicked.astype(np.float64)
    elif metric.numerator == "converted":
        numerator = (arm.clicked > 0).astype(np.float64)
    elif metric.numerator == "failed":
        numerator = (arm.errors + arm.fallbacks).astype(np.float64)
    elif metric.numerator == "slow":
        if arm.slow is None:
            return Unavailable("no slow-request threshold yet (no control latencies)")
        numerator = arm.slow.astype(np.float64)
    else:
        assert metric.event is not None
        numerator = arm.values.get(metric.event, zeros).astype(np.float64)
    denominator: NDArray[np.float64]
    if metric.denominator == "exposures":
        denominator = arm.exposures.astype(np.float64)
    elif metric.denominator == "one":
        denominator = np.ones(size, np.float64)
    else:
        assert metric.event is not None
        denominator = arm.events.get(metric.event, np.zeros(size, np.int64)).astype(np.float64)
    return RatioData.of(numerator, denominator)


def request_moments(arm: UnitTotals, metric: Metric) -> RatioMoments | Unavailable:
    """The arm's 0/1 per-request outcome summarised from its counts (``random``: the request is the unit)."""
    data = arm_data(arm, metric)
    if isinstance(data, Unavailable):
        return data
    return binary_moments(float(data.numerator.sum()), float(data.denominator.sum()))


def compared_per(metric: Metric, unit: Unit) -> str:
    """What one unit of the metric's comparison is under the phase's unit of randomisation."""
    if metric.name == "conversion" or unit == "user":
        return "user"
    return "request" if metric.binary else "user within each variant"


def comparison_moments(arm: UnitTotals, metric: Metric, unit: Unit) -> RatioMoments | Unavailable:
    """The arm's summary at the unit the metric is compared per (``compared_per``)."""
    if compared_per(metric, unit) == "request":
        return request_moments(arm, metric)
    data = arm_data(arm, metric)
    if isinstance(data, Unavailable):
        return data
    problem = invalid_values(data)
    if problem is not None:
        return Unavailable(problem)
    return moments(data.numerator, data.denominator)


def compare_metric(
    control: UnitTotals,
    treatment: UnitTotals,
    metric: Metric,
    unit: Unit,
    analysis: Analysis,
    comparisons: int,
) -> Comparison | Unavailable:
    """Treatment vs control on `metric`, per the unit ``compared_per`` names."""
    arms = comparison_moments(control, metric, unit), comparison_moments(treatment, metric, unit)
    if isinstance(arms[0], Unavailable):
        return Unavailable(f"{arms[0].reason} (control)")
    if isinstance(arms[1], Unavailable):
        return Unavailable(f"{arms[1].reason} (treatment)")
    return compare_moments(arms[0], arms[1], analysis, comparisons)


def metric_catalogue(metrics: Sequence[FeedbackMetric]) -> Mapping[str, Metric]:
    """Every metric by name: the built-ins and the configured feedback metrics (for guardrails)."""
    catalogue = {m.name: m for m in (CTR, CONVERSION, ERROR_RATE, SLOW_SHARE)}
    catalogue.update({m.name: feedback_metric(m) for m in metrics})
    return catalogue
