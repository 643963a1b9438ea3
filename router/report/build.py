"""Assemble the Report of one phase from the outcome store.

Only ``assignment = 'strategy'`` exposures are analysed; override and fallback exposures (and their
feedback) are counted and shown, never analysed. Each treatment is compared with the control (the first
variant of the phase's configuration) on CTR per exposure, at the unit of randomisation; with several
treatments the CTR p-values are Holm-corrected. A sample-ratio mismatch withholds every verdict.

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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router.errors import StoreFormatError
from router.report import stats
from router.report.document import (
    Exclusions,
    InterleavingResult,
    Latency,
    LatencyHistogram,
    OfflineMetrics,
    Report,
    TimelineSeries,
    TreatmentResult,
    VariantSummary,
)
from router.report.interleaving import DegradedCounts, UserCredits, compare_interleaved
from router.report.load import QUANTILES, PhaseData, SnapshotSource, read_phase
from router.report.stats import Difference, Estimate, SampleRatio, Unit, UnitCounts
from router.store.reader import Timeline, UnitTotals
from router.strategies import fan_out_of, unit_of

MIN_DETECTABLE_RELATIVE = 0.05
"""The sample-size figure targets the observed difference, but never less than 5 % of the control's CTR."""
OFFLINE_METRICS = ("precision_at_10", "recall_at_10", "hit_rate_at_10", "coverage", "rmse")


def build_report(store: SnapshotSource, phase: int | None = None) -> Report:
    """The report of one phase (the latest by default); NoDataError when there is nothing to report."""
    with store.snapshot() as snapshot:
        data = read_phase(snapshot, phase)
    return assemble(data)


@dataclass(frozen=True)
class _Arm:
    """One variant's analysed totals: its (user, variant) pairs, seen at the phase's unit of randomisation."""

    pairs: UnitTotals
    unit: Unit

    @property
    def exposures(self) -> int:
        return int(self.pairs.exposures.sum())

    @property
    def clicked(self) -> int:
        return int(self.pairs.clicked.sum())

    @property
    def users(self) -> int:
        return int(np.unique(self.pairs.user).size)

    @property
    def units(self) -> int:
        """Units of randomisation: users under a per-user strategy, requests under a per-request one."""
        return self.users if self.unit == "user" else self.exposures

    @property
    def per_user(self) -> UnitCounts:
        return UnitCounts.of(self.pairs.exposures, self.pairs.clicked)

    def ctr(self) -> Estimate | None:
        """CTR with its interval: clustered by user under `hash`, Wilson per request under `random`."""
        if self.unit == "user":
            return stats.ratio_interval(self.per_user)
        return stats.wilson(self.clicked, self.exposures)

    def unit_sd(self) -> float:
        """Standard deviation of one unit's contribution to the CTR (Var(CTR) = sd**2 / units)."""
        if self.unit == "user":
            return stats.unit_sd(self.per_user)
        n = self.exposures
        if n < 2:
            return math.nan
        share = self.clicked / n
        return math.sqrt(share * (1 - share) * n / (n - 1))


def assemble(data: PhaseData) -> Report:
    """Turn one phase's aggregates into the Report (pure: no I/O)."""
    config = data.phase.config
    strategy = _strategy(config, data.strategies)
    unit = _unit(config, strategy)
    notes: list[str] = []
    if any(logged != strategy for logged in data.strategies):
        notes.append(f"the phase is configured for {strategy} but exposures were logged with {list(data.strategies)}")

    weights = _configured_weights(config)
    interleaving = interleaving_result(data, strategy, list(weights))
    if interleaving is not None:  # every analysed exposure is a merged list: the tables show them as one row
        weights = {interleaving.label: 1.0}
    totals = data.totals
    for name in sorted(set(totals.variants) - set(weights)):
        notes.append(f"variant {name} served strategy-assigned traffic but is not in the phase's config")
        weights[name] = 0.0
    names = list(weights)
    control = names[0] if interleaving is None else interleaving.preference.control

    arms = {name: _arm(totals, name, unit) for name in names}
    summaries = tuple(
        _summarise(name, weights[name], arms[name], data.latency_percentiles.get(name), data.variant_info.get(name))
        for name in names
    )
    for summary in summaries:
        if summary.exposures == 0:
            notes.append(f"variant {summary.name} has no analysed exposures in this phase")

    srm = stats.sample_ratio([arms[name].units for name in names], [weights[name] for name in names])
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
            f"users served by more than one variant under {strategy} assignment: {several}; this should not "
            "happen within a phase (their exposures count in each variant they saw)"
        )

    treatments = names[1:]
    comparisons = _compare(control, treatments, arms, weights, unit, srm)
    correction = (
        f"Holm over {len(treatments)} treatment-vs-control CTR tests"
        if len(treatments) > 1
        else "none needed (one treatment)"
    )
    excluded = {kind: n for kind, n in data.exposures_by_assignment.items() if kind not in ("strategy",)}
    exclusions = Exclusions(
        exposures_by_assignment=excluded,
        exposures=sum(excluded.values()),
        feedback_events=sum(n for kind, n in data.feedback_by_assignment.items() if kind != "strategy"),
    )
    return Report(
        experiment=data.phase.experiment,
        phase=data.phase.phase,
        phases=data.phases,
        strategy=strategy,
        unit=unit,
        control=control,
        started_at=data.phase.started_at,
        first_exposure_at=data.first_exposure_at,
        last_exposure_at=data.last_exposure_at,
        generated_at=time.time(),
        alpha=stats.ALPHA,
        target_power=stats.POWER,
        correction=correction,
        srm=srm,
        verdict_withheld=withheld,
        users_in_several_variants=several,
        exclusions=exclusions,
        variants=summaries,
        comparisons=comparisons,
        timeline=tuple(_timeline(name, data.timeline.get(name), data.phase.started_at) for name in names),
        latency_histogram=_latency_histogram(data, names),
        notes=tuple(notes),
        interleaving=interleaving,
    )


def _arm(totals: UnitTotals, name: str, unit: Unit) -> _Arm:
    mask = totals.of(name)
    pairs = UnitTotals(
        variants=(name,),
        user=totals.user[mask],
        variant=np.zeros(int(mask.sum()), np.int64),
        exposures=totals.exposures[mask],
        clicked=totals.clicked[mask],
        errors=totals.errors[mask],
        events={event: counts[mask] for event, counts in totals.events.items()},
        values={event: sums[mask] for event, sums in totals.values.items()},
    )
    return _Arm(pairs, unit)


def _strategy(config: Mapping[str, Any], logged: Sequence[str]) -> str:
    strategy = config.get("strategy")
    if strategy is None:
        if len(logged) != 1:
            raise StoreFormatError(f"the phase's config names no strategy and exposures show {list(logged)}")
        strategy = logged[0]
    return str(strategy)


def _unit(config: Mapping[str, Any], strategy: str) -> Unit:
    """The phase's unit of randomisation: recorded in its config (`unit`), else the strategy's registered one."""
    recorded = config.get("unit")
    unit = recorded if recorded in ("user", "request") else unit_of(strategy)
    if unit is None:
        raise StoreFormatError(
            f"the phase's config records no unit of randomisation and {strategy!r} is not a known strategy"
        )
    return unit


def _configured_weights(config: Mapping[str, Any]) -> dict[str, float]:
    """Variant name -> normalised weight, in config order (the first is the control).

    Accepts ``variants`` as a list of ``{"name", "weight"}`` objects (the YAML's shape) or a name -> weight
    mapping. Anything else is refused: guessing the control would silently change every comparison.
    """
    variants = config.get("variants")
    pairs: list[tuple[Any, Any]]
    if isinstance(variants, list):
        try:
            pairs = [(v["name"], v.get("weight", 1)) for v in variants]
        except (TypeError, KeyError) as exc:
            raise StoreFormatError(f"config variants must have a name and a weight: {variants!r}") from exc
    elif isinstance(variants, dict):
        pairs = [(k, v.get("weight") if isinstance(v, dict) else v) for k, v in variants.items()]
    else:
        raise StoreFormatError(f"the phase's config has no variants list: {dict(config)!r}")
    try:
        weights = {str(name): float(weight) for name, weight in pairs}
    except (TypeError, ValueError) as exc:
        raise StoreFormatError(f"config weights must be numbers: {pairs!r}") from exc
    total = sum(weights.values())
    if not weights or total <= 0 or any(w < 0 for w in weights.values()) or len(weights) != len(pairs):
        raise StoreFormatError(f"config variants need unique names and non-negative weights: {pairs!r}")
    return {name: weight / total for name, weight in weights.items()}


def _summarise(
    name: str,
    weight: float,
    arm: _Arm,
    latency: tuple[float, ...] | None,
    info: Mapping[str, Any] | None,
) -> VariantSummary:
    pairs = arm.pairs
    exposures, users = arm.exposures, arm.users
    errors = int(pairs.errors.sum())
    events = {event: int(counts.sum()) for event, counts in sorted(pairs.events.items()) if counts.sum() > 0}
    converted = int(np.unique(pairs.user[pairs.clicked > 0]).size)
    return VariantSummary(
        name=name,
        weight=weight,
        units=arm.units,
        exposures=exposures,
        users=users,
        requests_per_user=exposures / users if users else None,
        errors=errors,
        error_rate=stats.wilson(errors, exposures),
        latency_ms=Latency(*latency) if latency is not None and len(latency) == len(QUANTILES) else None,
        feedback_events=sum(events.values()),
        feedback_by_event=events,
        clicked_exposures=arm.clicked,
        ctr=arm.ctr(),
        converted_users=converted,
        conversion=stats.wilson(converted, users),
        offline=_offline(info),
    )


def _offline(info: Mapping[str, Any] | None) -> OfflineMetrics | None:
    if info is None:
        return None
    metrics = info.get("metrics")
    source = metrics if isinstance(metrics, dict) else info
    numbers = {
        key: float(value) if isinstance(value, int | float) else None
        for key, value in source.items()
        if key in OFFLINE_METRICS
    }
    algorithm, version = info.get("algorithm"), info.get("version")
    return OfflineMetrics(
        algorithm=str(algorithm) if algorithm is not None else None,
        version=str(version) if version is not None else None,
        metrics=numbers,
    )


def _compare(
    control: str,
    treatments: Sequence[str],
    arms: Mapping[str, _Arm],
    weights: Mapping[str, float],
    unit: Unit,
    srm: SampleRatio | None,
) -> tuple[TreatmentResult, ...]:
    ctr = {name: _compare_ctr(arms[control], arms[name]) for name in treatments}
    tested = [name for name in treatments if ctr[name].p_value is not None]
    p_values = [p for name in tested if (p := ctr[name].p_value) is not None]
    adjusted = dict(zip(tested, stats.holm(p_values), strict=True))
    # Sample size at alpha / m (Bonferroni): a slightly conservative stand-in for Holm's first step.
    power_alpha = stats.ALPHA / max(len(tested), 1)
    withheld = srm is not None and srm.mismatch
    results = []
    for name in treatments:
        difference = ctr[name]
        p_adjusted = adjusted.get(name)
        significant = p_adjusted is not None and p_adjusted < stats.ALPHA
        allocation = weights[name] / weights[control] if weights[control] > 0 and weights[name] > 0 else 1.0
        effect, more = _more_units_needed(arms[control], arms[name], difference, allocation, power_alpha)
        result = TreatmentResult(
            treatment=name,
            control=control,
            ctr=difference,
            p_adjusted=p_adjusted,
            significant=significant,
            conversion=_conversion(arms[control], arms[name]) if unit == "user" else None,
            detectable_effect=effect,
            more_units_needed=more,
            verdict="",
        )
        verdict = verdict_for(result, unit, several_treatments=len(treatments) > 1, srm=srm if withheld else None)
        results.append(replace(result, verdict=verdict))
    return tuple(results)


def _compare_ctr(control: _Arm, treatment: _Arm) -> Difference:
    """CTR, treatment vs control, at the unit of randomisation (see stats.compare_ctr)."""
    if control.unit == "user":
        return stats.compare_ratios(control.per_user, treatment.per_user)
    return stats.compare_proportions(control.clicked, control.exposures, treatment.clicked, treatment.exposures)


def _conversion(control: _Arm, treatment: _Arm) -> Difference:
    """Share of users with at least one click, treatment vs control (users are independent under hash)."""

    def converted_and_users(arm: _Arm) -> tuple[int, int]:
        return int(np.unique(arm.pairs.user[arm.pairs.clicked > 0]).size), arm.users

    return stats.compare_proportions(*converted_and_users(control), *converted_and_users(treatment))


def _more_units_needed(
    control: _Arm, treatment: _Arm, difference: Difference, allocation: float, alpha: float
) -> tuple[float | None, int | None]:
    """The effect the sample size targets, and about how many more units per variant reach 80 % power.

    The target is the observed difference (floored at 5 % of the control's CTR, so a difference of ~0 does
    not ask for billions of users); the unit-level spread is pooled from both arms.
    """
    if difference.absolute is None or not difference.control > 0:
        return None, None
    sd = math.sqrt((control.unit_sd() ** 2 + treatment.unit_sd() ** 2) / 2)
    if not math.isfinite(sd) or sd <= 0:
        return None, None
    effect = max(abs(difference.absolute.value), MIN_DETECTABLE_RELATIVE * difference.control)
    control_needed = stats.units_needed(effect, sd, ratio=allocation, alpha=alpha)
    if not math.isfinite(control_needed):
        return None, None
    more = max(math.ceil(control_needed) - control.units, math.ceil(control_needed * allocation) - treatment.units, 0)
    return effect, int(more)


def verdict_for(result: TreatmentResult, unit: Unit, *, several_treatments: bool, srm: SampleRatio | None) -> str:
    """One line an experimenter can act on.

    "model_b beats model_a on CTR by +2.1 pp [0.8, 3.4], p = 0.002", or "no significant difference yet ...;
    about N more users per variant needed for 80% power ...", or why there is no verdict.
    """
    treatment, control, difference = result.treatment, result.control, result.ctr
    if srm is not None:
        return (
            f"verdict withheld: sample-ratio mismatch (p = {srm.p_value:.2g}); the split of {unit}s does not "
            "match the configured weights, so the comparison cannot be trusted"
        )
    if difference.absolute is None or result.p_adjusted is None:
        return f"not enough data yet to compare {treatment} with {control} on CTR"
    p_label = "p (Holm)" if several_treatments else "p"
    p_text = format_p(result.p_adjusted, p_label)
    effect_text = format_pp(difference.absolute)
    if result.significant:
        direction = "beats" if difference.absolute.value > 0 else "is worse than"
        relative = f" ({difference.relative.value:+.0%} relative)" if difference.relative else ""
        return f"{treatment} {direction} {control} on CTR by {effect_text}{relative}, {p_text}"
    verdict = f"no significant difference yet between {treatment} and {control} on CTR ({effect_text}, {p_text})"
    if result.more_units_needed is None or result.detectable_effect is None:
        return verdict
    target = f"{result.detectable_effect * 100:.2g} pp"
    if result.more_units_needed == 0:
        return (
            f"{verdict}; the phase already has 80% power to detect a {target} difference, "
            "so a true difference is probably smaller than that"
        )
    return (
        f"{verdict}; about {result.more_units_needed:,} more {unit}s per variant needed "
        f"for 80% power to detect a {target} difference"
    )


def format_pp(estimate: Estimate) -> str:
    """An absolute difference of shares in percentage points: "+2.1 pp [0.8, 3.4]"."""
    scale = max(abs(estimate.low), abs(estimate.high), abs(estimate.value)) * 100
    digits = 1 if scale >= 1 else 2
    return f"{estimate.value * 100:+.{digits}f} pp [{estimate.low * 100:.{digits}f}, {estimate.high * 100:.{digits}f}]"


def format_p(p_value: float, label: str = "p") -> str:
    return f"{label} < 0.001" if p_value < 0.001 else f"{label} = {p_value:.3f}"


def _timeline(name: str, series: Timeline | None, started_at: float) -> TimelineSeries:
    """Cumulative CTR at the end of each time bucket that has seen an exposure of the variant."""
    if series is None:
        return TimelineSeries(name, (), ())
    seen = series.exposures > 0
    minutes = (series.ends[seen] - started_at) / 60.0
    ctr = series.clicked[seen] / series.exposures[seen]
    return TimelineSeries(name, tuple(float(m) for m in minutes), tuple(float(c) for c in ctr))


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
