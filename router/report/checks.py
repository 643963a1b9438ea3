"""The configured guardrails of a phase, judged for each treatment: shared by the report and the router's watcher.

    outcomes = read_outcomes(snapshot, phase)
    for treatment, checks in check_guardrails(outcomes).items():
        harmful = [c for c in checks if c.state == "harmful"]

Always on the sequential analysis (``router.report.guardrails``): the router checks every few seconds, and
only an always-valid sequence may be looked at that often. Each guardrail is adjusted (Bonferroni) over the
configured treatments like every comparison, so a healthy treatment is stopped by mistake with probability
at most about alpha / 2 per guardrail over the whole phase, however often it is checked.
"""

from __future__ import annotations

from router.config import AnalysisConfig, Guardrail, recorded_stops
from router.report.comparison import Analysis
from router.report.document import GuardrailCheck, GuardrailState
from router.report.guardrails import Tolerance, judge
from router.report.load import PhaseOutcomes
from router.report.outcomes import SLOW_SHARE, compare_metric, metric_catalogue, split_arms
from router.report.ratio import Unavailable
from router.report.stats import Estimate
from router.report.verdict import format_pp, format_value
from router.store.reader import UnitTotals


def analysis_of(config: AnalysisConfig, *, sequential: bool | None = None) -> Analysis:
    """The core's Analysis for the plan (``sequential`` overrides the plan's choice)."""
    return Analysis(
        sequential=config.sequential if sequential is None else sequential,
        alpha=config.alpha,
        tuning=config.tuning,
        min_units=config.min_units,
    )


def check_guardrails(
    outcomes: PhaseOutcomes, arms: dict[str, UnitTotals] | None = None
) -> dict[str, tuple[GuardrailCheck, ...]]:
    """Every guardrail of every treatment that is not stopped in this phase (empty without guardrails)."""
    names = list(outcomes.weights)
    treatments = names[1:]
    if not outcomes.plan.guardrails or not treatments:
        return {}
    arms = arms if arms is not None else split_arms(outcomes.totals, names)
    stopped = {str(stop["variant"]) for stop in recorded_stops(outcomes.phase.config)}
    return {
        name: tuple(_check(outcomes, arms, name, g, len(treatments)) for g in outcomes.plan.guardrails)
        for name in treatments
        if name not in stopped
    }


def _check(
    outcomes: PhaseOutcomes, arms: dict[str, UnitTotals], treatment: str, guardrail: Guardrail, m: int
) -> GuardrailCheck:
    catalogue = metric_catalogue(outcomes.plan.metrics)
    metric = catalogue.get(guardrail.metric)
    tolerance = Tolerance(guardrail.tolerance.margin, guardrail.tolerance.relative)
    threshold = outcomes.slow_threshold_ms if guardrail.metric == SLOW_SHARE.name else None

    def result(
        state: GuardrailState,
        reason: str,
        control: float | None = None,
        treatment: float | None = None,
        worse_by: Estimate | None = None,
    ) -> GuardrailCheck:
        return GuardrailCheck(
            metric=guardrail.metric,
            label=metric.label if metric is not None else guardrail.metric,
            scale=metric.scale if metric is not None else "value",
            direction=guardrail.direction,
            margin=guardrail.tolerance.margin,
            relative=guardrail.tolerance.relative,
            action=guardrail.action,
            state=state,
            reason=reason,
            control=control,
            treatment=treatment,
            worse_by=worse_by,
            threshold_ms=threshold,
        )

    if metric is None:
        return result("inconclusive", f"{guardrail.metric!r} is not a metric of this phase")
    if metric is SLOW_SHARE and threshold is None:
        return result("inconclusive", outcomes.slow_threshold_reason)
    sequential = analysis_of(outcomes.plan.analysis, sequential=True)
    comparison = compare_metric(arms[outcomes.control], arms[treatment], metric, outcomes.unit, sequential, m)
    judged = judge(comparison, guardrail.direction, tolerance)
    if isinstance(comparison, Unavailable):
        return result(judged.state, judged.reason)
    return result(judged.state, judged.reason, comparison.control, comparison.treatment, judged.worse_by)


def describe(check: GuardrailCheck) -> str:
    """What decided a check, for logs and a stop's record: "worse by +30.1 pp [24.0, 36.2] (tolerance 2 pp)"."""
    if check.worse_by is None:
        return check.reason
    w = check.worse_by
    if check.relative:  # judged on treatment / control - 1
        worse = f"{w.value:+.1%} [{w.low:.1%}, {w.high:.1%}] relative"
    else:
        worse = format_pp(w) if check.scale == "share" else format_value(w)
    if check.relative:
        tolerance = f"{check.margin:.3g} relative"
    else:
        tolerance = f"{check.margin * 100:.3g} pp" if check.scale == "share" else f"{check.margin:.3g}"
    shown = "" if check.threshold_ms is None else f", requests slower than {check.threshold_ms:.1f} ms"
    return f"{check.metric} worse by {worse} (tolerance {tolerance}{shown})"
