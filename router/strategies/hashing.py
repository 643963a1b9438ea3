"""Assignment as tiny pure functions: hash -> point in [0, 1) -> the variant whose range holds it.

The hash is GrowthBook's version 2, so a GrowthBook SDK given the same seed (our salt), the same user id
and the same weights puts the user in the same variant:

    >>> unit_point("seed", "a")          # GrowthBook's cases.json: hash("seed", "a", 2) == 0.0505
    0.0505
    >>> choose(unit_point("seed", "a"), bucket_ranges((("model_a", 0.5), ("model_b", 0.5))))
    'model_a'

No I/O and no state, so every router replica agrees without talking.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def epoch_salt(salt: str, epoch: int) -> str:
    """The salt that hashes units in an adaptive strategy's weight `epoch`: the salt with the epoch number.

    >>> epoch_salt("seed", 3)
    'seed:epoch3'
    """
    return f"{salt}:epoch{epoch}"


def epoch_point(salt: str, epoch: int, unit_id: str) -> int:
    """The unit's integer hash point in [0, POINTS) for `epoch` (GrowthBook v2's hash, times POINTS)."""
    return fnv1a32(str(fnv1a32(epoch_salt(salt, epoch) + unit_id))) % POINTS


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


def relabel(buckets: Sequence[Bucket], moved: Mapping[str, str]) -> tuple[Bucket, ...]:
    """The same ranges, each owned by `moved[variant]` where the variant was moved (a guardrail stop).

    Only the moved variant's units change variant: every other range stays where it was, so stopping one of
    three variants moves nobody from the other two (re-weighting the config would shift their ranges).

    >>> [(b.variant, b.start) for b in relabel(bucket_ranges((("a", 1), ("b", 1), ("c", 1))), {"b": "a"})]
    [('a', 0.0), ('a', 0.3333333333333333), ('c', 0.6666666666666666)]
    """
    return tuple(Bucket(moved.get(b.variant, b.variant), b.start, b.end) for b in buckets)


def choose(point: float, buckets: Sequence[Bucket]) -> str:
    """The variant whose range [start, end) holds `point`; empty ranges never match.

    >>> choose(0.5, bucket_ranges((("a", 1), ("b", 0), ("c", 1))))
    'c'
    """
    ends = [b.end for b in buckets]
    return buckets[bucket_index(point, ends)].variant


def bucket_index(point: float, ends: Sequence[float]) -> int:
    """The index of the range whose end is the first above `point` (ends ascending, the last 1.0)."""
    index = bisect.bisect_right(ends, point)
    if index >= len(ends):
        raise ValueError(f"point {point} is outside [0, 1)")
    return index
