"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008): one list merged from two rankers, and its credit.

Each round a coin decides which team picks first; then each team adds its highest-ranked item that is not
yet in the merged list. Every position remembers the team that placed it, and a click is credited to that
team - so an item both models ranked counts for whichever placed it (the standard rule).

    >>> merged = team_draft({"model_a": [1, 2, 3], "model_b": [3, 4, 1]}, k=4, request_id="r-1")
    >>> merged.items, merged.teams
    ((3, 1, 4, 2), ('model_b', 'model_a', 'model_b', 'model_a'))
    >>> attribute(merged, clicked_items=[4, 4, 9]).clicks
    (('model_a', 0), ('model_b', 1))

The coins come from SHA-256 of the request id (never Python's `hash()`, which is salted per process), so
any process, in any language, rebuilds the list from the request id and the two input lists:
coin `r` is bit `r % 8` of byte `(r % 256) // 8` of `sha256(f"team-draft:{r // 256}:{request_id}")`,
and a 1 means the first variant (config order) picks first in that round.

More than two variants are refused (`check_team_count` gives the message a config validator shows):
team-draft multileaving (Schuth et al. 2014) exists, but with k = 10 three teams get about three slots
each, the analysis becomes N(N-1)/2 corrected pairwise tests, and every request waits for the slowest of
N backends. Run pairwise interleaving phases instead. docs/interleaving.md has the reasoning.

Errors (all `InterleavingError`, a ValueError):

    InterleavingError
     ├── TeamCountError   not exactly two variants (a config error: refuse the config)
     └── NoListError      both lists are missing (the router answers with its usual bounded backend error)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

TEAMS = 2
_COIN_DOMAIN = "team-draft"


class InterleavingError(ValueError):
    """An interleave that cannot be built; the message says why."""


class TeamCountError(InterleavingError):
    """Team draft takes exactly two variants."""


class NoListError(InterleavingError):
    """Neither variant returned a list: there is nothing to serve."""


@dataclass(frozen=True)
class Interleaving:
    """A merged list: `items[p]` was placed by team `teams[p]` (a variant name).

    `degraded` means one backend failed (`failed` names it) and the list is the other's alone: the exposure
    counts toward the failing model's availability, never as a preference vote.
    """

    variants: tuple[str, str]
    items: tuple[int, ...]
    teams: tuple[str, ...]
    degraded: bool = False
    failed: str | None = None


@dataclass(frozen=True)
class Credit:
    """Clicks credited to each team of one exposure, in config order; `unattributed` clicks hit no shown item."""

    clicks: tuple[tuple[str, int], ...]
    unattributed: int
    degraded: bool

    def of(self, team: str) -> int:
        """The credited clicks of `team` (0 for a team that is not in this exposure)."""
        return next((count for name, count in self.clicks if name == team), 0)


def team_count_message(variants: Sequence[str]) -> str:
    """What a config validator says when strategy `interleave` is given anything but two variants."""
    names = ", ".join(variants) or "none"
    return (
        f"strategy 'interleave' compares exactly {TEAMS} variants, got {len(variants)} ({names}): "
        "team-draft multileaving is not supported; run one interleaving phase per pair of variants instead"
    )


def check_team_count(variants: Sequence[str]) -> None:
    """Raise TeamCountError (with `team_count_message`) unless there are exactly two variants."""
    if len(variants) != TEAMS:
        raise TeamCountError(team_count_message(variants))


def request_coins(request_id: str) -> Iterator[bool]:
    """The endless coin sequence of one request (see the module docstring); True: the first variant picks first.

    >>> coins = request_coins("r-1")
    >>> [next(coins) for _ in range(4)]
    [False, False, False, True]
    """
    block = 0
    while True:
        digest = hashlib.sha256(f"{_COIN_DOMAIN}:{block}:{request_id}".encode()).digest()
        for byte in digest:
            for bit in range(8):
                yield bool((byte >> bit) & 1)
        block += 1


def team_draft(ranked: Mapping[str, Sequence[int] | None], k: int, request_id: str) -> Interleaving:
    """Merge the two variants' ranked lists (in config order; None = that backend failed) into k items.

    Returns fewer than k items only when both lists are exhausted. Duplicates inside one list and items both
    lists hold are placed once. One list missing gives the other's first k (deduplicated), marked degraded.
    """
    check_team_count(list(ranked))
    (first, first_list), (second, second_list) = ranked.items()
    if first_list is None:
        if second_list is None:
            raise NoListError(f"no list to interleave: both {first} and {second} failed")
        return _alone((first, second), second, second_list, k, failed=first)
    if second_list is None:
        return _alone((first, second), first, first_list, k, failed=second)
    return merge((first, second), (first_list, second_list), k, request_coins(request_id))


def _alone(variants: tuple[str, str], survivor: str, ranking: Sequence[int], k: int, *, failed: str) -> Interleaving:
    """The degraded interleave: the surviving list's first k distinct items, all placed by the survivor."""
    if k < 0:
        raise InterleavingError(f"k must be >= 0, got {k}")
    items = tuple(dict.fromkeys(ranking))[:k]
    return Interleaving(variants, items, (survivor,) * len(items), degraded=True, failed=failed)


def merge(
    variants: tuple[str, str], lists: tuple[Sequence[int], Sequence[int]], k: int, coins: Iterator[bool]
) -> Interleaving:
    """Team draft with the coins given (True: the first variant picks first in that round); `team_draft` passes
    the request's coins, a simulation may pass a fixed pattern.

    A coin is drawn only when both teams have placed the same number of items (the start of a round) and both
    still have an unplaced item; once one list is exhausted the other fills the remaining positions.
    """
    if k < 0:
        raise InterleavingError(f"k must be >= 0, got {k}")
    cursor = [0, 0]
    sizes = [0, 0]
    placed: set[int] = set()
    items: list[int] = []
    teams: list[str] = []

    def next_unplaced(team: int) -> int | None:
        ranking = lists[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in placed:
            cursor[team] += 1
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(items) < k:
        candidates = (next_unplaced(0), next_unplaced(1))
        if candidates[0] is None and candidates[1] is None:
            break
        if candidates[1] is None:
            team = 0
        elif candidates[0] is None:
            team = 1
        elif sizes[0] != sizes[1]:
            team = 0 if sizes[0] < sizes[1] else 1
        else:
            team = 0 if next(coins) else 1
        item = candidates[team]
        assert item is not None  # the team chosen above has an unplaced item
        placed.add(item)
        items.append(item)
        teams.append(variants[team])
        sizes[team] += 1
    return Interleaving(variants, tuple(items), tuple(teams))


def attribute(interleaving: Interleaving, clicked_items: Iterable[int]) -> Credit:
    """Credit each clicked item to the team of its position; a position clicked twice counts once.

    Clicks on items that were not shown are counted as `unattributed` (each distinct item once). A degraded
    interleave still says whose list earned the clicks, but its `degraded` flag keeps it out of the preference.
    """
    position = {item: index for index, item in enumerate(interleaving.items)}
    clicked_positions: set[int] = set()
    unattributed: set[int] = set()
    for item in clicked_items:
        if item in position:
            clicked_positions.add(position[item])
        else:
            unattributed.add(item)
    return credit_positions(interleaving, clicked_positions, unattributed=len(unattributed))


def credit_positions(interleaving: Interleaving, clicked_positions: Iterable[int], *, unattributed: int = 0) -> Credit:
    """Credit by 0-based position (for a store that logs positions); out-of-range positions are unattributed."""
    distinct = set(clicked_positions)
    shown = {p for p in distinct if 0 <= p < len(interleaving.teams)}
    counts = dict.fromkeys(interleaving.variants, 0)
    for p in shown:
        counts[interleaving.teams[p]] += 1
    return Credit(tuple(counts.items()), unattributed + len(distinct - shown), interleaving.degraded)
