"""Router test fixtures: two fake model servers on loopback, and helpers to write configs and run routers."""

from __future__ import annotations

import copy
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router.app import create_app
from router.config import RouterSettings
from router.fastpath import RecommendFastPath
from router.service import RouterService
from router.store import SQLiteBackend
from router.strategies import HashStrategy, bucket_ranges
from tests.support.fake_model import FakeModelControl, serve_fake_model
from tests.support.servers import serve

SALT = "test-salt"


@dataclass
class Backend:
    url: str
    control: FakeModelControl


@pytest.fixture(scope="module")
def backend_servers() -> Iterator[dict[str, Backend]]:
    """model_a and model_b fakes, shared by a module's tests (reset before each test)."""
    controls = {"model_a": FakeModelControl(), "model_b": FakeModelControl()}
    with (
        serve_fake_model("model_a", controls["model_a"]) as url_a,
        serve_fake_model("model_b", controls["model_b"]) as url_b,
    ):
        yield {"model_a": Backend(url_a, controls["model_a"]), "model_b": Backend(url_b, controls["model_b"])}


@pytest.fixture
def backends(backend_servers: dict[str, Backend]) -> Iterator[dict[str, Backend]]:
    for backend in backend_servers.values():
        backend.control.reset()
    yield backend_servers
    for backend in backend_servers.values():
        backend.control.reset()


def experiment(backends: dict[str, Backend], **changes: Any) -> dict[str, Any]:
    """A 50/50 hash experiment over the fakes, with short timeouts; `changes` replace top-level fields."""
    raw: dict[str, Any] = {
        "experiment": "rec-ab",
        "strategy": "hash",
        "salt": SALT,
        "variants": [{"name": name, "url": backend.url, "weight": 50} for name, backend in backends.items()],
        "timeouts": {"connect": 0.5, "read": 1.0, "pool": 0.5},
    }
    raw.update(copy.deepcopy(changes))
    return raw


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def settings_for(tmp_path: Path, raw: dict[str, Any], **changes: Any) -> RouterSettings:
    config_path = write_config(tmp_path / "experiment.yaml", raw)
    values: dict[str, Any] = {"results_dir": tmp_path / "results", "config_path": config_path, "health_interval": 0.1}
    values.update(changes)
    return RouterSettings(**values)


@dataclass
class RunningRouter:
    url: str
    client: httpx.Client
    app: RecommendFastPath

    @property
    def service(self) -> RouterService:
        return self.app.service

    @property
    def store_path(self) -> Path:
        """The SQLite file the router's outcome store writes."""
        backend = self.service.store.backend
        assert isinstance(backend, SQLiteBackend)
        return backend.path

    def flush(self) -> None:
        assert self.service.store.flush(10), "outcome store did not flush in 10 s"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Query the outcome store after writing everything queued so far."""
        self.flush()
        with sqlite3.connect(self.store_path) as conn:
            return conn.execute(sql, params).fetchall()


@contextmanager
def running_router(settings: RouterSettings, **app_options: Any) -> Iterator[RunningRouter]:
    """The real router app on a loopback port, with an httpx client pointed at it."""
    app = create_app(settings, **app_options)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        yield RunningRouter(url, client, app)


def users_of(variant: str, weights: list[tuple[str, float]], *, salt: str = SALT, count: int = 1) -> list[str]:
    """The first `count` user ids the hash strategy assigns to `variant`."""
    strategy = HashStrategy(bucket_ranges(weights), salt=salt)
    found = [f"user-{i}" for i in range(10_000) if strategy.assign(f"user-{i}").variant == variant]
    return found[:count]


AB = [("model_a", 50.0), ("model_b", 50.0)]


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)  # a poll with a deadline, not a synchronisation sleep
