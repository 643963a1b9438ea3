"""Strategies by name: the registry the config validates against and the service builds from.

    spec = STRATEGIES["hash"]                        # its unit and how to build it
    strategy = build_strategy("hash", SplitInputs(weights=(("model_a", 0.5), ("model_b", 0.5)), salt="s"))
    strategy.assign("42")                            # Assignment(variant=..., propensity=0.5)

A new strategy is a module with a class that keeps the `Strategy` protocol (router.strategies.base) and one
entry here; the config, the service and the report need no change. The report reads each phase's unit from the
phase's recorded configuration (`unit`), so it never guesses from a strategy's name.

A strategy whose spec has a `fan_out` (FanOut: a label, a merge, a variant check) is served by asking every
variant's backend and merging their lists; the service learns that from the spec, so a later multi-backend
strategy plugs in the same way.

Modules: ``hashing`` (GrowthBook's hash, bucket ranges: pure), ``base`` (Strategy, Assignment, Unit, FanOut),
``split`` (hash and random), ``interleave`` (team-draft interleaving's strategy), ``adaptive`` (thompson and
epsilon_greedy, served from the weight epoch an epoch keeper publishes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from router.interleaving import check_team_count, team_draft
from router.strategies.adaptive import (
    ADAPTIVE_STRATEGIES,
    AdaptiveStrategy,
    EpochSource,
    EpochTable,
    FixedEpoch,
    even_table,
)
from router.strategies.base import Assignment, FanOut, Merge, Outcome, Strategy, Unit
from router.strategies.hashing import (
    POINTS,
    Bucket,
    bucket_index,
    bucket_ranges,
    choose,
    epoch_point,
    epoch_salt,
    fnv1a32,
    relabel,
    unit_point,
)
from router.strategies.interleave import INTERLEAVED, InterleaveStrategy
from router.strategies.split import HashStrategy, RandomStrategy

__all__ = [
    "ADAPTIVE_STRATEGIES",
    "INTERLEAVED",
    "INTERLEAVE_FAN_OUT",
    "POINTS",
    "STRATEGIES",
    "AdaptiveStrategy",
    "Assignment",
    "Bucket",
    "EpochSource",
    "EpochTable",
    "FanOut",
    "FixedEpoch",
    "HashStrategy",
    "InterleaveStrategy",
    "Merge",
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
    "epoch_point",
    "epoch_salt",
    "even_table",
    "fan_out_of",
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
    epochs: EpochSource | None = field(default=None, compare=False)
    """Adaptive strategies: where the current weight epoch is read (the router's epoch keeper); None builds
    a fixed even epoch 0."""


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its config name, its unit of randomisation, how to build it, one line for docs."""

    name: str
    unit: Unit
    build: Callable[[SplitInputs], Strategy]
    summary: str
    fan_out: FanOut | None = None
    """Set for a strategy that asks every variant per request and merges their lists (interleave)."""


def _hash(inputs: SplitInputs) -> Strategy:
    return HashStrategy(relabel(bucket_ranges(inputs.weights), inputs.moved), salt=inputs.salt)


def _random(inputs: SplitInputs) -> Strategy:
    return RandomStrategy(relabel(bucket_ranges(inputs.weights), inputs.moved), rng=inputs.rng or random.Random())


def _interleave(inputs: SplitInputs) -> Strategy:
    return InterleaveStrategy()


def _adaptive(name: str) -> Callable[[SplitInputs], Strategy]:
    def build(inputs: SplitInputs) -> Strategy:
        source = inputs.epochs
        if source is None:
            source = FixedEpoch(even_table([variant for variant, _ in inputs.weights], 0, inputs.salt, inputs.moved))
        return AdaptiveStrategy(name, source)

    return build


#: Team-draft interleaving of exactly two variants (router.interleaving), answered as "interleaved".
INTERLEAVE_FAN_OUT = FanOut(INTERLEAVED, "team-draft", team_draft, check_team_count)

STRATEGIES: Mapping[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("hash", "user", _hash, "sticky per user: GrowthBook's hash of salt + user id picks the variant"),
        StrategySpec("random", "request", _random, "a weighted random draw per request"),
        StrategySpec(
            "interleave",
            "user",
            _interleave,
            "one list per request merged from both variants' lists by team draft (weights are not used)",
            fan_out=INTERLEAVE_FAN_OUT,
        ),
        StrategySpec(
            "thompson",
            "user",
            _adaptive("thompson"),
            "Thompson sampling: each weight epoch gives every variant the posterior probability that it is best "
            "(with a floor, `bandit.min_share`), sticky per user within the epoch; configured weights are not used",
        ),
        StrategySpec(
            "epsilon_greedy",
            "user",
            _adaptive("epsilon_greedy"),
            "epsilon-greedy: each weight epoch gives 1 - `bandit.epsilon` to the best posterior mean and spreads "
            "epsilon evenly (with a floor), sticky per user within the epoch; configured weights are not used",
        ),
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


def fan_out_of(name: str) -> FanOut | None:
    """The fan-out of the strategy registered as `name`: None for a single-variant strategy or an unknown name."""
    spec = STRATEGIES.get(name)
    return None if spec is None else spec.fan_out
