"""Assemble the Report of one phase from the outcome store.

Only ``assignment = 'strategy'`` exposures are analysed; override and fallback exposures (and their
feedback) are counted and shown, never analysed. Each treatment is compared with the control (the first
variant of the phase's configuration) on CTR per exposure, at the unit of randomisation; with several
treatments the CTR p-values are Holm-corrected. A sample-ratio mismatch withholds every verdict.

    report = build_report(Path("results/outcomes.sqlite3"))
    print(report.comparisons[0].verdict)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.report import stats
from router.report.document import (
    Exclusions,
    Latency,
    LatencyHistogram,
    OfflineMetrics,
    Report,
    TimelineSeries,
    TreatmentResult,
    VariantSummary,
)
from router.report.errors import StoreFormatError
from router.report.load import PhaseData, read_phase
from router.report.stats import Difference, Estimate, SampleRatio, Unit, UnitCounts

STRATEGY_UNITS: Mapping[str, Unit] = {"hash": "user", "random": "request"}
MIN_DETECTABLE_RELATIVE = 0.05
"""The sample-size figure targets the observed difference, but never less than 5 % of the control's CTR."""
TIMELINE_POINTS = 200
LATENCY_BINS = 40
OFFLINE_METRICS = ("precision_at_10", "recall_at_10", "hit_rate_at_10", "coverage", "rmse")


def build_report(db_path: Path, phase: int | None = None) -> Report:
    """The report of one phase (the latest by default); NoDataError when there is nothing to report."""
    return assemble(read_phase(db_path, phase))


def assemble(data: PhaseData) -> Report:
    """Turn one phase's rows into the Report (pure: no I/O)."""
    config = data.phase.config
    exposures = data.exposures
    strategy = _strategy(config, data.strategies)
    unit = STRATEGY_UNITS[strategy]
    notes: list[str] = []
    if any(logged != strategy for logged in data.strategies):
        notes.append(f"the phase is configured for {strategy} but exposures were logged with {list(data.strategies)}")

    weights = _configured_weights(config)
    analysed = exposures[exposures["assignment"] == "strategy"]
    groups = dict(iter(analysed.groupby("variant", observed=True)))
    for name in sorted(set(analysed["variant"]) - set(weights)):
        notes.append(f"variant {name} served strategy-assigned traffic but is not in the phase's config")
        weights[name] = 0.0
    names = list(weights)
    control = names[0]

    by_variant = {name: groups.get(name, analysed.iloc[:0]) for name in names}
    units = {name: _unit_counts(rows, unit) for name, rows in by_variant.items()}
    feedback = data.feedback[data.feedback["assignment"] == "strategy"]
    summaries = tuple(
        _summarise(name, weights[name], by_variant[name], units[name], feedback, data.variant_info.get(name))
        for name in names
    )
    for summary in summaries:
        if summary.exposures == 0:
            notes.append(f"variant {summary.name} has no analysed exposures in this phase")

    srm = stats.sample_ratio([units[name].units for name in names], [weights[name] for name in names])
    withheld = srm is not None and srm.mismatch
    if srm is not None and withheld:
        notes.insert(
            0,
            f"SAMPLE-RATIO MISMATCH: units per variant do not match the configured weights "
            f"(chi-square p = {srm.p_value:.2g}); every verdict is withheld until the assignment is fixed",
        )

    several = int((analysed.groupby("user")["variant"].nunique() > 1).sum())
    if several and strategy == "hash":
        notes.append(
            f"users served by more than one variant under hash assignment: {several}; this should not happen "
            "within a phase (their exposures count in each variant they saw)"
        )

    treatments = names[1:]
    comparisons = _compare(control, treatments, by_variant, units, weights, unit, srm)
    correction = (
        f"Holm over {len(treatments)} treatment-vs-control CTR tests"
        if len(treatments) > 1
        else "none needed (one treatment)"
    )
    excluded = exposures[exposures["assignment"] != "strategy"]
    exclusions = Exclusions(
        exposures_by_assignment={
            str(k): int(v) for k, v in excluded.groupby("assignment", observed=True).size().items()
        },
        exposures=len(excluded),
        feedback_events=int(data.feedback.loc[data.feedback["assignment"] != "strategy", "events"].sum()),
    )
    return Report(
        experiment=data.phase.experiment,
        phase=data.phase.phase,
        phases=data.phases,
        strategy=strategy,
        unit=unit,
        control=control,
        started_at=data.phase.started_at,
        first_exposure_at=float(exposures["ts"].min()),
        last_exposure_at=float(exposures["ts"].max()),
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
        timeline=tuple(_timeline(name, by_variant[name], data.phase.started_at) for name in names),
        latency_histogram=_latency_histogram(by_variant),
        notes=tuple(notes),
    )


def _strategy(config: Mapping[str, Any], logged: Sequence[str]) -> str:
    strategy = config.get("strategy")
    if strategy is None:
        if len(logged) != 1:
            raise StoreFormatError(f"the phase's config names no strategy and exposures show {list(logged)}")
        strategy = logged[0]
    if strategy not in STRATEGY_UNITS:
        raise StoreFormatError(f"unknown strategy {strategy!r} in the phase's config (expected hash or random)")
    return str(strategy)


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


def _unit_counts(rows: pd.DataFrame, unit: Unit) -> UnitCounts:
    if unit == "user":
        return stats.group_units(rows["user"].to_numpy(), rows["clicked"].to_numpy())
    return UnitCounts.per_request(rows["clicked"].to_numpy())


def _summarise(
    name: str,
    weight: float,
    rows: pd.DataFrame,
    units: UnitCounts,
    feedback: pd.DataFrame,
    info: Mapping[str, Any] | None,
) -> VariantSummary:
    exposures = len(rows)
    users = int(rows["user"].nunique())
    errors = int(rows["failed"].sum())
    events = feedback[feedback["variant"] == name].groupby("event")["events"].sum()
    converted = int(rows.loc[rows["clicked"] == 1, "user"].nunique())
    latency = stats.percentiles(rows["latency_ms"].to_numpy())
    return VariantSummary(
        name=name,
        weight=weight,
        units=units.units,
        exposures=exposures,
        users=users,
        requests_per_user=exposures / users if users else None,
        errors=errors,
        error_rate=stats.wilson(errors, exposures),
        latency_ms=Latency(*latency) if latency is not None else None,
        feedback_events=int(events.sum()),
        feedback_by_event={str(k): int(v) for k, v in events.items()},
        clicked_exposures=units.total_clicked,
        ctr=stats.ratio_interval(units),
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
    by_variant: Mapping[str, pd.DataFrame],
    units: Mapping[str, UnitCounts],
    weights: Mapping[str, float],
    unit: Unit,
    srm: SampleRatio | None,
) -> tuple[TreatmentResult, ...]:
    ctr = {name: stats.compare_ctr(units[control], units[name], unit) for name in treatments}
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
        effect, more = _more_units_needed(units[control], units[name], difference, allocation, power_alpha)
        result = TreatmentResult(
            treatment=name,
            control=control,
            ctr=difference,
            p_adjusted=p_adjusted,
            significant=significant,
            conversion=_conversion(by_variant[control], by_variant[name]) if unit == "user" else None,
            detectable_effect=effect,
            more_units_needed=more,
            verdict="",
        )
        verdict = verdict_for(result, unit, several_treatments=len(treatments) > 1, srm=srm if withheld else None)
        results.append(replace(result, verdict=verdict))
    return tuple(results)


def _conversion(control: pd.DataFrame, treatment: pd.DataFrame) -> Difference:
    """Share of users with at least one click, treatment vs control (users are independent under hash)."""

    def converted_and_users(rows: pd.DataFrame) -> tuple[int, int]:
        clicked_by_user = rows.groupby("user")["clicked"].max()
        return int(clicked_by_user.sum()), len(clicked_by_user)

    return stats.compare_proportions(*converted_and_users(control), *converted_and_users(treatment))


def _more_units_needed(
    control: UnitCounts, treatment: UnitCounts, difference: Difference, allocation: float, alpha: float
) -> tuple[float | None, int | None]:
    """The effect the sample size targets, and about how many more units per variant reach 80 % power.

    The target is the observed difference (floored at 5 % of the control's CTR, so a difference of ~0 does
    not ask for billions of users); the unit-level spread is pooled from both arms.
    """
    if difference.absolute is None or not difference.control > 0:
        return None, None
    sd = math.sqrt((stats.unit_sd(control) ** 2 + stats.unit_sd(treatment) ** 2) / 2)
    if not math.isfinite(sd) or sd <= 0:
        return None, None
    effect = max(abs(difference.absolute.value), MIN_DETECTABLE_RELATIVE * difference.control)
    control_needed = stats.units_needed(effect, sd, ratio=allocation, alpha=alpha)
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


def _timeline(name: str, rows: pd.DataFrame, started_at: float) -> TimelineSeries:
    """Cumulative CTR at (up to) TIMELINE_POINTS evenly spaced exposures, the last one included."""
    if rows.empty:
        return TimelineSeries(name, (), ())
    ordered = rows.sort_values(["ts", "id"])
    cumulative = np.cumsum(ordered["clicked"].to_numpy()) / np.arange(1, len(ordered) + 1)
    picks = np.unique(np.linspace(0, len(ordered) - 1, min(TIMELINE_POINTS, len(ordered))).round().astype(int))
    minutes = (ordered["ts"].to_numpy()[picks] - started_at) / 60.0
    return TimelineSeries(name, tuple(float(m) for m in minutes), tuple(float(c) for c in cumulative[picks]))


def _latency_histogram(by_variant: Mapping[str, pd.DataFrame]) -> LatencyHistogram | None:
    """Shared log-spaced bins from the fastest to the slowest analysed exposure."""
    latencies = {name: rows["latency_ms"].to_numpy(dtype=np.float64) for name, rows in by_variant.items()}
    every = np.concatenate(list(latencies.values()))
    if every.size == 0:
        return None
    low = max(float(every.min()), 1e-3)
    high = float(every.max())
    if high < 2 * low:  # (nearly) constant latencies: widen so the axis shows whole decades, not 5.01e0
        low, high = low / 1.5, max(high, low) * 1.5
    edges = np.geomspace(low, high, LATENCY_BINS + 1)
    counts = {
        name: tuple(int(c) for c in np.histogram(np.clip(values, low, high), bins=edges)[0])
        for name, values in latencies.items()
    }
    return LatencyHistogram(tuple(float(e) for e in edges), counts)
