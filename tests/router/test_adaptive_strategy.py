"""The adaptive strategies as the router serves them: the registry, the hot-path table, the config section."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from router.bandit import ThompsonSettings, VariantTotals, compute_epoch
from router.config import ExperimentConfig, phase_design, phase_key
from router.errors import ConfigError
from router.guardrails import GuardrailWatcher, Harm
from router.metrics import Metrics
from router.store import OutcomeStore, SQLiteBackend
from router.strategies import (
    POINTS,
    AdaptiveStrategy,
    EpochTable,
    FixedEpoch,
    SplitInputs,
    build_strategy,
    even_table,
    unit_of,
)

VARIANTS = [{"name": n, "url": f"http://{n}", "weight": 1} for n in ("model_a", "model_b")]


def config(**changes: object) -> ExperimentConfig:
    raw: dict[str, object] = {"experiment": "x", "strategy": "thompson", "salt": "s", "variants": VARIANTS}
    raw.update(changes)
    return ExperimentConfig.model_validate(raw)


def test_the_hot_path_table_assigns_exactly_as_the_bandit_core_with_its_propensity_and_epoch() -> None:
    weights = compute_epoch(
        ThompsonSettings(),
        4,
        ("model_a", "model_b"),
        (VariantTotals(1000, 100), VariantTotals(1000, 118)),
        computed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    table = EpochTable(weights.epoch, weights.variants, weights.points, "s")
    users = [f"user-{i}" for i in range(5000)]
    assert [table.assign(u) for u in users] == [weights.assign("s", u) for u in users]
    shares = {name: sum(table.assign(u).variant == name for u in users) / len(users) for name in weights.variants}
    for name in weights.variants:  # within 4 binomial standard errors of the exact propensity
        p = weights.propensity(name)
        assert abs(shares[name] - p) < 4 * (p * (1 - p) / len(users)) ** 0.5
    assert sum(table.propensity(name) for name in weights.variants) == 1.0


def test_a_stopped_variants_range_is_served_by_the_control_with_the_summed_propensity() -> None:
    table = EpochTable(2, ("a", "b", "c"), (2000, 3000, 5000), "s", moved={"b": "a"})
    seen = {table.assign(f"u{i}") for i in range(3000)}
    assert {(x.variant, x.propensity, x.epoch) for x in seen} == {("a", 0.5, 2), ("c", 0.5, 2)}
    assert table.propensity("b") == 0.0
    with pytest.raises(ValueError, match="sum to"):
        EpochTable(0, ("a", "b"), (1, 2))


def test_the_strategy_reads_the_current_table_on_every_request_sticky_within_an_epoch() -> None:
    class Switch:
        def __init__(self) -> None:
            self.table = even_table(("a", "b"), salt="s")

        def current(self) -> EpochTable:
            return self.table

    source = Switch()
    strategy = AdaptiveStrategy("epsilon_greedy", source)
    first = [strategy.assign(f"u{i}") for i in range(200)]
    assert first == [strategy.assign(f"u{i}") for i in range(200)]  # deterministic: same user, same epoch
    assert {a.epoch for a in first} == {0} and {a.propensity for a in first} == {0.5}
    source.table = EpochTable(1, ("a", "b"), (500, 9500), "s")
    second = [strategy.assign(f"u{i}") for i in range(200)]
    assert {a.epoch for a in second} == {1} and sum(a.variant == "b" for a in second) > 170
    assert strategy.unit == "user" == unit_of("thompson") == unit_of("epsilon_greedy")


def test_built_from_the_registry_without_a_keeper_it_serves_an_even_epoch_zero() -> None:
    strategy = build_strategy("thompson", SplitInputs((("a", 0.9), ("b", 0.1)), salt="s"))
    assert {strategy.assign(f"u{i}").propensity for i in range(100)} == {0.5}  # configured weights are not used
    assert even_table(("a", "b", "c")).points == (3334, 3333, 3333) and sum(even_table(["x"] * 7).points) == POINTS
    keeper_table = EpochTable(3, ("a", "b"), (100, 9900), "s")
    assert (
        build_strategy("thompson", SplitInputs((("a", 1), ("b", 1)), "s", epochs=FixedEpoch(keeper_table)))
        .assign("u")
        .epoch
        == 3
    )


def test_the_bandit_section_is_validated_and_recorded_by_the_phase() -> None:
    adaptive = config(bandit={"reward": "value", "event": "rating", "prior": {"mean": 3.0}, "update_seconds": 60})
    settings = adaptive.bandit_settings
    assert settings.reward.kind == "value" and settings.update.seconds == 60 and settings.update.exposures == 1000
    assert phase_design(adaptive)["bandit"]["event"] == "rating"
    assert phase_key(adaptive) != phase_key(config()) != phase_key(config(strategy="epsilon_greedy"))
    # poll_seconds moves nobody: same phase
    assert phase_key(config(bandit={"poll_seconds": 5})) == phase_key(config())
    refused: dict[str, tuple[dict[str, Any], str]] = {
        "under hash": ({"strategy": "hash", "bandit": {"epsilon": 0.2}}, "apply to strategies thompson"),
        "floor too high": ({"bandit": {"min_share": 0.5}, "variants": [*VARIANTS, {**VARIANTS[0], "name": "c"}]}, ">"),
        "prior of the other reward": ({"bandit": {"prior": {"alpha": 2}, "reward": "value"}}, "do not apply"),
        "never updates": ({"bandit": {"update_exposures": None}}, "never change"),
        "negative epsilon": ({"bandit": {"epsilon": -0.1}}, "epsilon"),
    }
    for changes, message in refused.values():
        with pytest.raises((ValueError, ConfigError), match=message):
            config(**changes)


def test_guardrails_are_not_judged_under_an_adaptive_strategy(tmp_path: Path) -> None:
    """Their A/B comparisons assume fixed weights; the bandit moves traffic off a failing variant itself."""
    guardrail = {"metric": "error_rate", "tolerance": {"margin": 0.02, "relative": False}, "action": "stop"}
    store = OutcomeStore(SQLiteBackend(tmp_path / "outcomes.sqlite3"))  # never opened: a judged round would fail

    async def stop(harm: Harm) -> int | None:
        raise AssertionError("nothing may be stopped")

    for strategy, judged in (("thompson", False), ("hash", True)):
        current = config(strategy=strategy, guardrails=[guardrail])

        def live(current: ExperimentConfig = current) -> tuple[ExperimentConfig, int]:
            return current, 1

        metrics = Metrics(store.stats)
        watcher = GuardrailWatcher(store, live, stop, metrics, interval=1, timeout=5)
        asyncio.run(watcher.check_once())
        rounds = [line for line in metrics.render().decode().splitlines() if line.startswith("router_guardrail_checks")]
        # A judged round is counted whatever its result (here the unopened store's "no_data" or "failed").
        assert any(not line.endswith(" 0.0") for line in rounds if "_total{" in line) is judged, rounds
