"""Store fixtures: records built by keyword, and the backends every contract test runs against.

A new backend joins the contract suite as a parameter of `new_backend`. PostgreSQL runs on a real server
(tests/support/postgres.py), a fresh database per store; without PostgreSQL 15 those tests fail, never skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from router.store import Exposure, Feedback, PostgresBackend, ShadowCall, SQLiteBackend, StoreBackend
from tests.support.postgres import PostgresCluster

BackendFactory = Callable[[], StoreBackend]


def exposure(
    n: int,
    *,
    user: str | None = None,
    phase: int = 1,
    status: int = 200,
    ts: float | None = None,
    variant: str | None = None,
    assignment: str = "strategy",
) -> Exposure:
    served = variant or ("model_a" if n % 2 else "model_b")
    return Exposure(
        ts=1_700_000_000.0 + n if ts is None else ts,
        request_id=f"{n:032x}",
        experiment="rec-ab",
        phase=phase,
        user_id=user or f"u{n}",
        variant=served,
        assigned_variant=served,
        strategy="hash",
        assignment=assignment,
        propensity=None if assignment == "override" else 0.5,
        status=status,
        latency_ms=1.5 + n % 7,
        k=3,
        items=(n, n + 1, n + 2) if status == 200 else (),
        error=None if status == 200 else "timeout",
    )


def interleaved(
    n: int,
    *,
    user: str | None = None,
    teams: tuple[str, ...] = ("model_a", "model_b", "model_a"),
    failed_variant: str | None = None,
    status: int = 200,
    assignment: str = "strategy",
) -> Exposure:
    """An exposure of strategy `interleave`: items n, n+1, n+2 placed by `teams` (nothing when `status` fails)."""
    return replace(
        exposure(n, user=user, status=status, assignment=assignment, variant="interleaved"),
        strategy="interleave",
        propensity=None if assignment == "override" else 1.0,
        teams=teams if status == 200 else (),
        failed_variant=failed_variant,
    )


def feedback_for(seen: Exposure, item: int, *, event: str = "click", value: float | None = None) -> Feedback:
    return Feedback(
        ts=seen.ts + 1,
        request_id=seen.request_id,
        experiment=seen.experiment,
        phase=seen.phase,
        user_id=seen.user_id,
        variant=seen.team_of(list(seen.items).index(item) if item in seen.items else None),
        assignment=seen.assignment,
        item_id=item,
        position=list(seen.items).index(item) if item in seen.items else None,
        event=event,
        value=value,
        attributed_by="request_id",
    )


def shadow_call_for(
    seen: Exposure,
    *,
    shadow: str = "model_c",
    status: int = 200,
    items: tuple[int, ...] | None = None,
    latency_ms: float = 2.0,
) -> ShadowCall:
    """The shadow call that copied `seen`: by default the live list reversed, or an error without items."""
    return ShadowCall(
        ts=seen.ts + 0.01,
        request_id=seen.request_id,
        phase=seen.phase,
        user_id=seen.user_id,
        variant=seen.variant,
        shadow=shadow,
        shadow_url=f"http://{shadow}:8000",
        k=seen.k,
        status=status,
        latency_ms=latency_ms,
        wait_ms=0.1,
        items=(items if items is not None else tuple(reversed(seen.items))) if status == 200 else (),
        error=None if status == 200 else {502: "bad_response", 503: "unavailable", 504: "timeout"}[status],
    )


def sqlite_backend(tmp_path: Path) -> BackendFactory:
    counter = iter(range(1_000))
    return lambda: SQLiteBackend(tmp_path / f"store-{next(counter)}" / "outcomes.sqlite3", busy_timeout_ms=50)


def postgres_backend(cluster: PostgresCluster) -> BackendFactory:
    """Each call: a backend over a new, empty database on the session's server."""
    cluster.ensure_running()
    return lambda: PostgresBackend(cluster.create_database(), connect_timeout=5.0)


BACKENDS = ("sqlite", "postgresql")


def same_store(backend: StoreBackend) -> StoreBackend:
    """A second, unopened backend over `backend`'s store: what another router process would open."""
    if isinstance(backend, SQLiteBackend):
        return SQLiteBackend(backend.path, busy_timeout_ms=50)
    assert isinstance(backend, PostgresBackend), backend
    return PostgresBackend(backend.url, connect_timeout=5.0)


@pytest.fixture(params=BACKENDS)
def new_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    """A factory of fresh, unopened backends of one kind (each call: a new, empty store)."""
    opened: list[StoreBackend] = []
    if request.param == "postgresql":
        factory = postgres_backend(request.getfixturevalue("postgres"))
    else:
        factory = sqlite_backend(tmp_path)

    def make() -> StoreBackend:
        backend = factory()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()
