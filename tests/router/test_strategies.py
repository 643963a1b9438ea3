"""Assignment: GrowthBook-compatible hashing pinned by golden values, weights honoured statistically."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from router.strategies import (
    STRATEGIES,
    Assignment,
    Bucket,
    HashStrategy,
    Outcome,
    RandomStrategy,
    SplitInputs,
    bucket_ranges,
    build_strategy,
    choose,
    fan_out_of,
    fnv1a32,
    unit_of,
    unit_point,
)

# Golden values copied from GrowthBook's shared SDK test cases, growthbook/growthbook-python tests/cases.json
# (the same file ships with every GrowthBook SDK): the "hash" cases with version 2, as (seed, value, point).
GROWTHBOOK_V2_HASHES = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
]

# Same file, "getBucketRange" cases with full coverage: (weights, ranges).
GROWTHBOOK_BUCKET_RANGES = [
    ([0.5, 0.5], [(0, 0.5), (0.5, 1)]),
    ([0.25, 0.25, 0.25, 0.25], [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ([0.4, 0.6], [(0, 0.4), (0.4, 1)]),
    ([0.2, 0.3, 0.5], [(0, 0.2), (0.2, 0.5), (0.5, 1)]),
]

# Same file, "chooseVariation" cases with full ranges: (point, ranges, chosen index).
GROWTHBOOK_CHOICES = [
    (0.2, [(0, 0.5), (0.5, 1)], 0),
    (0.4, [(0, 0.5), (0.5, 1)], 0),
    (0.6, [(0, 0.5), (0.5, 1)], 1),
    (0.8, [(0, 0.5), (0.5, 1)], 1),
    (0, [(0, 0.5), (0.5, 1)], 0),
    (0.5, [(0, 0.5), (0.5, 1)], 1),
    (0.5, [(0, 0.5), (0.5, 0.5), (0.5, 1)], 2),  # "zero range": an empty bucket never gets anyone
]

# Same file, "stickyBucket"/"feature" cases that run hash + buckets end to end with hashVersion 2:
# (seed, user, weights, bucket point, chosen index).
GROWTHBOOK_ASSIGNMENTS = [
    ("feature-exp", "d123", [0.3334, 0.3333, 0.3333], 0.6468, 1),
    ("feature-exp", "i123", [0.3334, 0.3333, 0.3333], 0.9943, 2),
    ("feature", "123", [0.1, 0.9], 0.5231, 1),
]


@pytest.mark.parametrize(("salt", "user_id", "point"), GROWTHBOOK_V2_HASHES)
def test_unit_point_matches_growthbook_v2(salt: str, user_id: str, point: float) -> None:
    assert unit_point(salt, user_id) == point


def test_fnv1a32_known_vectors() -> None:
    # The FNV-1a reference vectors (offset basis for "", then "a" and "foobar").
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


@pytest.mark.parametrize(("weights", "ranges"), GROWTHBOOK_BUCKET_RANGES)
def test_bucket_ranges_match_growthbook(weights: list[float], ranges: list[tuple[float, float]]) -> None:
    buckets = bucket_ranges([(f"v{i}", w) for i, w in enumerate(weights)])
    assert [b.start for b in buckets] == pytest.approx([start for start, _ in ranges])
    assert [b.end for b in buckets] == pytest.approx([end for _, end in ranges])


@pytest.mark.parametrize(("point", "ranges", "index"), GROWTHBOOK_CHOICES)
def test_choose_matches_growthbook(point: float, ranges: list[tuple[float, float]], index: int) -> None:
    buckets = [Bucket(f"v{i}", start, end) for i, (start, end) in enumerate(ranges)]
    assert choose(point, buckets) == f"v{index}"


@pytest.mark.parametrize(("salt", "user_id", "weights", "point", "index"), GROWTHBOOK_ASSIGNMENTS)
def test_hash_strategy_agrees_with_growthbook(
    salt: str, user_id: str, weights: list[float], point: float, index: int
) -> None:
    assert unit_point(salt, user_id) == point
    strategy = HashStrategy(bucket_ranges([(f"v{i}", w) for i, w in enumerate(weights)]), salt=salt)
    assert strategy.assign(user_id).variant == f"v{index}"


def test_bucket_ranges_normalise_any_scale() -> None:
    assert bucket_ranges([("a", 30), ("b", 70)]) == bucket_ranges([("a", 0.3), ("b", 0.7)])
    assert bucket_ranges([("a", 1), ("b", 1), ("c", 1)])[-1].end == 1.0


@pytest.mark.parametrize("weights", [[("a", -1.0), ("b", 2.0)], [("a", 0.0), ("b", 0.0)], []])
def test_bucket_ranges_refuse_unusable_weights(weights: list[tuple[str, float]]) -> None:
    with pytest.raises(ValueError, match=r"weight|variants"):
        bucket_ranges(weights)


def test_zero_weight_variant_gets_nobody() -> None:
    strategy = HashStrategy(bucket_ranges([("a", 1), ("off", 0), ("b", 1)]), salt="s")
    assigned = Counter(strategy.assign(str(user)).variant for user in range(5_000))
    assert assigned["off"] == 0
    assert set(assigned) == {"a", "b"}


def _within_binomial(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """|count - np| <= sigmas * sqrt(np(1-p)): a false alarm chance of about 7e-6 for a fair split."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_hash_strategy_30_70_lands_within_binomial_tolerance() -> None:
    n = 20_000
    strategy = HashStrategy(bucket_ranges([("model_a", 30), ("model_b", 70)]), salt="rec-ab-1")
    assigned = Counter(strategy.assign(f"user-{i}").variant for i in range(n))
    # 4.5 sigma of Binomial(20000, 0.3) is 292 users: 5708..6292 pass; a bug that gave 50/50 would not.
    assert _within_binomial(assigned["model_a"], n, 0.3), assigned
    assert assigned["model_a"] + assigned["model_b"] == n


def test_hash_strategy_handles_n_variants() -> None:
    n = 20_000
    weights = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    strategy = HashStrategy(bucket_ranges(weights), salt="abn")
    assigned = Counter(strategy.assign(str(i)).variant for i in range(n))
    for name, weight in weights:
        assert _within_binomial(assigned[name], n, weight / 10), assigned


def test_random_strategy_30_70_lands_within_binomial_tolerance() -> None:
    n = 20_000
    strategy = RandomStrategy(bucket_ranges([("model_a", 30), ("model_b", 70)]), rng=random.Random(7))
    assigned = Counter(strategy.assign("same-user").variant for _ in range(n))
    assert _within_binomial(assigned["model_a"], n, 0.3), assigned


def test_random_strategy_is_reproducible_with_a_seed() -> None:
    buckets = bucket_ranges([("a", 1), ("b", 1)])
    one, two = RandomStrategy(buckets, rng=random.Random(3)), RandomStrategy(buckets, rng=random.Random(3))
    first = [one.assign("u").variant for _ in range(50)]
    assert first == [two.assign("u").variant for _ in range(50)]
    assert set(first) == {"a", "b"}  # per request, not per user


def test_hash_strategy_is_sticky_and_stateless() -> None:
    weights = [("model_a", 50), ("model_b", 50)]
    first = build_strategy("hash", SplitInputs(weights, salt="rec-ab-1"))
    second = build_strategy("hash", SplitInputs(weights, salt="rec-ab-1"))  # another replica, no shared state
    users = [f"u{i}" for i in range(2_000)]
    assert [first.assign(u) for u in users] == [second.assign(u) for u in users]
    assert [first.assign(u) for u in users] == [first.assign(u) for u in users]


def test_changing_the_salt_reshuffles_users() -> None:
    weights = [("model_a", 50), ("model_b", 50)]
    before = build_strategy("hash", SplitInputs(weights, salt="rec-ab-1"))
    after = build_strategy("hash", SplitInputs(weights, salt="rec-ab-2"))
    n = 10_000
    moved = sum(before.assign(str(u)) != after.assign(str(u)) for u in range(n))
    # Independent 50/50 splits move half the users: Binomial(10000, 0.5), 4.5 sigma = 225.
    assert abs(moved - n / 2) <= 4.5 * math.sqrt(n * 0.25)


def test_the_hash_propensity_is_the_share_of_the_hash_grid_each_variant_owns() -> None:
    strategy = HashStrategy(bucket_ranges([("a", 1), ("b", 1), ("c", 1)]), salt="s")
    owned = Counter(choose(k / 10_000, strategy.buckets) for k in range(10_000))  # every point the hash can give
    for name in "abc":
        user = next(f"u{i}" for i in range(1_000) if strategy.assign(f"u{i}").variant == name)
        assert strategy.assign(user) == Assignment(name, owned[name] / 10_000)
    assert owned["a"] == 3_334  # a third is not representable on the grid: the first range holds one more point


def test_the_random_propensity_is_the_weight_share() -> None:
    strategy = RandomStrategy(bucket_ranges([("a", 30), ("b", 70)]), rng=random.Random(1))
    seen = {assignment.variant: assignment.propensity for assignment in (strategy.assign("u") for _ in range(200))}
    assert seen == pytest.approx({"a": 0.3, "b": 0.7})


def test_each_registered_strategy_declares_its_unit_and_builds_from_the_registry() -> None:
    inputs = SplitInputs((("a", 0.5), ("b", 0.5)), salt="s", rng=random.Random(0))
    for name, spec in STRATEGIES.items():
        strategy = build_strategy(name, inputs)
        assert strategy.name == name and strategy.unit == spec.unit == unit_of(name)
        strategy.observe(Outcome("a", "u1", "click", None))  # fixed splits accept outcomes and ignore them
        # A fan-out strategy's answers carry its label; every other strategy names one of the variants.
        fan_out = spec.fan_out
        assert strategy.assign("u1").variant in ({"a", "b"} if fan_out is None else {fan_out.label})
    assert unit_of("hash") == "user" and unit_of("random") == "request" and unit_of("nope") is None
    with pytest.raises(KeyError, match="unknown strategy 'nope'"):
        build_strategy("nope", inputs)


def test_interleave_is_registered_with_a_fan_out_that_merges_by_team_draft() -> None:
    spec = STRATEGIES["interleave"]
    assert spec.unit == "user" and fan_out_of("interleave") is spec.fan_out is not None
    assert fan_out_of("hash") is None and fan_out_of("nope") is None
    assert build_strategy("interleave", SplitInputs((("a", 1.0), ("b", 0.0)), salt="s")).assign("u") == Assignment(
        "interleaved", 1.0
    )
    merged = spec.fan_out.merge({"model_a": [1, 2, 3], "model_b": [3, 4, 1]}, 4, "r-1")
    assert (merged.items, merged.teams) == ((3, 1, 4, 2), ("model_b", "model_a", "model_b", "model_a"))  # the core's
    with pytest.raises(ValueError, match="compares exactly 2 variants"):
        spec.fan_out.check_variants(["a", "b", "c"])


@pytest.mark.parametrize("name", ["hash", "random"])
def test_a_moved_variant_is_served_by_the_control_and_nobody_else_moves(name: str) -> None:
    weights = (("model_a", 2.0), ("model_b", 1.0), ("model_c", 1.0))
    before = build_strategy(name, SplitInputs(weights, "s", random.Random(3)))
    after = build_strategy(name, SplitInputs(weights, "s", random.Random(3), moved={"model_c": "model_a"}))
    users = [f"user-{i}" for i in range(3000)]

    moved = [(before.assign(u), after.assign(u)) for u in users]

    for old, new in moved:
        assert new.variant == ("model_a" if old.variant == "model_c" else old.variant)
    propensities = {new.variant: new.propensity for _, new in moved}
    assert propensities["model_a"] == pytest.approx(0.75, abs=1e-4)  # its range and model_c's
    assert propensities["model_b"] == pytest.approx(0.25, abs=1e-4)
    assert "model_c" not in propensities
