"""Team-draft interleaving: the merge, its coins, degraded interleaves and attribution (router/interleaving.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from router.interleaving import (
    Interleaving,
    InterleavingError,
    NoListError,
    TeamCountError,
    attribute,
    check_team_count,
    credit_positions,
    merge,
    request_coins,
    team_count_message,
    team_draft,
)

A, B = "model_a", "model_b"

# Pinned: a list must be rebuildable from its request id forever (logs, audits, other languages).
GOLDEN = [
    ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 6, "golden-1", (1, 6, 2, 7, 8, 3), "ababba"),
    ([1, 2, 3, 4, 5], [3, 1, 6, 2, 7], 5, "golden-2", (3, 1, 6, 2, 4), "babaa"),
    (
        [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
        [20, 10, 35, 30, 45, 55, 65, 75, 85, 95],
        10,
        "6f1c0a7e2b9d4c3e8a5f",
        (20, 10, 35, 30, 40, 45, 50, 55, 65, 60),
        "babaababba",
    ),
    ([1, 2], [3, 4, 5, 6, 7], 6, "golden-4", (3, 1, 4, 2, 5, 6), "bababb"),
    ([1, 1, 2, 2, 3], [2, 4, 4, 5], 5, "golden-5", (2, 1, 4, 3, 5), "babab"),
]


def _teams(letters: str) -> tuple[str, ...]:
    return tuple(A if letter == "a" else B for letter in letters)


def _random_lists(rng: np.random.Generator, catalogue: int = 30) -> tuple[list[int], list[int], int]:
    """Two lists of random lengths (0..12) over a small catalogue: overlaps, duplicates and short lists."""
    first = rng.integers(0, catalogue, rng.integers(0, 13)).tolist()
    second = rng.integers(0, catalogue, rng.integers(0, 13)).tolist()
    return first, second, int(rng.integers(0, 15))


@pytest.mark.parametrize(("first", "second", "k", "request_id", "items", "teams"), GOLDEN)
def test_team_draft_golden_lists(
    first: list[int], second: list[int], k: int, request_id: str, items: tuple[int, ...], teams: str
) -> None:
    merged = team_draft({A: first, B: second}, k, request_id)
    assert merged == Interleaving((A, B), items, _teams(teams))


def test_request_coins_follow_the_documented_sha256_spec() -> None:
    """An independent implementation of the docstring's rule: coin r = bit r % 8 of byte (r % 256) // 8 of
    sha256("team-draft:{r // 256}:{request_id}")."""
    request_id = "0123456789abcdef0000000000000001"
    coins = request_coins(request_id)
    drawn = [next(coins) for _ in range(600)]
    for r, coin in enumerate(drawn):
        digest = hashlib.sha256(f"team-draft:{r // 256}:{request_id}".encode()).digest()
        assert coin == bool((digest[(r % 256) // 8] >> (r % 8)) & 1)


def test_request_coins_are_fair_and_independent_of_each_other() -> None:
    """Over 4,000 request ids the first two coins are each heads about half the time and agree about half the
    time (binomial 99.9% bands), so neither team is favoured to pick first."""
    ids = [f"{0xABCDEF:016x}{n:016x}" for n in range(4000)]
    first = np.array([next(request_coins(i)) for i in ids])
    pairs = [request_coins(i) for i in ids]
    second = np.array([(next(c), next(c))[1] for c in pairs])
    low, high = stats.binom.ppf([0.0005, 0.9995], len(ids), 0.5)
    for count in (first.sum(), second.sum(), (first == second).sum()):
        assert low <= count <= high


def test_team_draft_is_reproducible_from_the_request_id() -> None:
    rng = np.random.default_rng(3)
    for n in range(200):
        first, second, k = _random_lists(rng)
        request_id = f"{n:032x}"
        assert team_draft({A: first, B: second}, k, request_id) == team_draft({A: first, B: second}, k, request_id)
    outcomes = {team_draft({A: [1, 2, 3], B: [4, 5, 6]}, 3, f"{n:032x}").items for n in range(64)}
    assert len(outcomes) > 1  # and the request id really matters


def test_team_draft_items_come_from_the_lists_without_duplicates_and_fill_k() -> None:
    rng = np.random.default_rng(11)
    for n in range(2000):
        first, second, k = _random_lists(rng)
        merged = team_draft({A: first, B: second}, k, f"{n:032x}")
        assert len(set(merged.items)) == len(merged.items)
        assert len(merged.items) == min(k, len(set(first) | set(second)))  # fewer only when both are exhausted
        for item, team in zip(merged.items, merged.teams, strict=True):
            assert item in (first if team == A else second)


def test_team_draft_each_pick_is_the_teams_best_unplaced_item() -> None:
    """The definition itself: position p holds its team's highest-ranked item not among positions < p."""
    rng = np.random.default_rng(12)
    for n in range(2000):
        first, second, k = _random_lists(rng)
        merged = team_draft({A: first, B: second}, k, f"{n:032x}")
        for p, (item, team) in enumerate(zip(merged.items, merged.teams, strict=True)):
            ranking = first if team == A else second
            assert item == next(i for i in ranking if i not in merged.items[:p])


def test_team_draft_balance_after_every_round() -> None:
    """While both lists have unplaced items, the teams' counts differ by at most one after every pick, and
    are equal after every second pick (the end of a round)."""
    rng = np.random.default_rng(13)
    for n in range(2000):
        k = int(rng.integers(1, 11))
        first = rng.permutation(25)[: k + int(rng.integers(0, 5))].tolist()  # >= k distinct: never exhausted
        second = rng.permutation(25)[: k + int(rng.integers(0, 5))].tolist()
        teams = team_draft({A: first, B: second}, k, f"{n:032x}").teams
        for picks in range(1, len(teams) + 1):
            difference = teams[:picks].count(A) - teams[:picks].count(B)
            assert abs(difference) <= 1
            if picks % 2 == 0:
                assert difference == 0


def test_team_draft_coin_decides_who_picks_first_in_each_round() -> None:
    """Identical lists: the first coin's team takes item 1, the other takes item 2, and so on per round."""
    ranking = [7, 8, 9, 10]
    for pattern in range(4):
        coins = [bool(pattern & 1), bool(pattern & 2)]
        merged = merge((A, B), (ranking, ranking), 4, iter(coins))
        assert merged.items == (7, 8, 9, 10)
        expected = [A if coin else B for coin in coins]
        assert merged.teams == (expected[0], B if expected[0] == A else A, expected[1], B if expected[1] == A else A)


def test_team_draft_empty_and_short_lists() -> None:
    assert team_draft({A: [], B: []}, 5, "x") == Interleaving((A, B), (), ())
    assert team_draft({A: [], B: [4, 5]}, 5, "x") == Interleaving((A, B), (4, 5), (B, B))
    assert team_draft({A: [1, 2], B: [3]}, 0, "x").items == ()
    assert team_draft({A: [1, 1, 1], B: [1]}, 3, "x").items == (1,)  # one distinct item in all


def test_team_draft_rejects_negative_k() -> None:
    with pytest.raises(InterleavingError, match="k must be >= 0"):
        team_draft({A: [1], B: [2]}, -1, "x")


def test_team_draft_degraded_serves_the_other_list() -> None:
    merged = team_draft({A: [1, 2, 2, 3, 4], B: None}, 3, "x")
    assert merged == Interleaving((A, B), (1, 2, 3), (A, A, A), degraded=True, failed=B)
    merged = team_draft({A: None, B: [9, 8]}, 3, "x")
    assert merged == Interleaving((A, B), (9, 8), (B, B), degraded=True, failed=A)
    with pytest.raises(NoListError, match="both model_a and model_b failed"):
        team_draft({A: None, B: None}, 3, "x")


def test_team_draft_refuses_other_than_two_variants_with_the_config_message() -> None:
    three = ["model_a", "model_b", "model_c"]
    message = (
        "strategy 'interleave' compares exactly 2 variants, got 3 (model_a, model_b, model_c): "
        "team-draft multileaving is not supported; run one interleaving phase per pair of variants instead"
    )
    assert team_count_message(three) == message
    with pytest.raises(TeamCountError) as caught:
        team_draft({name: [1] for name in three}, 3, "x")
    assert str(caught.value) == message
    with pytest.raises(TeamCountError, match="got 1"):
        check_team_count(["model_a"])
    check_team_count([A, B])


def test_attribute_credits_the_team_that_placed_the_item() -> None:
    """Item 3 is in both models' lists; model_b placed it (golden-2), so model_b gets its click."""
    merged = team_draft({A: [1, 2, 3, 4, 5], B: [3, 1, 6, 2, 7]}, 5, "golden-2")
    assert merged.items == (3, 1, 6, 2, 4) and merged.teams[0] == B
    credit = attribute(merged, [3])
    assert credit.clicks == ((A, 0), (B, 1))
    assert attribute(merged, [1, 2, 4]).clicks == ((A, 3), (B, 0))


def test_attribute_counts_a_position_once_and_reports_unknown_items() -> None:
    merged = Interleaving((A, B), (1, 2, 3), (A, B, A))
    credit = attribute(merged, [2, 2, 2, 1, 99, 99, 98])
    assert credit.clicks == ((A, 1), (B, 1))
    assert credit.unattributed == 2
    assert credit.of(B) == 1 and credit.of("model_c") == 0
    assert attribute(merged, []).clicks == ((A, 0), (B, 0))


def test_credit_positions_ignores_duplicates_and_out_of_range() -> None:
    merged = Interleaving((A, B), (1, 2, 3), (A, B, A))
    credit = credit_positions(merged, [0, 0, 2, 5, -1])
    assert credit.clicks == ((A, 2), (B, 0))
    assert credit.unattributed == 2


def test_attribute_marks_degraded_exposures() -> None:
    merged = team_draft({A: None, B: [5, 6]}, 2, "x")
    credit = attribute(merged, [6])
    assert credit.degraded
    assert credit.clicks == ((A, 0), (B, 1))
