"""`thompson` and `epsilon_greedy`: sticky per user within a weight epoch, with the epoch's exact propensity.

    table = EpochTable(epoch=0, variants=("model_a", "model_b"), points=(5000, 5000), salt="s")
    strategy = AdaptiveStrategy("thompson", FixedEpoch(table))
    strategy.assign("42")                  # Assignment(variant=..., propensity=0.5, epoch=0)

The weights are not computed here: an epoch keeper (router.epochs) reads each epoch from the store, computes
the next one under the store's lock (router.bandit has the maths) and publishes it as an `EpochTable`; the
strategy only reads the current table, so a request costs one attribute read, one hash and one bisect - the
same as `hash`. The unit's point is hashed with the salt and the epoch number (`epoch_point`), so a user keeps
a variant for the whole epoch and is drawn afresh in the next.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.strategies.base import Assignment, Outcome, Unit
from router.strategies.hashing import POINTS, epoch_salt, fnv1a32

#: The registered names of the adaptive strategies.
ADAPTIVE_STRATEGIES = ("thompson", "epsilon_greedy")


@dataclass(frozen=True)
class EpochTable:
    """One epoch's weights as the hot path uses them: `points[i]` of POINTS hash points belong to `variants[i]`.

    `salt` is the experiment's: the table hashes units with it and the epoch number (`epoch_point`), the
    prefix precomputed so that a request costs what `hash` costs. `moved` relabels a variant stopped by a
    guardrail to the variant that serves its units (the control): its range keeps its place, so nobody else
    moves, and the serving variant's propensity is the sum of its ranges.
    """

    epoch: int
    variants: tuple[str, ...]
    points: tuple[int, ...]
    salt: str = ""
    moved: Mapping[str, str] = field(default_factory=dict)
    _ends: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _assignments: tuple[Assignment, ...] = field(init=False, repr=False, compare=False)
    _prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.variants) != len(self.points) or not self.variants:
            raise ValueError("an epoch table needs one point count per variant")
        if sum(self.points) != POINTS or min(self.points) < 0:
            raise ValueError(f"points {self.points} must be non-negative and sum to {POINTS}")
        owners = [self.moved.get(name, name) for name in self.variants]
        totals: dict[str, int] = {}
        for owner, count in zip(owners, self.points, strict=True):
            totals[owner] = totals.get(owner, 0) + count
        object.__setattr__(self, "_ends", tuple(itertools.accumulate(self.points)))
        object.__setattr__(self, "_assignments", tuple(Assignment(o, totals[o] / POINTS, self.epoch) for o in owners))
        object.__setattr__(self, "_prefix", epoch_salt(self.salt, self.epoch))

    def assign(self, unit_id: str) -> Assignment:
        """The unit's variant in this epoch, its propensity (points / POINTS) and the epoch number."""
        point = fnv1a32(str(fnv1a32(self._prefix + unit_id))) % POINTS  # = hashing.epoch_point(salt, epoch, unit)
        return self._assignments[bisect.bisect_right(self._ends, point)]

    def propensity(self, variant: str) -> float:
        """The probability that a unit is served `variant` in this epoch (0 for a variant that serves nobody)."""
        return next((a.propensity for a in self._assignments if a.variant == variant), 0.0)


def even_table(
    variants: Sequence[str], epoch: int = 0, salt: str = "", moved: Mapping[str, str] | None = None
) -> EpochTable:
    """An even split over `variants` in whole points (the first variants get the remainder): epoch 0's weights.

    >>> even_table(("a", "b", "c")).points
    (3334, 3333, 3333)
    """
    base, extra = divmod(POINTS, len(variants))
    points = tuple(base + (1 if i < extra else 0) for i in range(len(variants)))
    return EpochTable(epoch, tuple(variants), points, salt, moved or {})


class EpochSource(Protocol):
    """Where an adaptive strategy reads the current epoch's table (an epoch keeper, or a fixed table)."""

    def current(self) -> EpochTable:
        """The table in force now; cheap, called on every request."""


@dataclass(frozen=True)
class FixedEpoch:
    """An EpochSource that never changes (tests, and a strategy built without a keeper: an even epoch 0)."""

    table: EpochTable

    def current(self) -> EpochTable:
        return self.table


@dataclass(frozen=True)
class AdaptiveStrategy:
    """Thompson sampling or epsilon-greedy, served from the weight epoch its source says is current.

    The strategy itself learns nothing per request (`observe` is a no-op): the keeper recomputes the weights
    from the store's outcomes once per epoch, so every replica serves the same weights.
    """

    strategy_name: str
    source: EpochSource
    _current: Callable[[], EpochTable] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.strategy_name not in ADAPTIVE_STRATEGIES:
            raise ValueError(f"not an adaptive strategy: {self.strategy_name!r}")
        object.__setattr__(self, "_current", self.source.current)

    @property
    def name(self) -> str:
        return self.strategy_name

    @property
    def unit(self) -> Unit:
        return "user"

    def assign(self, unit_id: str) -> Assignment:
        return self._current().assign(unit_id)

    def observe(self, outcome: Outcome) -> None:
        """Outcomes are read from the store once per epoch, not one by one (every replica must agree)."""
