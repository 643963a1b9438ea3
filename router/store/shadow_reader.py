"""The store's read side for shadow traffic: what the report's shadow section may ask a snapshot (docs/shadow.md).

    with backend.snapshot() as snapshot:
        for shadow in snapshot.shadow_names(phase):
            totals = snapshot.shadow_totals(phase, shadow, assignments=("strategy",))   # per (user, live variant)
            chunk = snapshot.shadow_pairs(phase, shadow, assignments=("strategy",), after=None, limit=5_000)
            chunk = snapshot.shadow_pairs(..., after=chunk[-1].request_id, limit=5_000)      # the next chunk

Every shadow call is matched to its live exposure by request id. Only live exposures the router answered (status
200) whose `assignment` is selected count; shadow calls of other exposures are `unmatched`. Pairs (both lists)
come in chunks ordered by request id, so the report's memory is bounded by the chunk, never by the traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ShadowTotals:
    """One shadow's calls in a phase, per (user, live variant) pair, as parallel arrays (one entry per pair).

    `user` is a dense integer code per user id (stable within one snapshot only); `variant` indexes `variants`.
    `calls` counts the shadow calls matched to a selected, answered live exposure, `succeeded` those with
    status 200. `errors` counts the failed calls by live variant, then by error kind. `unmatched` counts the
    shadow's calls in the phase whose live exposure is not selected (an override or fallback) or was not stored.
    """

    shadow: str
    variants: tuple[str, ...]
    user: NDArray[np.int64]
    variant: NDArray[np.int64]
    calls: NDArray[np.int64]
    succeeded: NDArray[np.int64]
    errors: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    urls: tuple[str, ...] = ()
    unmatched: int = 0

    def of(self, name: str) -> NDArray[np.bool_]:
        """A mask selecting the pairs of live variant `name` (all False if it has none)."""
        if name not in self.variants:
            return np.zeros(self.user.shape, dtype=bool)
        return np.asarray(self.variant == self.variants.index(name), dtype=bool)

    @classmethod
    def from_rows(
        cls,
        shadow: str,
        pairs: Sequence[Sequence[Any]],
        errors: Iterable[Sequence[Any]],
        *,
        urls: tuple[str, ...],
        unmatched: int,
    ) -> ShadowTotals:
        """From every backend's answers: (user, live variant, calls, succeeded) per pair in variant order, and
        (live variant, error kind, calls) per failure kind.

        >>> t = ShadowTotals.from_rows("c", [("u1", "a", 2, 1), ("u2", "b", 1, 1)], [("a", "timeout", 1)],
        ...                            urls=("http://c",), unmatched=0)
        >>> (t.variants, t.user.tolist(), t.calls.tolist(), dict(t.errors["a"]))
        (('a', 'b'), [0, 1], [2, 1], {'timeout': 1})
        """
        variants = tuple(dict.fromkeys(str(row[1]) for row in pairs))
        users: dict[str, int] = {}
        for row in pairs:
            users.setdefault(str(row[0]), len(users))
        by_variant: dict[str, dict[str, int]] = {}
        for variant, kind, n in errors:
            by_variant.setdefault(str(variant), {})[str(kind)] = int(n)
        count = len(pairs)
        return cls(
            shadow=shadow,
            variants=variants,
            user=np.fromiter((users[str(row[0])] for row in pairs), np.int64, count),
            variant=np.fromiter((variants.index(str(row[1])) for row in pairs), np.int64, count),
            calls=np.fromiter((int(row[2]) for row in pairs), np.int64, count),
            succeeded=np.fromiter((int(row[3]) for row in pairs), np.int64, count),
            errors=by_variant,
            urls=urls,
            unmatched=int(unmatched),
        )


@dataclass(frozen=True)
class PairedLatency:
    """Latency quantiles (ms) of the requests both the live variant and the shadow answered, side by side.

    `live` is the live exposures' `latency_ms` (the router's time to answer), `shadow` the shadow calls' own.
    """

    pairs: int
    live: tuple[float, ...]
    shadow: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """One request both answered: the live list, the shadow's list, and the live list's clicked items."""

    request_id: str
    user_id: str
    variant: str  # the live variant that served it
    live: tuple[int, ...]
    shadow: tuple[int, ...]
    clicked: tuple[int, ...]  # items of `click` feedback attributed to the request, in arrival order


@dataclass(frozen=True, slots=True)
class RepeatedList:
    """The first two lists a live variant served one user for the same k: the model compared with itself."""

    user_id: str
    first: tuple[int, ...]
    second: tuple[int, ...]


class ShadowReads(Protocol):
    """What the report may ask a snapshot about shadow calls (part of `router.store.reader.PhaseSnapshot`)."""

    def shadow_names(self, phase: int) -> tuple[str, ...]:
        """The shadows with at least one call in the phase, sorted."""

    def shadow_totals(self, phase: int, shadow: str, *, assignments: Sequence[str]) -> ShadowTotals:
        """Per (user, live variant) counts of the shadow's calls matched to answered, selected live exposures."""

    def shadow_latency(
        self, phase: int, shadow: str, *, assignments: Sequence[str], quantiles: Sequence[float]
    ) -> Mapping[str, PairedLatency]:
        """Per live variant: quantiles of the live and the shadow latency over the requests both answered
        (interpolated linearly as numpy does)."""

    def shadow_pairs(
        self, phase: int, shadow: str, *, assignments: Sequence[str], after: str | None, limit: int
    ) -> tuple[ShadowPair, ...]:
        """Up to `limit` requests both answered, ordered by request id, starting after `after` (None: the first)."""

    def repeated_lists(
        self, phase: int, variant: str, *, assignments: Sequence[str], limit: int
    ) -> tuple[RepeatedList, ...]:
        """Up to `limit` users' first two answered lists from `variant` for one k (users ordered by id)."""
