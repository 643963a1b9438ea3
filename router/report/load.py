"""Read one phase from a store snapshot: everything the report needs, in aggregates, in one consistent read.

    with store.snapshot() as snapshot:                      # OutcomeStore, or a backend (router.store)
        data = read_phase(snapshot, phase=None)             # the latest phase
    data.totals.exposures.sum()

The report never sees a row per exposure: the store hands over per (user, variant) totals, percentiles, a
histogram and a timeline, so the report's memory grows with users, not with traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from router.errors import NoDataError
from router.store.reader import GroupBy, InterleavingTotals, PhaseRecord, PhaseSnapshot, Timeline, UnitTotals

#: What is analysed today: exposures assigned by the strategy, counted for the variant that served them.
ANALYSED: tuple[str, ...] = ("strategy",)
GROUPED_BY: GroupBy = "variant"
QUANTILES = (0.50, 0.95, 0.99)
TIMELINE_POINTS = 200
LATENCY_BINS = 40


class SnapshotSource(Protocol):
    """Anything that opens a read snapshot of an outcome store: an OutcomeStore or a StoreBackend."""

    def snapshot(self) -> AbstractContextManager[PhaseSnapshot]: ...


@dataclass(frozen=True)
class PhaseData:
    """Everything the report needs from one phase; nothing of another phase is in here."""

    phase: PhaseRecord
    phases: tuple[int, ...]
    strategies: tuple[str, ...]
    """The distinct `strategy` values the phase's exposures were logged with."""
    first_exposure_at: float
    last_exposure_at: float
    totals: UnitTotals
    """Per (user, variant) totals of the analysed exposures."""
    exposures_by_assignment: Mapping[str, int]
    feedback_by_assignment: Mapping[str, int]
    users_in_several_variants: int
    latency_percentiles: Mapping[str, tuple[float, ...]]
    """Per variant: latency (ms) at QUANTILES of the analysed exposures."""
    latency_edges: NDArray[np.float64] | None
    latency_counts: Mapping[str, NDArray[np.int64]]
    timeline: Mapping[str, Timeline]
    variant_info: Mapping[str, Mapping[str, Any]]
    interleaving: InterleavingTotals = field(default_factory=InterleavingTotals)
    """Per-user credits of the analysed interleaved exposures (empty unless the phase interleaves)."""


def read_phase(snapshot: PhaseSnapshot, phase: int | None = None) -> PhaseData:
    """Load one phase (the latest by default); NoDataError if the store, the phase or its exposures are missing."""
    record = snapshot.phase(phase)
    number = record.phase
    span = snapshot.time_range(number)
    if span is None:
        raise NoDataError(f"phase {number} has no exposures yet")
    selection: dict[str, Any] = {"by": GROUPED_BY, "assignments": ANALYSED}
    latency_range = snapshot.latency_range(number, **selection)
    edges = None if latency_range is None else latency_edges(*latency_range)
    return PhaseData(
        phase=record,
        phases=snapshot.phases(),
        strategies=snapshot.strategies(number),
        first_exposure_at=span[0],
        last_exposure_at=span[1],
        totals=snapshot.unit_totals(number, **selection),
        exposures_by_assignment=snapshot.exposures_by_assignment(number),
        feedback_by_assignment=snapshot.feedback_by_assignment(number),
        users_in_several_variants=snapshot.users_in_several_variants(number, **selection),
        latency_percentiles=snapshot.latency_percentiles(number, quantiles=QUANTILES, **selection),
        latency_edges=edges,
        latency_counts={} if edges is None else snapshot.latency_histogram(number, edges=edges, **selection),
        timeline=snapshot.timeline(number, buckets=TIMELINE_POINTS, **selection),
        variant_info=snapshot.variant_info(number),
        interleaving=snapshot.interleaving_totals(number, assignments=ANALYSED),
    )


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
