"""What every strategy is: it assigns a unit to a variant, says with what probability, and may learn.

    assignment = strategy.assign("42")      # Assignment(variant='model_a', propensity=0.5)
    strategy.unit                            # 'user': what is randomised, and so what the report analyses
    strategy.observe(feedback)               # adaptive strategies learn from outcomes; hash and random ignore it

The propensity is logged on every exposure. Analyses that reweight by it (off-policy evaluation, adaptive
designs) are only as honest as it is exact, so a strategy returns the probability it actually used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from router.interleaving import Interleaving

#: What a strategy randomises: each user once (sticky), or each request.
Unit = Literal["user", "request"]


@dataclass(frozen=True, slots=True)
class Assignment:
    """A strategy's choice for one unit: the variant, the probability with which it was chosen, and for adaptive
    strategies the weight epoch whose weights decided (None for fixed splits)."""

    variant: str
    propensity: float
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A feedback event attributed to an exposure, as a strategy sees it."""

    variant: str
    user_id: str
    event: str
    value: float | None


class Strategy(Protocol):
    """How a unit (a user, or a request) gets a variant."""

    @property
    def name(self) -> str:
        """The strategy's config name, recorded on every exposure."""

    @property
    def unit(self) -> Unit:
        """The unit of randomisation, and so the report's unit of analysis."""

    def assign(self, unit_id: str) -> Assignment:
        """The variant that serves `unit_id`, with the probability of that choice."""

    def observe(self, outcome: Outcome) -> None:
        """Learn from an outcome (adaptive strategies); the others do nothing."""


#: How a fan-out strategy merges the variants' lists: every variant in config order -> its ranked items, or None
#: when its backend failed; k; the request id (seeds any randomness, so the list can be rebuilt). Raises
#: router.interleaving.NoListError when there is nothing to serve.
Merge = Callable[[Mapping[str, Sequence[int] | None], int, str], Interleaving]


@dataclass(frozen=True)
class FanOut:
    """A strategy that asks every variant's backend for each request and serves one merged list.

    The service fans out when a strategy's spec has one (never by the strategy's name): it asks all backends
    concurrently, merges with `merge`, answers as `label`, and records which variant placed each position.

    `check_variants(names)` raises ValueError, with the message the config shows, for variants it cannot merge.
    `method` names the merge in the phase's recorded configuration.
    """

    label: str
    method: str
    merge: Merge
    check_variants: Callable[[Sequence[str]], None]
