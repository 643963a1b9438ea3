"""Assemble the Report of one phase from the outcome store.

Every randomised exposure counts for the variant it was assigned to (intention to treat, router.report.load);
QA overrides are counted and shown, never analysed. Each treatment is compared with the control (the first
variant of the phase's configuration) on CTR per exposure, at the unit of randomisation, under the phase's
recorded analysis plan: sequential (always valid) by default, fixed horizon only at a planned sample size.
Every metric is a ratio metric (router.report.outcomes); with several treatments every p-value and interval
is Bonferroni-adjusted. A sample-ratio mismatch withholds every verdict.

A phase that served merged lists (a fan-out strategy: interleave) is compared by interleaving instead: each
user's vote between the two teams (`interleaving_result`, at the end of this module); its traffic tables show
the merged lists as one row.

    report = build_report(store)                 # an OutcomeStore or a backend: anything with .snapshot()
    print(report.comparisons[0].verdict)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router.config import AnalysisConfig, recorded_stops
from router.errors import StoreFormatError
from router.report import stats
from router.report.adaptive import read_adaptive_section
from router.report.checks import analysis_of, check_guardrails
from router.report.comparison import Analysis, Comparison
from router.report.document import (
    AnalysisKind,
    AnalysisSummary,
    Exclusions,
    GuardrailCheck,
    InterleavingResult,
    Latency,
    LatencyHistogram,
    MetricComparison,
    MetricValue,
    OfflineMetrics,
    PlanProgress,
    Report,
    Stop,
    TimelineSeries,
    TreatmentResult,
    VariantSummary,
)
from router.report.interleaving import DegradedCounts, UserCredits, compare_interleaved
from router.report.load import QUANTILES, PhaseData, SnapshotSource, read_phase
from router.report.outcomes import (
    CONVERSION,
    CTR,
    ERROR_RATE,
    Metric,
    arm_data,
    compare_metric,
    compared_per,
    comparison_moments,
    feedback_metric,
    split_arms,
)
from router.report.planning import SamplePlan, plan_units, progress
from router.report.ratio import RatioMoments, Unavailable, estimate, point
from router.report.shadow_section import ListAffinity, read_shadow_section
from router.report.stats import Estimate, SampleRatio, Unit
from router.report.verdict import format_pp, verdict_for
from router.store.reader import Timeline, UnitTotals
from router.strategies import ADAPTIVE_STRATEGIES, fan_out_of

OFFLINE_METRICS = ("precision_at_10", "recall_at_10", "hit_rate_at_10", "coverage", "rmse")
TUNING_DRIFT = 2.0
"""A note says so when the sequential plan's total is more than this factor away from the configured tuning."""


def build_report(
    store: SnapshotSource, phase: int | None = None, *, truth: ListAffinity | None = None, truth_name: str | None = None
) -> Report:
    """The report of one phase (the latest by default); NoDataError when there is nothing to report.

    `truth` (simulation only) scores shadow and live lists by the ground truth (router.report.shadow_section).
    """
    with store.snapshot() as snapshot:
        data = read_phase(snapshot, phase)
        shadow = read_shadow_section(snapshot, data.phase, truth=truth, truth_description=truth_name)
        adaptive = read_adaptive_section(snapshot, data.phase)
    return replace(assemble(data), shadow=shadow, adaptive=adaptive)


def assemble(data: PhaseData) -> Report:
    """Turn one phase's aggregates into the Report (pure: no I/O)."""
    outcomes = data.outcomes
    config, plan, unit, strategy = outcomes.phase.config, outcomes.plan, outcomes.unit, outcomes.strategy
    notes: list[str] = []
    if any(logged != strategy for logged in data.strategies):
        notes.append(f"the phase is configured for {strategy} but exposures were logged with {list(data.strategies)}")
    weights = dict(outcomes.weights)
    interleaving = interleaving_result(data, strategy, list(weights))
    if interleaving is not None:  # every analysed exposure is a merged list: the tables show them as one row
        weights = {interleaving.label: 1.0}
    for name in sorted(set(outcomes.totals.variants) - set(weights)):
        notes.append(f"variant {name} was assigned traffic but is not in the phase's config")
        weights[name] = 0.0
    names = list(weights)
    control = names[0]
    arms = split_arms(outcomes.totals, names)
    metrics = tuple(feedback_metric(m) for m in plan.metrics)
    summaries = tuple(
        _summarise(
            name,
            weights[name],
            arms[name],
            unit,
            plan.analysis,
            metrics,
            data.latency_percentiles.get(name),
            data.variant_info.get(name),
        )
        for name in names
    )
    for summary in summaries:
        if summary.exposures == 0:
            notes.append(f"variant {summary.name} has no analysed exposures in this phase")

    srm = stats.sample_ratio([s.units for s in summaries], [weights[name] for name in names])
    if strategy in ADAPTIVE_STRATEGIES:  # weights changed per epoch: SRM is judged per epoch (router.report.adaptive)
        srm = None
    withheld = srm is not None and srm.mismatch
    if srm is not None and withheld:
        notes.insert(
            0,
            f"SAMPLE-RATIO MISMATCH: units per variant do not match the configured weights "
            f"(chi-square p = {srm.p_value:.2g}); every verdict is withheld until the assignment is fixed",
        )
    several = data.users_in_several_variants
    if several and unit == "user":
        notes.append(
            f"users assigned to more than one variant under {strategy} assignment: {several}; this should not "
            "happen within a phase (their exposures count in each variant they were assigned)"
        )
    if not plan.analysis.sequential and plan.analysis.minimum_detectable_effect is None:
        notes.append("the phase records a fixed-horizon analysis without a planned size: analysed sequentially")

    in_effect = {stop.variant: stop for stop in _stops(recorded_stops(config), control)}
    caused = {stop.variant: stop for stop in _stops(data.stops_caused, control)}
    guardrails = check_guardrails(outcomes, arms) if interleaving is None else {}  # interleaving: no A/B arms
    treatments = names[1:]
    comparisons = tuple(
        _treatment_result(
            name,
            control,
            arms,
            weights,
            unit,
            plan.analysis,
            metrics,
            len(treatments),
            srm if withheld else None,
            in_effect.get(name) or caused.get(name),
            stop_in_effect=name in in_effect,
            guardrails=guardrails.get(name, ()),
            notes=notes,
        )
        for name in treatments
    )
    excluded = {kind: n for kind, n in data.exposures_by_assignment.items() if kind not in ("strategy", "fallback")}
    exclusions = Exclusions(
        exposures_by_assignment=excluded,
        exposures=sum(excluded.values()),
        feedback_events=sum(n for kind, n in data.feedback_by_assignment.items() if kind in excluded),
    )
    correction = (
        f"Bonferroni over {len(treatments)} treatments: every p-value is multiplied by {len(treatments)} and "
        f"every interval is at level 1 - alpha/{len(treatments)}"
        if len(treatments) > 1
        else "none needed (one treatment)"
    )
    analysis = plan.analysis
    return Report(
        experiment=outcomes.phase.experiment,
        phase=outcomes.phase.phase,
        phases=data.phases,
        strategy=strategy,
        unit=unit,
        control=control if interleaving is None else interleaving.preference.control,
        started_at=outcomes.phase.started_at,
        first_exposure_at=data.first_exposure_at,
        last_exposure_at=data.last_exposure_at,
        generated_at=time.time(),
        analysis=AnalysisSummary(
            sequential=analysis.sequential or analysis.minimum_detectable_effect is None,
            alpha=analysis.alpha,
            tuning=analysis.tuning,
            min_units=analysis.min_units,
            minimum_detectable_effect=analysis.minimum_detectable_effect,
            relative=analysis.relative,
            power=analysis.power,
        ),
        correction=correction,
        srm=srm,
        verdict_withheld=withheld,
        users_in_several_variants=several,
        exclusions=exclusions,
        variants=summaries,
        comparisons=comparisons,
        stops=tuple({**caused, **in_effect}.values()),
        timeline=tuple(_timeline(name, data.timeline.get(name), outcomes.phase.started_at) for name in names),
        latency_histogram=_latency_histogram(data, names),
        notes=tuple(notes),
        interleaving=interleaving,
    )


# ---------------------------------------------------------------------------------------------- variants


def _summarise(
    name: str,
    weight: float,
    arm: UnitTotals,
    unit: Unit,
    analysis: AnalysisConfig,
    metrics: Sequence[Metric],
    latency: tuple[float, ...] | None,
    info: Mapping[str, Any] | None,
) -> VariantSummary:
    exposures = int(arm.exposures.sum())
    users = int(np.count_nonzero(np.bincount(arm.user))) if arm.user.size else 0  # dense codes: O(n)
    events = {event: int(counts.sum()) for event, counts in sorted(arm.events.items()) if counts.sum() > 0}

    def value(metric: Metric) -> MetricValue:
        return metric_value(arm, metric, analysis)

    return VariantSummary(
        name=name,
        weight=weight,
        units=users if unit == "user" else exposures,
        exposures=exposures,
        users=users,
        requests_per_user=exposures / users if users else None,
        errors=int(arm.errors.sum()),
        fallbacks=int(arm.fallbacks.sum()),
        error_rate=value(ERROR_RATE),
        latency_ms=Latency(*latency) if latency is not None and len(latency) == len(QUANTILES) else None,
        feedback_events=sum(events.values()),
        feedback_by_event=events,
        clicked_exposures=int(arm.clicked.sum()),
        ctr=value(CTR),
        converted_users=int(np.unique(arm.user[arm.clicked > 0]).size),
        conversion=value(CONVERSION),
        metrics=tuple(value(metric) for metric in metrics),
        offline=_offline(info),
    )


def metric_value(arm: UnitTotals, metric: Metric, analysis: AnalysisConfig) -> MetricValue:
    """One variant's value with its (1 - alpha) t interval, clustered by user (one entry per user)."""
    data = arm_data(arm, metric)
    if isinstance(data, Unavailable):
        return MetricValue(metric.name, metric.label, metric.scale, None, None, data.reason)
    shown = point(data)
    result = estimate(data, alpha=analysis.alpha, min_units=analysis.min_units)
    if isinstance(result, Unavailable):
        value = None if isinstance(shown, Unavailable) else shown
        return MetricValue(metric.name, metric.label, metric.scale, value, None, result.reason)
    interval = Estimate(result.value, result.low, result.high)
    return MetricValue(metric.name, metric.label, metric.scale, result.value, interval, None)


def _offline(info: Mapping[str, Any] | None) -> OfflineMetrics | None:
    if info is None:
        return None
    metrics = info.get("metrics")
    source = metrics if isinstance(metrics, dict) else info
    numbers = {
        key: float(value) if isinstance(value, int | float) and math.isfinite(value) else None
        for key, value in source.items()
        if key in OFFLINE_METRICS
    }
    algorithm, version = info.get("algorithm"), info.get("version")
    return OfflineMetrics(
        algorithm=str(algorithm) if algorithm is not None else None,
        version=str(version) if version is not None else None,
        metrics=numbers,
    )


# ---------------------------------------------------------------------------------------------- comparisons


def _treatment_result(
    name: str,
    control: str,
    arms: Mapping[str, UnitTotals],
    weights: Mapping[str, float],
    unit: Unit,
    config: AnalysisConfig,
    metrics: Sequence[Metric],
    m: int,
    srm: SampleRatio | None,
    stop: Stop | None,
    *,
    stop_in_effect: bool,
    guardrails: tuple[GuardrailCheck, ...],
    notes: list[str],
) -> TreatmentResult:
    planned = config.minimum_detectable_effect is not None
    primary_kind: AnalysisKind = "fixed" if not config.sequential and planned else "sequential"
    plans = _plans(arms[control], arms[name], weights[control], weights[name], unit, config, m, primary_kind, notes)
    by_kind = {plan.analysis: plan for plan in plans}

    def ctr_under(kind: AnalysisKind) -> MetricComparison:
        fixed_plan = by_kind.get("fixed")
        gate = None
        if kind == "fixed" and (fixed_plan is None or not fixed_plan.reached):
            gate = (
                "the fixed-horizon test is valid only at the planned size, not reached yet"
                if fixed_plan is not None and fixed_plan.reason is None
                else f"no planned size yet ({fixed_plan.reason if fixed_plan else 'none configured'})"
            )
        return _metric_comparison(
            arms[control], arms[name], CTR, unit, analysis_of(config, sequential=kind == "sequential"), m, gate
        )

    primary = ctr_under(primary_kind)
    other: MetricComparison | None = None
    if planned:
        other = ctr_under("sequential" if primary_kind == "fixed" else "fixed")
    sequential = analysis_of(config, sequential=True)
    secondary = [ERROR_RATE, *metrics]
    if unit == "user":
        secondary.insert(0, CONVERSION)
    result_metrics = tuple(
        _metric_comparison(arms[control], arms[name], metric, unit, sequential, m) for metric in secondary
    )
    verdict = verdict_for(
        primary,
        treatment=name,
        control=control,
        unit=unit,
        plans=plans,
        several_treatments=m > 1,
        srm=srm,
        stop=stop,
        stop_in_effect=stop_in_effect,
        guardrails=guardrails,
    )
    return TreatmentResult(
        treatment=name,
        control=control,
        analysis=primary_kind,
        ctr=primary,
        ctr_other=other,
        plans=plans,
        metrics=result_metrics,
        guardrails=guardrails,
        stopped=stop,
        significant=primary.significant and srm is None and not stop_in_effect,
        verdict=verdict,
    )


def _metric_comparison(
    control: UnitTotals,
    treatment: UnitTotals,
    metric: Metric,
    unit: Unit,
    analysis: Analysis,
    m: int,
    gate: str | None = None,
) -> MetricComparison:
    """The comparison as the report shows it; with `gate`, the values only (the test may not be read yet)."""
    kind: AnalysisKind = "sequential" if analysis.sequential else "fixed"
    per = compared_per(metric, unit)
    result = compare_metric(control, treatment, metric, unit, analysis, m)
    if isinstance(result, Comparison) and gate is None:
        return _from_core(result, metric, per)
    reason = gate if gate is not None or isinstance(result, Comparison) else result.reason
    shown = [_value(comparison_moments(arm, metric, unit)) for arm in (control, treatment)]
    return MetricComparison(
        metric.name, metric.label, metric.scale, kind, shown[0], shown[1], None, None, None, False, per, "", reason
    )


def _value(summary: RatioMoments | Unavailable) -> float | None:
    if isinstance(summary, Unavailable):
        return None
    value = float(summary.value)
    return value if math.isfinite(value) else None


def _from_core(result: Comparison, metric: Metric, per: str) -> MetricComparison:
    """The core's comparison; a difference of shares is clipped to [-1, 1] and its relative one to [-1, inf).

    Clipping drops only impossible values, so it never changes whether the interval excludes 0.
    """
    difference, relative = result.absolute, None if isinstance(result.relative, Unavailable) else result.relative
    if metric.scale == "share":
        difference = Estimate(difference.value, max(difference.low, -1.0), min(difference.high, 1.0))
        if relative is not None:
            relative = Estimate(relative.value, max(relative.low, -1.0), relative.high)
    return MetricComparison(
        metric=metric.name,
        label=metric.label,
        scale=metric.scale,
        analysis=result.analysis,
        control=result.control,
        treatment=result.treatment,
        difference=difference,
        relative=relative,
        p_value=result.p_value,
        significant=result.significant,
        compared_per=per,
        method=result.method,
        reason=None,
    )


def _plans(
    control: UnitTotals,
    treatment: UnitTotals,
    control_weight: float,
    treatment_weight: float,
    unit: Unit,
    config: AnalysisConfig,
    m: int,
    primary: AnalysisKind,
    notes: list[str],
) -> tuple[PlanProgress, ...]:
    """Progress toward the planned sizes (the primary analysis' first); empty without a configured effect.

    The plan uses the configured effect and power and the control's per-unit CTR variance measured so far in
    this phase (never the observed difference: that would be post-hoc power).
    """
    effect = config.minimum_detectable_effect
    if effect is None:
        return ()
    kinds: tuple[AnalysisKind, ...] = (primary, "fixed" if primary == "sequential" else "sequential")
    arms = comparison_moments(control, CTR, unit), comparison_moments(treatment, CTR, unit)

    def unplanned(kind: AnalysisKind, reason: str) -> PlanProgress:
        return PlanProgress(kind, None, None, None, config.power, None, False, reason)

    control_arm, treatment_arm = arms
    if isinstance(control_arm, Unavailable):
        return tuple(unplanned(kind, control_arm.reason) for kind in kinds)
    if isinstance(treatment_arm, Unavailable):
        return tuple(unplanned(kind, treatment_arm.reason) for kind in kinds)
    baseline, variance = float(control_arm.value), float(control_arm.variance) * float(control_arm.units)
    if not (math.isfinite(baseline) and math.isfinite(variance)):
        reason = "not enough control data yet to measure the spread between units"
        return tuple(unplanned(kind, reason) for kind in kinds)
    if not (control_weight > 0 and treatment_weight > 0):
        return tuple(unplanned(kind, "a variant of the comparison has no weight in this phase") for kind in kinds)
    result = []
    for kind in kinds:
        plan = plan_units(
            effect,
            unit_variance=variance,
            baseline=baseline,
            relative=config.relative,
            alpha=config.alpha,
            power=config.power,
            comparisons=m,
            allocation=treatment_weight / control_weight,
            sequential=kind == "sequential",
        )
        if isinstance(plan, Unavailable):
            result.append(unplanned(kind, plan.reason))
            continue
        if kind == "sequential":
            _note_tuning(plan, config, notes)
        reached = progress(plan, int(control_arm.units), int(treatment_arm.units))
        result.append(
            PlanProgress(
                kind,
                plan.control_units,
                plan.treatment_units,
                plan.effect,
                config.power,
                reached.fraction,
                reached.reached,
                None,
            )
        )
    return tuple(result)


def _note_tuning(plan: SamplePlan, config: AnalysisConfig, notes: list[str]) -> None:
    total = plan.total_units
    if max(total / config.tuning, config.tuning / total) > TUNING_DRIFT:
        note = (
            f"the sequential plan ({total:,} units in both arms) assumes analysis.tuning near that total; "
            f"it is {config.tuning:g}, so the sequence is tightest elsewhere and the plan is approximate"
        )
        if note not in notes:
            notes.append(note)


def _stops(records: Sequence[Mapping[str, Any]], control: str) -> list[Stop]:
    stops = []
    for record in records:
        at, phase = record.get("at"), record.get("phase")
        stops.append(
            Stop(
                variant=str(record["variant"]),
                guardrail=str(record.get("guardrail", "?")),
                at=float(at) if isinstance(at, int | float) and math.isfinite(at) else 0.0,
                phase=int(phase) if isinstance(phase, int) else 0,
                moved_to=str(record.get("moved_to", control)),
                detail=str(record.get("detail", "")),
            )
        )
    return stops


# ---------------------------------------------------------------------------------------------- plots' data


def _timeline(name: str, series: Timeline | None, started_at: float) -> TimelineSeries:
    """Cumulative CTR at the end of each time bucket in which the variant had exposures (none: no point)."""
    if series is None:
        return TimelineSeries(name, (), ())
    seen = np.diff(series.exposures, prepend=0) > 0
    minutes = (series.ends[seen] - started_at) / 60.0
    ctr = series.clicked[seen] / series.exposures[seen]
    width = float(np.min(np.diff(series.ends))) / 60.0 if len(series.ends) > 1 else 0.0
    return TimelineSeries(
        name,
        tuple(float(m) for m in minutes),
        tuple(float(c) for c in ctr),
        tuple(int(n) for n in series.exposures[seen]),
        width,
    )


def _latency_histogram(data: PhaseData, names: Sequence[str]) -> LatencyHistogram | None:
    """Shared log-spaced bins from the fastest to the slowest analysed exposure."""
    if data.latency_edges is None:
        return None
    empty: NDArray[np.int64] = np.zeros(len(data.latency_edges) - 1, np.int64)
    counts = {name: tuple(int(c) for c in data.latency_counts.get(name, empty)) for name in names}
    return LatencyHistogram(tuple(float(e) for e in data.latency_edges), counts)


# ---------------------------------------------------------------------------------------------- interleaving


def interleaving_result(data: PhaseData, strategy: str, variants: Sequence[str]) -> InterleavingResult | None:
    """The interleaving comparison of a phase that served merged lists; None for any other phase.

    The phase's recorded `fan_out` says it merged lists (else the strategy's registered one does); the teams
    are the configured variants, the first one the control. Degraded interleaves count per failing variant
    (availability, not preference); the preference is over each user's non-degraded exposures.
    """
    recorded = data.phase.config.get("fan_out")
    if isinstance(recorded, dict) and isinstance(recorded.get("label"), str):
        label, method = str(recorded["label"]), str(recorded.get("method", "merge"))
    else:
        fan_out = fan_out_of(strategy)
        if fan_out is None:
            return None
        label, method = fan_out.label, fan_out.method
    if len(variants) != 2:
        raise StoreFormatError(f"an interleaving phase compares 2 variants, its config has {list(variants)}")
    control, treatment = variants
    totals = data.interleaving
    credits = UserCredits.of(totals.of(control), totals.of(treatment))
    degraded = DegradedCounts(totals.exposures, tuple((name, totals.degraded.get(name, 0)) for name in variants))
    preference = compare_interleaved(control, treatment, credits, degraded)
    return InterleavingResult(label, method, totals.exposures, totals.failed, preference, preference.sequential_verdict)


__all__ = ["assemble", "build_report", "format_pp", "interleaving_result", "metric_value"]
