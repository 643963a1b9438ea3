"""Strategies by name: the registry the config validates against and the service builds from.

    spec = STRATEGIES["hash"]                        # its unit and how to build it
    strategy = build_strategy("hash", SplitInputs(weights=(("model_a", 0.5), ("model_b", 0.5)), salt="s"))
    strategy.assign("42")                            # Assignment(variant=..., propensity=0.5)

A new strategy is a module with a class that keeps the `Strategy` protocol (router.strategies.base) and one
entry here; the config, the service and the report need no change. The report reads each phase's unit from the
phase's recorded configuration (`unit`), so it never guesses from a strategy's name.

Modules: ``hashing`` (GrowthBook's hash, bucket ranges: pure), ``base`` (Strategy, Assignment, Unit), ``split``
(hash and random).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from router.strategies.base import Assignment, Outcome, Strategy, Unit
from router.strategies.hashing import Bucket, bucket_index, bucket_ranges, choose, fnv1a32, relabel, unit_point
from router.strategies.split import HashStrategy, RandomStrategy

__all__ = [
    "STRATEGIES",
    "Assignment",
    "Bucket",
    "HashStrategy",
    "Outcome",
    "RandomStrategy",
    "SplitInputs",
    "Strategy",
    "StrategySpec",
    "Unit",
    "bucket_index",
    "bucket_ranges",
    "build_strategy",
    "choose",
    "fnv1a32",
    "relabel",
    "unit_of",
    "unit_point",
]


@dataclass(frozen=True)
class SplitInputs:
    """What building a strategy may use: the variants' normalised weights in config order, the salt, a generator.

    `moved` maps a variant stopped by a guardrail to the variant that serves its units instead (the control);
    a strategy must honour it without moving any other unit (see `relabel`).
    """

    weights: Sequence[tuple[str, float]]
    salt: str
    rng: random.Random | None = field(default=None, compare=False)
    moved: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its config name, its unit of randomisation, how to build it, one line for docs."""

    name: str
    unit: Unit
    build: Callable[[SplitInputs], Strategy]
    summary: str


def _hash(inputs: SplitInputs) -> Strategy:
    return HashStrategy(relabel(bucket_ranges(inputs.weights), inputs.moved), salt=inputs.salt)


def _random(inputs: SplitInputs) -> Strategy:
    return RandomStrategy(relabel(bucket_ranges(inputs.weights), inputs.moved), rng=inputs.rng or random.Random())


STRATEGIES: Mapping[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("hash", "user", _hash, "sticky per user: GrowthBook's hash of salt + user id picks the variant"),
        StrategySpec("random", "request", _random, "a weighted random draw per request"),
    )
}


def build_strategy(name: str, inputs: SplitInputs) -> Strategy:
    """The strategy registered as `name` (KeyError naming the known ones if there is none)."""
    try:
        spec = STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})") from None
    return spec.build(inputs)


def unit_of(name: str) -> Unit | None:
    """The unit of the strategy registered as `name`, None if there is no such strategy."""
    spec = STRATEGIES.get(name)
    return None if spec is None else spec.unit
