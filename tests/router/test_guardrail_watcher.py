"""The guardrail stop in the service (who moves, what survives a restart or a reload) and the watcher's bounds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from router.config import build_config
from router.errors import NoDataError, NotStoppedError
from router.guardrails import GuardrailWatcher, Harm
from router.metrics import Metrics
from router.service import RouterService
from router.store import SQLiteBackend
from router.store.reader import PhaseSnapshot
from tests.report.test_build import HASH_WEIGHTS, generated_store
from tests.router.conftest import SALT, Backend, settings_for, write_config

USERS = [f"user-{i}" for i in range(2000)]


def three_variants(
    backends: dict[str, Backend], names: tuple[str, ...] = ("model_a", "model_b", "model_c")
) -> dict[str, Any]:
    url = backends["model_a"].url  # the variants may share a backend: only assignment matters here
    return {
        "experiment": "rec-ab",
        "strategy": "hash",
        "salt": SALT,
        "variants": [{"name": name, "url": url, "weight": 1} for name in names],
        "guardrails": [{"metric": "error_rate", "tolerance": {"margin": 0.05}, "action": "stop"}],
    }


def harm(variant: str, phase: int) -> Harm:
    return Harm(variant, "error_rate", "stop", phase, "error_rate worse by +30 pp [20, 40] (tolerance 5 pp)", 1.7e9)


def test_a_stop_moves_only_the_stopped_variants_users_and_outlives_restarts_and_reloads(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    settings = settings_for(tmp_path, three_variants(backends))

    async def first_run() -> None:
        service = RouterService(settings)
        await service.start()
        try:
            before = {user: service.live.strategy.assign(user).variant for user in USERS}
            assert await service.stop_variant(harm("model_c", phase=1)) == 2
            assert await service.stop_variant(harm("model_b", phase=1)) is None  # judged on a phase now gone
            after = {user: service.live.strategy.assign(user) for user in USERS}
            for user, variant in before.items():
                expected = "model_a" if variant == "model_c" else variant
                assert after[user].variant == expected  # model_b's users stay put
            control = next(a for a in after.values() if a.variant == "model_a")
            shares = {name: sum(v == name for v in before.values()) / len(USERS) for name in ("model_a", "model_c")}
            assert control.propensity == pytest.approx(shares["model_a"] + shares["model_c"], abs=0.03)
            assert service.describe()["stopped"]["model_c"]["guardrail"] == "error_rate"
            assert (await service.reload()).phase == 2  # the same YAML: the stop stays
            assert "model_c" in service.live.stops
        finally:
            await service.stop()

    async def second_run() -> None:
        service = RouterService(settings)
        await service.start()
        try:
            assert service.live.phase == 2 and set(service.live.stops) == {"model_c"}  # a restart keeps it
            assert all(service.live.strategy.assign(u).variant != "model_c" for u in USERS)
            with pytest.raises(NotStoppedError):
                await service.resume("model_b")
            write_config(settings.config_path, three_variants(backends, ("model_a", "model_b")))
            result = await service.reload()  # model_c left the config: nothing to stop any more
            assert (result.phase, service.live.stops) == (3, {})
        finally:
            await service.stop()

    asyncio.run(first_run())
    asyncio.run(second_run())


class BlockingStore:
    """A store whose snapshot blocks until released, then finds no data."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    @contextmanager
    def snapshot(self) -> Iterator[PhaseSnapshot]:
        self.entered.set()
        self.release.wait(30)
        raise NoDataError("nothing yet")
        yield  # pragma: no cover - never reached: a generator context manager needs a yield


def test_watcher_bounds_a_slow_round_and_never_runs_two_at_once(backends: dict[str, Backend]) -> None:
    config = build_config(three_variants(backends))
    metrics = Metrics(
        lambda: {"written": {}, "lost": {}, "duplicates": {}, "errors": {}, "pending": 0, "max_pending": 0}
    )
    store = BlockingStore()
    stops: list[Harm] = []

    async def stop(found: Harm) -> None:
        stops.append(found)

    async def scenario() -> None:
        watcher = GuardrailWatcher(store, lambda: (config, 1), stop, metrics, interval=0.01, timeout=0.05)
        assert await watcher.check_once() == pytest.approx(0.05)  # the round overran: timed out, still running
        assert store.entered.is_set()
        assert await watcher.check_once() == 0.0  # and no second round starts while it runs
        store.release.set()
        assert watcher._running is not None  # the round still in flight
        await asyncio.wait({watcher._running})
        assert await watcher.check_once() == 0.0

    asyncio.run(scenario())

    def count(result: str) -> float:
        return metrics.registry.get_sample_value("router_guardrail_checks_total", {"result": result}) or 0.0

    assert (count("timeout"), count("busy"), count("no_data")) == (1.0, 1.0, 1.0)
    assert stops == []


def test_watcher_skips_a_config_without_guardrails(backends: dict[str, Backend]) -> None:
    config = build_config({**three_variants(backends), "guardrails": []})
    metrics = Metrics(
        lambda: {"written": {}, "lost": {}, "duplicates": {}, "errors": {}, "pending": 0, "max_pending": 0}
    )
    store = BlockingStore()

    async def never(found: Harm) -> None:
        raise AssertionError("nothing to stop")

    watcher = GuardrailWatcher(store, lambda: (config, 1), never, metrics, interval=0.01, timeout=0.05)
    assert asyncio.run(watcher.check_once()) == 0.0
    assert not store.entered.is_set()  # not even a snapshot: the report's libraries are never loaded


@pytest.mark.parametrize("action", ["alert", "stop"])
def test_watcher_alerts_once_or_asks_for_a_stop_on_a_harmful_guardrail(
    tmp_path: Path, backends: dict[str, Backend], action: str
) -> None:
    guardrails = [{"metric": "error_rate", "tolerance": {"margin": 0.02}, "action": action}]
    plan = {"analysis": {"tuning": 1000}, "guardrails": guardrails}
    path = tmp_path / "outcomes.sqlite3"
    users = {"model_a": 300, "model_b": 300}
    generated_store(path, users, {"model_a": 0.1, "model_b": 0.1}, HASH_WEIGHTS, plan, errors={"model_b": 0.3})
    config = build_config({**three_variants(backends, ("model_a", "model_b")), "guardrails": guardrails})
    metrics = Metrics(
        lambda: {"written": {}, "lost": {}, "duplicates": {}, "errors": {}, "pending": 0, "max_pending": 0}
    )
    stops: list[Harm] = []

    async def stop(found: Harm) -> None:
        stops.append(found)

    async def rounds() -> None:
        watcher = GuardrailWatcher(SQLiteBackend(path), lambda: (config, 1), stop, metrics, interval=1, timeout=60)
        for _ in range(2):
            await watcher.check_once()

    asyncio.run(rounds())

    labels = {"variant": "model_b", "guardrail": "error_rate"}
    assert metrics.registry.get_sample_value("router_guardrail_state", labels) == 1
    alerts = metrics.registry.get_sample_value("router_guardrail_alerts_total", labels) or 0.0
    if action == "alert":
        assert (alerts, stops) == (1.0, [])  # logged and counted once while it stays harmful, nothing else
    else:
        assert alerts == 0.0 and len(stops) == 2  # the service ignores the second: the phase has changed by then
        assert (stops[0].variant, stops[0].guardrail, stops[0].phase) == ("model_b", "error_rate", 1)
        assert stops[0].detail.startswith("error_rate worse by +") and "(tolerance 2 pp)" in stops[0].detail
