"""`interleave`: every user sees one list merged from both variants' lists by team draft (router.interleaving).

>>> strategy = InterleaveStrategy()
>>> strategy.assign("42")
Assignment(variant='interleaved', propensity=1.0, epoch=None)

Nobody is split between variants, so assignment names no model: it says the request is interleaved, with
certainty. The merge (and so each position's team) is the fan-out's job, registered with the strategy
(router.strategies.INTERLEAVE_FAN_OUT), because it needs both backends' answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.strategies.base import Assignment, Outcome, Unit

#: What an interleaved answer and its exposure say in `variant`.
INTERLEAVED = "interleaved"


@dataclass(frozen=True)
class InterleaveStrategy:
    """Every request of every user is interleaved; the unit of analysis is the user (one vote per user)."""

    label: str = INTERLEAVED
    _assignment: Assignment = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_assignment", Assignment(self.label, 1.0))

    @property
    def name(self) -> str:
        return "interleave"

    @property
    def unit(self) -> Unit:
        return "user"

    def assign(self, unit_id: str) -> Assignment:
        return self._assignment

    def observe(self, outcome: Outcome) -> None:
        """Interleaving learns nothing: the report compares the teams."""
