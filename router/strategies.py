"""Assignment as tiny pure functions: hash -> point in [0, 1) -> the variant whose range holds it.

The hash is GrowthBook's version 2, so a GrowthBook SDK given the same seed (our salt), the same user id
and the same weights puts the user in the same variant:

    >>> unit_point("seed", "a")          # GrowthBook's cases.json: hash("seed", "a", 2) == 0.0505
    0.0505
    >>> buckets = bucket_ranges((("model_a", 0.5), ("model_b", 0.5)))
    >>> HashStrategy(buckets, salt="seed").assign("a")
    'model_a'

No I/O and no state beyond a random generator, so every router replica agrees without talking.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
POINTS = 10_000  # GrowthBook v2 resolution: points are multiples of 1/10000


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the UTF-8 bytes of `text`.

    >>> hex(fnv1a32(""))
    '0x811c9dc5'
    """
    value = FNV_OFFSET
    for byte in text.encode():
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return value


def unit_point(salt: str, unit_id: str) -> float:
    """GrowthBook v2: `fnv1a32(str(fnv1a32(salt + unit_id))) % 10000 / 10000`, a point in [0, 1)."""
    return fnv1a32(str(fnv1a32(salt + unit_id))) % POINTS / POINTS


@dataclass(frozen=True)
class Bucket:
    """The half-open range [start, end) of [0, 1) that belongs to one variant."""

    variant: str
    start: float
    end: float


def bucket_ranges(weights: Sequence[tuple[str, float]]) -> tuple[Bucket, ...]:
    """Consecutive ranges in config order, each as wide as its variant's share of the total weight.

    Weights need not sum to 1 (they are divided by their sum); a zero weight gets an empty range. The last
    end is exactly 1.0, so every point has a variant.

    >>> [(b.variant, b.start, b.end) for b in bucket_ranges((("a", 30), ("b", 70)))]
    [('a', 0.0, 0.3), ('b', 0.3, 1.0)]
    """
    if not weights:
        raise ValueError("no variants to make buckets for")
    if any(w < 0 for _, w in weights):
        raise ValueError(f"negative weight in {list(weights)}")
    total = 0.0
    for _, weight in weights:
        total += weight
    if total <= 0:
        raise ValueError(f"weights sum to {total}, nothing would get traffic")
    buckets = []
    cumulative = 0.0
    for name, weight in weights:
        start = cumulative / total
        cumulative += weight
        buckets.append(Bucket(name, start, cumulative / total))  # the last is total / total == 1.0
    return tuple(buckets)


def choose(point: float, buckets: Sequence[Bucket]) -> str:
    """The variant whose range [start, end) holds `point`; empty ranges never match.

    >>> choose(0.5, bucket_ranges((("a", 1), ("b", 0), ("c", 1))))
    'c'
    """
    ends = [b.end for b in buckets]
    return buckets[_index(point, ends)].variant


def _index(point: float, ends: Sequence[float]) -> int:
    index = bisect.bisect_right(ends, point)
    if index >= len(ends):
        raise ValueError(f"point {point} is outside [0, 1)")
    return index


class Strategy(Protocol):
    """How a unit (a user, or a request) gets a variant."""

    @property
    def name(self) -> Literal["random", "hash"]:
        """The strategy's config name, recorded on every exposure."""

    def assign(self, unit_id: str) -> str:
        """Return the variant that serves `unit_id`."""


@dataclass(frozen=True)
class HashStrategy:
    """Sticky split: salt+unit hashes to a point in [0, 1); cumulative weights pick the variant.

    Changing the salt reshuffles everyone; changing nothing keeps every user where they were.
    """

    buckets: tuple[Bucket, ...]
    salt: str
    _ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", tuple(b.end for b in self.buckets))

    @property
    def name(self) -> Literal["hash"]:
        return "hash"

    def assign(self, unit_id: str) -> str:
        return self.buckets[_index(unit_point(self.salt, unit_id), self._ends)].variant


@dataclass(frozen=True)
class RandomStrategy:
    """Weighted random per request: the unit id is ignored, so one user may see several variants.

    Pass a seeded `random.Random` for reproducible tests.
    """

    buckets: tuple[Bucket, ...]
    rng: random.Random = field(default_factory=random.Random, compare=False)
    _ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", tuple(b.end for b in self.buckets))

    @property
    def name(self) -> Literal["random"]:
        return "random"

    def assign(self, unit_id: str) -> str:
        return self.buckets[_index(self.rng.random(), self._ends)].variant


def build_strategy(
    name: Literal["random", "hash"],
    weights: Sequence[tuple[str, float]],
    *,
    salt: str,
    rng: random.Random | None = None,
) -> Strategy:
    """The strategy called `name` over `weights` (variant, weight) in config order."""
    buckets = bucket_ranges(weights)
    if name == "hash":
        return HashStrategy(buckets, salt=salt)
    return RandomStrategy(buckets, rng=rng or random.Random())
