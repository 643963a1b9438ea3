"""Fixtures of the fault-and-abuse suite: the real model servers as processes, and routers started per test.

The two model servers run for the whole session (start-up costs a second each); a test that kills, stops or
hangs one gets it back healthy before the next test starts (the `models` fixture checks and restarts).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from abtest.processes import free_port
from recsys.training import MODEL_NAMES
from tests.reliability.observe import count, store_counters
from tests.reliability.recorders import Canary, Received, Recorder
from tests.reliability.services import Service, router_service, store_path
from tests.router.conftest import wait_until
from tests.support.fake_model import FakeModelControl, create_fake_model
from tests.support.servers import serve

SALT = "reliability-salt"
WEIGHTS = [("model_a", 50.0), ("model_b", 50.0)]
USERS = [f"user-{i}" for i in range(400)]
ADMIN_TOKEN = "reliability-admin-token"

RouterFactory = Callable[..., Service]


@pytest.fixture(scope="session")
def model_servers(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    """model_a and model_b (`python -m model_a|model_b`) on fixed free ports, trained artefacts from `models_dir`."""
    logs = tmp_path_factory.mktemp("model-logs")
    services = {
        name: Service(name, free_port(), logs / f"{name}.log", {"MODELS_DIR": str(models_dir)}) for name in MODEL_NAMES
    }
    try:
        for service in services.values():
            service.start()
        yield services
    finally:
        for service in services.values():
            service.stop()


@pytest.fixture
def models(model_servers: dict[str, Service]) -> dict[str, Service]:
    """The real model servers, healthy at the start of the test (restarted if an earlier test broke one)."""
    for service in model_servers.values():
        if service.alive():
            service.signal(signal.SIGCONT)  # in case a test left it stopped
        if not service.healthy():
            service.stop()
            service.start()
    return model_servers


def experiment(urls: dict[str, str], **changes: Any) -> dict[str, Any]:
    """A 50/50 hash experiment over `urls`, with the short timeouts a test can wait out; `changes` replace fields."""
    raw: dict[str, Any] = {
        "experiment": "rec-ab",
        "strategy": "hash",
        "salt": SALT,
        "variants": [{"name": name, "url": url, "weight": 50} for name, url in urls.items()],
        "timeouts": {"connect": 0.5, "read": 1.0, "pool": 0.5},
    }
    raw.update(changes)
    return raw


def urls_of(services: dict[str, Service]) -> dict[str, str]:
    return {name: service.url for name, service in services.items()}


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[RouterFactory]:
    """`start_router(config, env=..., name=...)`: a started `python -m router`; stopped at the end if still up."""
    started: list[Service] = []

    def start(config: dict[str, Any], *, env: dict[str, str] | None = None, name: str = "router") -> Service:
        router = router_service(tmp_path, free_port(), config, env=env, name=name)
        started.append(router)
        router.start(timeout=30)
        return router

    yield start
    for router in started:
        router.stop()


@dataclass
class Guarded:
    """A router (`python -m router`) whose only backends are two recording stand-ins, next to a canary."""

    router: Service
    backends: dict[str, Recorder]
    canary: Canary

    def recommendations(self) -> list[Received]:
        return [r for recorder in self.backends.values() for r in recorder.recommendations()]

    def settled_exposures(self) -> int:
        """Exposure rows once everything queued is written."""
        wait_until(lambda: store_counters(self.router.url)["pending"] == 0, what="the queue to drain")
        return count(store_path(self.router), "SELECT COUNT(*) FROM exposures")


@pytest.fixture(scope="module")
def guarded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    recorders = {name: Recorder(create_fake_model(name, FakeModelControl())) for name in ("model_a", "model_b")}
    with serve(recorders["model_a"]) as url_a, serve(recorders["model_b"]) as url_b, Canary() as canary:
        directory = tmp_path_factory.mktemp("guarded")
        router = router_service(
            directory,
            free_port(),
            experiment({"model_a": url_a, "model_b": url_b}),
            env={"ROUTER_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        try:
            router.start(timeout=30)
            yield Guarded(router, recorders, canary)
        finally:
            router.stop()


@pytest.fixture
def guarded(guarded_stack: Guarded) -> Iterator[Guarded]:
    """The guarded stack with empty recordings; afterwards the canary must be untouched and the router up."""
    for recorder in guarded_stack.backends.values():
        recorder.received.clear()
    yield guarded_stack
    assert guarded_stack.canary.connections == [], f"the canary was contacted: {guarded_stack.canary.connections}"
    assert guarded_stack.router.healthy(), "the router stopped answering"
