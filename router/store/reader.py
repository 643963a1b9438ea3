"""The store's read side, for the report: one consistent snapshot, answering in aggregates, never row by row.

    with backend.snapshot() as snapshot:
        phase = snapshot.phase(None)                                   # the latest; NoDataError if none
        totals = snapshot.unit_totals(phase.phase, by="variant", assignments=("strategy",))
        totals.exposures[totals.variant == 0].sum()                    # the control's exposures

The biggest thing a snapshot hands over is one row per (user, variant) pair, so the report's memory grows with
users, not with traffic; counting, joining and grouping happen in the database, and since schema version 7
from the rollups the writer keeps (router.store.rollup, read by router.store.rollup_reader), so its time does
too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from router.store.epochs import EpochReads
from router.store.shadow_reader import ShadowReads

#: Which variant an exposure counts for: who served it, or whom the strategy assigned it to.
GroupBy = Literal["variant", "assigned_variant"]


@dataclass(frozen=True)
class PhaseRecord:
    """One row of `phases`, its configuration parsed."""

    phase: int
    experiment: str
    started_at: float
    config_key: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class UnitTotals:
    """Per (user, variant) totals of one phase's selected exposures, as parallel arrays (one entry per pair).

    `user` is a dense integer code per user id (stable within one snapshot only); `variant` indexes `variants`.
    `clicked` counts exposures with at least one click (two clicks on one list count once). `errors` counts
    exposures answered with an error status, `fallbacks` those with `assignment = 'fallback'` (served by the
    fallback variant because the assigned one failed). `slow` counts exposures slower than the `slow_above_ms`
    threshold the totals were asked with (None when none was given; a missing latency counts as slow). `events`
    and `values` hold, per feedback event name, how many events were attributed to the pair's exposures and the
    sum of their values (NULL values count as 0).
    """

    variants: tuple[str, ...]
    user: NDArray[np.int64]
    variant: NDArray[np.int64]
    exposures: NDArray[np.int64]
    clicked: NDArray[np.int64]
    errors: NDArray[np.int64]
    fallbacks: NDArray[np.int64]
    events: Mapping[str, NDArray[np.int64]] = field(default_factory=dict)
    values: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)
    slow: NDArray[np.int64] | None = None

    def of(self, name: str) -> NDArray[np.bool_]:
        """A mask selecting the pairs of variant `name` (all False if it has none)."""
        if name not in self.variants:
            return np.zeros(self.user.shape, dtype=bool)
        return np.asarray(self.variant == self.variants.index(name), dtype=bool)


@dataclass(frozen=True)
class InterleavingTotals:
    """One phase's interleaved exposures (those with `teams`), for the interleaving analysis.

    `credits[team][u]` counts user u's clicked positions credited to `team` (the feedback row's `variant`), over
    the user's interleaved exposures that both backends answered; a position clicked twice counts once. `users`
    is how many users have such an exposure (with or without a click), so every array has `users` entries in
    one user order; a team nobody clicked has no entry (`of` gives zeros). `exposures` counts every interleaved
    exposure; `degraded` those served from one list because the named variant's backend failed; `failed` those
    answered with an error because every backend failed.
    """

    users: int = 0
    credits: Mapping[str, NDArray[np.int64]] = field(default_factory=dict)
    exposures: int = 0
    degraded: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0

    def of(self, team: str) -> NDArray[np.int64]:
        """Per user, the clicks credited to `team` (zeros if it has none)."""
        found = self.credits.get(team)
        return np.zeros(self.users, np.int64) if found is None else found


@dataclass(frozen=True)
class Timeline:
    """Cumulative exposures and clicked exposures of one variant at the end of each time bucket."""

    ends: NDArray[np.float64]
    exposures: NDArray[np.int64]
    clicked: NDArray[np.int64]


def timelines_from_buckets(
    rows: Iterable[Sequence[Any]], first: float, width: float, buckets: int
) -> dict[str, Timeline]:
    """Timelines by variant from (variant, bucket, exposures, clicked) rows, as every backend's query gives them.

    >>> timelines_from_buckets([("a", 0, 2, 1), ("a", 2, 3, 0)], 0.0, 60.0, 3)["a"].exposures.tolist()
    [2, 2, 5]
    """
    exposures: dict[str, NDArray[np.int64]] = {}
    clicked: dict[str, NDArray[np.int64]] = {}
    for variant, bucket, n, c in rows:
        exposures.setdefault(str(variant), np.zeros(buckets, np.int64))[int(bucket)] = n
        clicked.setdefault(str(variant), np.zeros(buckets, np.int64))[int(bucket)] = c
    ends = first + width * np.arange(1, buckets + 1, dtype=np.float64)
    return {name: Timeline(ends, np.cumsum(exposures[name]), np.cumsum(clicked[name])) for name in sorted(exposures)}


class PhaseSnapshot(ShadowReads, EpochReads, Protocol):
    """What the report may ask a store, all from one consistent snapshot. Raises NoDataError when it is empty.

    The shadow section's questions are `ShadowReads` (router.store.shadow_reader).
    """

    def phases(self) -> tuple[int, ...]:
        """Every phase number, ascending."""

    def phase(self, number: int | None) -> PhaseRecord:
        """The phase `number` (the latest when None); NoDataError if it does not exist."""

    def strategies(self, phase: int) -> tuple[str, ...]:
        """The distinct `strategy` values the phase's exposures were logged with."""

    def time_range(self, phase: int) -> tuple[float, float] | None:
        """(first, last) exposure time of the phase, None if it has no exposures."""

    def unit_totals(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], slow_above_ms: float | None = None
    ) -> UnitTotals:
        """Per (user, variant) totals of the phase's exposures whose `assignment` is in `assignments`.

        With `slow_above_ms`, `slow` counts each pair's exposures slower than it (the latency guardrail's
        per-unit numerator), counted by the database like everything else.
        """

    def exposures_by_assignment(self, phase: int) -> Mapping[str, int]:
        """How many exposures of the phase each assignment ('strategy', 'override', 'fallback') has."""

    def feedback_by_assignment(self, phase: int) -> Mapping[str, int]:
        """How many feedback events of the phase were attributed to exposures of each assignment."""

    def users_in_several_variants(self, phase: int, *, by: GroupBy, assignments: Sequence[str]) -> int:
        """Users whose selected exposures count for more than one variant."""

    def latency_percentiles(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], quantiles: Sequence[float]
    ) -> Mapping[str, tuple[float, ...]]:
        """Per variant, the latency (ms) at each quantile in [0, 1], interpolated linearly as numpy does."""

    def latency_histogram(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], edges: NDArray[np.float64]
    ) -> Mapping[str, NDArray[np.int64]]:
        """Per variant, how many exposures fall in each bin of `edges` (values outside are clipped in)."""

    def latency_range(self, phase: int, *, by: GroupBy, assignments: Sequence[str]) -> tuple[float, float] | None:
        """The fastest and slowest selected exposure (ms), None if there are none."""

    def timeline(self, phase: int, *, by: GroupBy, assignments: Sequence[str], buckets: int) -> Mapping[str, Timeline]:
        """Per variant, cumulative counts at the end of each of `buckets` equal spans of the phase's exposures."""

    def variant_info(self, phase: int) -> Mapping[str, Mapping[str, Any]]:
        """Each variant's GET /info recorded for the phase."""

    def interleaving_totals(self, phase: int, *, assignments: Sequence[str]) -> InterleavingTotals:
        """Per user, clicks credited to each team over the phase's selected interleaved exposures (counted in SQL)."""
