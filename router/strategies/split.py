"""The fixed splits: `hash` (sticky per user) and `random` (per request), over the configured weights.

>>> strategy = HashStrategy(bucket_ranges((("model_a", 0.5), ("model_b", 0.5))), salt="seed")
>>> strategy.assign("a")
Assignment(variant='model_a', propensity=0.5, epoch=None)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from router.strategies.base import Assignment, Outcome, Unit
from router.strategies.hashing import POINTS, Bucket, bucket_index, bucket_ranges, unit_point

__all__ = ["HashStrategy", "RandomStrategy", "bucket_ranges"]


@dataclass(frozen=True)
class HashStrategy:
    """Sticky split: salt+unit hashes to a point in [0, 1); cumulative weights pick the variant.

    Changing the salt reshuffles everyone; changing nothing keeps every user where they were. The propensity
    is the chance that a user's point falls in the variant's range: points are multiples of 1/10000, so it is
    the share of those grid points in the range (0.3334 for a third, not 0.3333...).
    """

    buckets: tuple[Bucket, ...]
    salt: str
    _ends: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _assignments: tuple[Assignment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", tuple(b.end for b in self.buckets))
        object.__setattr__(self, "_assignments", _grid_assignments(self.buckets))

    @property
    def name(self) -> str:
        return "hash"

    @property
    def unit(self) -> Unit:
        return "user"

    def assign(self, unit_id: str) -> Assignment:
        return self._assignments[bucket_index(unit_point(self.salt, unit_id), self._ends)]

    def observe(self, outcome: Outcome) -> None:
        """A fixed split learns nothing."""


@dataclass(frozen=True)
class RandomStrategy:
    """Weighted random per request: the unit id is ignored, so one user may see several variants.

    Pass a seeded `random.Random` for reproducible tests.
    """

    buckets: tuple[Bucket, ...]
    rng: random.Random = field(default_factory=random.Random, compare=False)
    _ends: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _assignments: tuple[Assignment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", tuple(b.end for b in self.buckets))
        object.__setattr__(self, "_assignments", _assignments(self.buckets))

    @property
    def name(self) -> str:
        return "random"

    @property
    def unit(self) -> Unit:
        return "request"

    def assign(self, unit_id: str) -> Assignment:
        return self._assignments[bucket_index(self.rng.random(), self._ends)]

    def observe(self, outcome: Outcome) -> None:
        """A fixed split learns nothing."""


def _assignments(buckets: tuple[Bucket, ...]) -> tuple[Assignment, ...]:
    """One prebuilt Assignment per bucket (the hot path allocates nothing): a continuous draw's probabilities.

    A variant that owns several ranges (a stopped variant's range relabelled to the control) is chosen with
    the probability of all of them.
    """
    return _per_variant(buckets, [b.end - b.start for b in buckets])


def _grid_assignments(buckets: tuple[Bucket, ...]) -> tuple[Assignment, ...]:
    """The probabilities of the hash's grid: the share of points k/10000 with start <= k/10000 < end."""

    def first_point_at_or_above(edge: float) -> int:
        return math.ceil(round(edge * POINTS, 6))

    points = [first_point_at_or_above(b.end) - first_point_at_or_above(b.start) for b in buckets]
    totals: dict[str, int] = {}
    for bucket, count in zip(buckets, points, strict=True):
        totals[bucket.variant] = totals.get(bucket.variant, 0) + count
    return tuple(Assignment(b.variant, totals[b.variant] / POINTS) for b in buckets)


def _per_variant(buckets: tuple[Bucket, ...], widths: list[float]) -> tuple[Assignment, ...]:
    totals: dict[str, float] = {}
    for bucket, width in zip(buckets, widths, strict=True):
        totals[bucket.variant] = totals.get(bucket.variant, 0.0) + width
    return tuple(Assignment(b.variant, totals[b.variant]) for b in buckets)
