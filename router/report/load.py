"""Read one phase from a store snapshot: everything the report needs, in aggregates, in one consistent read.

    with store.snapshot() as snapshot:                      # OutcomeStore, or a backend (router.store)
        data = read_phase(snapshot, phase=None)             # the latest phase
    data.outcomes.totals.exposures.sum()

The report never sees a row per exposure: the store hands over per (user, variant) totals, percentiles, a
histogram and a timeline, so the report's memory grows with users, not with traffic. Each question is a pass
over the phase's rows in the database, so none is asked twice: users in several variants come from the totals,
and only a phase that served merged lists is asked for its interleaving totals. ``read_outcomes`` is the
part the verdicts and guardrails need; the router's guardrail watcher reads only that, every few seconds.

**Intention to treat.** Every randomised exposure (``assignment`` 'strategy' or 'fallback') counts for the
variant it was *assigned* to: a fallback is an outcome of the assigned variant - its failure - with the
clicks the fallback's list got; an error exposure is an unclicked exposure of its variant. QA overrides were
not randomised and stay out. Counting fallbacks for the variant that served them instead (as the report did
before) lets a variant that fails for hard users win by losing them (tests/report/test_intention_to_treat.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from router.config import AnalysisPlan, recorded_stops
from router.errors import NoDataError, StoreFormatError
from router.report.guardrails import LATENCY_QUANTILE
from router.store.reader import GroupBy, InterleavingTotals, PhaseRecord, PhaseSnapshot, Timeline, UnitTotals
from router.strategies import Unit, fan_out_of, unit_of

#: Intention to treat: every randomised exposure, counted for the variant the strategy assigned.
ANALYSED: tuple[str, ...] = ("strategy", "fallback")
GROUPED_BY: GroupBy = "assigned_variant"
QUANTILES = (0.50, 0.95, 0.99)
TIMELINE_POINTS = 200
LATENCY_BINS = 40
LATENCY_GUARDRAIL = "latency_p99"


class SnapshotSource(Protocol):
    """Anything that opens a read snapshot of an outcome store: an OutcomeStore or a StoreBackend."""

    def snapshot(self) -> AbstractContextManager[PhaseSnapshot]: ...


@dataclass(frozen=True)
class PhaseOutcomes:
    """What the verdicts and the guardrails are computed from: the phase, its plan, per-(user, variant) totals."""

    phase: PhaseRecord
    plan: AnalysisPlan
    strategy: str
    unit: Unit
    """The unit of randomisation, and so of the comparisons (see router.report.outcomes)."""
    weights: Mapping[str, float]
    """Variant -> share in effect in the phase, in config order (the first is the control)."""
    totals: UnitTotals
    """Per (user, assigned variant) totals of every randomised exposure; ``slow`` is counted when the plan has
    a latency guardrail and a threshold exists."""
    slow_threshold_ms: float | None
    slow_threshold_reason: str
    """Where the threshold came from ("configured", "the control's p99"), or why there is none."""

    @property
    def control(self) -> str:
        return next(iter(self.weights))


@dataclass(frozen=True)
class PhaseData:
    """Everything the report needs from one phase; nothing of another phase is in here but its stops."""

    outcomes: PhaseOutcomes
    phases: tuple[int, ...]
    strategies: tuple[str, ...]
    """The distinct `strategy` values the phase's exposures were logged with."""
    first_exposure_at: float
    last_exposure_at: float
    exposures_by_assignment: Mapping[str, int]
    feedback_by_assignment: Mapping[str, int]
    users_in_several_variants: int
    latency_percentiles: Mapping[str, tuple[float, ...]]
    """Per variant: latency (ms) at QUANTILES of the analysed exposures."""
    latency_edges: NDArray[np.float64] | None
    latency_counts: Mapping[str, NDArray[np.int64]]
    timeline: Mapping[str, Timeline]
    variant_info: Mapping[str, Mapping[str, Any]]
    stops_caused: tuple[Mapping[str, Any], ...]
    """Stops recorded by the next phase that this phase's data caused (the phase ended with them)."""
    interleaving: InterleavingTotals = field(default_factory=InterleavingTotals)
    """Per-user credits of the analysed interleaved exposures (empty unless the phase interleaves)."""

    @property
    def phase(self) -> PhaseRecord:
        return self.outcomes.phase


def read_outcomes(snapshot: PhaseSnapshot, phase: int | None = None) -> PhaseOutcomes:
    """The phase (the latest by default), its recorded plan and its totals; NoDataError if there is no phase.

    Raises StoreFormatError when the phase's recorded configuration cannot be read.
    """
    record = snapshot.phase(phase)
    plan = plan_of(record)
    weights = configured_weights(record.config)
    strategy = phase_strategy(record.config, lambda: snapshot.strategies(record.phase))
    unit = phase_unit(record.config, strategy)
    threshold, reason = _slow_threshold(snapshot, record.phase, plan, next(iter(weights)))
    totals = snapshot.unit_totals(record.phase, by=GROUPED_BY, assignments=ANALYSED, slow_above_ms=threshold)
    return PhaseOutcomes(record, plan, strategy, unit, weights, totals, threshold, reason)


def read_phase(snapshot: PhaseSnapshot, phase: int | None = None) -> PhaseData:
    """Load one phase (the latest by default); NoDataError if the store, the phase or its exposures are missing."""
    outcomes = read_outcomes(snapshot, phase)
    number = outcomes.phase.phase
    span = snapshot.time_range(number)
    if span is None:
        raise NoDataError(f"phase {number} has no exposures yet")
    selection: dict[str, Any] = {"by": GROUPED_BY, "assignments": ANALYSED}
    latency_range = snapshot.latency_range(number, **selection)
    edges = None if latency_range is None else latency_edges(*latency_range)
    phases = snapshot.phases()
    return PhaseData(
        outcomes=outcomes,
        phases=phases,
        strategies=snapshot.strategies(number),
        first_exposure_at=span[0],
        last_exposure_at=span[1],
        exposures_by_assignment=snapshot.exposures_by_assignment(number),
        feedback_by_assignment=snapshot.feedback_by_assignment(number),
        users_in_several_variants=several_variants(outcomes.totals),
        latency_percentiles=snapshot.latency_percentiles(number, quantiles=QUANTILES, **selection),
        latency_edges=edges,
        latency_counts={} if edges is None else snapshot.latency_histogram(number, edges=edges, **selection),
        timeline=snapshot.timeline(number, buckets=TIMELINE_POINTS, **selection),
        variant_info=snapshot.variant_info(number),
        interleaving=(
            snapshot.interleaving_totals(number, assignments=ANALYSED)
            if fans_out(outcomes.phase.config, outcomes.strategy)
            else InterleavingTotals()
        ),
        stops_caused=_stops_caused(snapshot, number, phases),
    )


def several_variants(totals: UnitTotals) -> int:
    """Users with pairs in more than one variant: from the totals already read, not another pass over the rows.

    >>> several_variants(UnitTotals(("a", "b"), *(np.array(x) for x in ([0, 0, 1], [0, 1, 1], [1] * 3, [0] * 3,
    ...                  [0] * 3, [0] * 3))))
    1
    """
    return int(np.count_nonzero(np.bincount(totals.user) > 1)) if totals.user.size else 0


def fans_out(config: Mapping[str, Any], strategy: str) -> bool:
    """Whether the phase served merged lists (interleave): its recorded `fan_out`, else its strategy's."""
    recorded = config.get("fan_out")
    return (isinstance(recorded, dict) and isinstance(recorded.get("label"), str)) or fan_out_of(strategy) is not None


def plan_of(record: PhaseRecord) -> AnalysisPlan:
    """The analysis plan the phase recorded (defaults for a phase recorded before plans existed)."""
    try:
        return AnalysisPlan.of(record.config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise StoreFormatError(f"phase {record.phase}'s recorded analysis plan is invalid: {problems}") from exc


def phase_strategy(config: Mapping[str, Any], logged: Callable[[], tuple[str, ...]]) -> str:
    """The phase's configured strategy, else the one its exposures were logged with (if there is one)."""
    strategy = config.get("strategy")
    if strategy is None:
        strategies = logged()
        if len(strategies) != 1:
            raise StoreFormatError(f"the phase's config names no strategy and exposures show {list(strategies)}")
        strategy = strategies[0]
    return str(strategy)


def phase_unit(config: Mapping[str, Any], strategy: str) -> Unit:
    """The phase's unit of randomisation: recorded in its config (`unit`), else the strategy's registered one."""
    recorded = config.get("unit")
    unit = recorded if recorded in ("user", "request") else unit_of(strategy)
    if unit is None:
        raise StoreFormatError(
            f"the phase's config records no unit of randomisation and {strategy!r} is not a known strategy"
        )
    return unit


def _stops_caused(snapshot: PhaseSnapshot, number: int, phases: tuple[int, ...]) -> tuple[Mapping[str, Any], ...]:
    later = [p for p in phases if p > number]
    if not later:
        return ()
    following = snapshot.phase(later[0])
    return tuple(stop for stop in recorded_stops(following.config) if stop.get("phase") == number)


def _slow_threshold(snapshot: PhaseSnapshot, phase: int, plan: AnalysisPlan, control: str) -> tuple[float | None, str]:
    guardrail = next((g for g in plan.guardrails if g.metric == LATENCY_GUARDRAIL), None)
    if guardrail is None:
        return None, "no latency guardrail configured"
    if guardrail.threshold_ms is not None:
        return guardrail.threshold_ms, "configured"
    percentiles = snapshot.latency_percentiles(
        phase, by=GROUPED_BY, assignments=ANALYSED, quantiles=(LATENCY_QUANTILE,)
    ).get(control)
    if not percentiles or not math.isfinite(percentiles[0]):
        return None, "no control latencies yet to set the slow-request threshold from"
    return float(percentiles[0]), f"the control's p{LATENCY_QUANTILE * 100:g}"


def configured_weights(config: Mapping[str, Any]) -> dict[str, float]:
    """Variant name -> normalised weight, in config order (the first is the control).

    Accepts ``variants`` as a list of ``{"name", "weight"}`` objects (the YAML's shape) or a name -> weight
    mapping. Anything else is refused: guessing the control would silently change every comparison.
    """
    variants = config.get("variants")
    pairs: list[tuple[Any, Any]]
    if isinstance(variants, list):
        try:
            pairs = [(v["name"], v.get("weight", 1)) for v in variants]
        except (TypeError, KeyError, AttributeError) as exc:
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
    finite = all(math.isfinite(w) for w in weights.values())
    if not weights or not finite or total <= 0 or any(w < 0 for w in weights.values()) or len(weights) != len(pairs):
        raise StoreFormatError(f"config variants need unique names and non-negative weights: {pairs!r}")
    return {name: weight / total for name, weight in weights.items()}


def latency_edges(fastest: float, slowest: float) -> NDArray[np.float64]:
    """Shared log-spaced bins from the fastest to the slowest exposure (ms).

    >>> latency_edges(1.0, 100.0)[[0, -1]].tolist()
    [1.0, 100.0]
    """
    low = max(fastest, 1e-3)
    high = max(slowest, low)
    if high < 2 * low:  # (nearly) constant latencies: widen so the axis shows whole decades, not 5.01e0
        low, high = low / 1.5, high * 1.5
    return np.geomspace(low, high, LATENCY_BINS + 1)


@dataclass(frozen=True)
class PhaseList:
    """What a store holds, for the pages that say "no data yet": the phase asked for and the phases with data."""

    phase: PhaseRecord | None
    """The phase asked for (the latest when none was named), None if the store has no such phase."""
    phases: tuple[int, ...]
    with_data: tuple[int, ...]
    """The phases that have at least one exposure."""

    def earlier_with_data(self) -> int | None:
        """The latest phase with data before the one asked for (or the latest with data if it does not exist)."""
        before = [n for n in self.with_data if self.phase is None or n < self.phase.phase]
        return before[-1] if before else None


def list_phases(store: SnapshotSource, phase: int | None = None) -> PhaseList:
    """The store's phases and which hold exposures; an empty list when there is no store (or no phase) yet."""
    try:
        with store.snapshot() as snapshot:
            phases = snapshot.phases()
            with_data = tuple(n for n in phases if snapshot.time_range(n) is not None)
            chosen = phases[-1] if phases and phase is None else phase
            record = snapshot.phase(chosen) if chosen in phases else None
    except NoDataError:
        return PhaseList(None, (), ())
    return PhaseList(record, phases, with_data)
