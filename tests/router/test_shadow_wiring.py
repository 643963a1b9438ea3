"""Shadow traffic through the real router app (uvicorn on loopback, fake model servers): the rows it stores, the
bounded queue and its counters in /health and /metrics, reloads that add and remove a shadow, and stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Response

from router.config import phase_key
from router.shadow import DEFAULT_CONCURRENCY, DEFAULT_QUEUE_SIZE
from tests.reliability.observe import metric
from tests.router.conftest import Backend, experiment, running_router, settings_for, wait_until, write_config
from tests.support.fake_model import FakeModelControl, items_for, serve_fake_model
from tests.support.servers import serve

TOKEN = "shadow-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_c() -> Iterator[tuple[str, FakeModelControl]]:
    control = FakeModelControl()
    with serve_fake_model("model_c", control) as url:
        yield url, control


@pytest.fixture
def shadow_c(model_c: tuple[str, FakeModelControl]) -> Iterator[tuple[str, FakeModelControl]]:
    model_c[1].reset()
    yield model_c
    model_c[1].reset()


def with_shadow(backends: dict[str, Backend], url: str, fraction: float = 1.0, **changes: Any) -> dict[str, Any]:
    return experiment(backends, shadow=[{"name": "model_c", "url": url, "fraction": fraction}], **changes)


def shadow_health(router: Any) -> dict[str, Any]:
    return dict(router.client.get("/health").json()["shadows"])


class GatedModel:
    """A model server whose /recommend waits until the test opens the gate: a shadow that hangs on demand.

    `open`/`close` are called from the test's thread and run on the server's loop (call_soon_threadsafe).
    """

    def __init__(self) -> None:
        self.started = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Event | None = None
        self.app = FastAPI()

        @self.app.get("/recommend/{user_id}")
        async def recommend(user_id: str, k: int = 10) -> Response:
            if self._gate is None:
                self._loop, self._gate = asyncio.get_running_loop(), asyncio.Event()
            self.started += 1
            await self._gate.wait()  # the hang being simulated, released by the test
            return Response(b'{"user_id": "%s", "items": [1, 2, 3]}' % user_id.encode(), media_type="application/json")

    def open(self) -> None:
        if self._loop is not None and self._gate is not None:
            self._loop.call_soon_threadsafe(self._gate.set)

    def close(self) -> None:
        if self._loop is not None and self._gate is not None:
            self._loop.call_soon_threadsafe(self._gate.clear)


def test_each_served_request_is_copied_to_the_shadow_after_the_answer_and_stored_with_its_request_id(
    tmp_path: Path, backends: dict[str, Backend], shadow_c: tuple[str, FakeModelControl]
) -> None:
    url, control = shadow_c
    users = [f"user-{n}" for n in range(20)]
    with running_router(settings_for(tmp_path, with_shadow(backends, url))) as router:
        answers = {}
        for n, user in enumerate(users):  # half through the fast path, half through the FastAPI route
            response = router.client.get(f"/recommend/{user}", params={"k": 5} if n % 2 else {"k": 5, "via": "api"})
            assert response.status_code == 200
            answers[response.headers["X-Request-ID"]] = (user, response.headers["X-Variant"], response.json()["items"])
        wait_until(lambda: shadow_health(router)["model_c"]["completed"] == len(users), what="the shadow calls")
        stored = router.rows(
            "SELECT request_id, user_id, variant, shadow, shadow_url, k, status, items, error, latency_ms, wait_ms "
            "FROM shadow_calls"
        )
        phases = router.rows("SELECT DISTINCT phase FROM shadow_calls")
        text = router.client.get("/metrics").text
    assert {row[0] for row in stored} == set(answers)
    for request_id, user, variant, shadow, shadow_url, k, status, items, error, latency_ms, wait_ms in stored:
        live_user, live_variant, live_items = answers[request_id]
        assert (user, variant, shadow, shadow_url, k, status, error) == (
            live_user,
            live_variant,
            "model_c",
            url,
            5,
            200,
            None,
        )
        assert items == str(items_for(user, 5)).replace(" ", "")  # the shadow's own list, not the live one
        assert live_items == items_for(user, 5)  # the fakes answer the same lists: the shadow's row is its own
        assert latency_ms > 0 and wait_ms >= 0
    assert phases == [(1,)]
    assert sorted(control.seen) == sorted(f"/recommend/{user}?k=5" for user in users)
    assert metric(text, "router_shadow_calls_total", shadow="model_c", outcome="completed") == len(users)
    assert metric(text, "router_shadow_submitted_total", shadow="model_c") == len(users)


def test_a_failed_live_request_is_not_shadowed_and_a_failing_shadow_changes_no_answer(
    tmp_path: Path, backends: dict[str, Backend], shadow_c: tuple[str, FakeModelControl]
) -> None:
    url, control = shadow_c
    control.status = 500
    with running_router(settings_for(tmp_path, with_shadow(backends, url))) as router:
        for backend in backends.values():
            backend.control.status = 503
        assert router.client.get("/recommend/u-failed").status_code == 503
        for backend in backends.values():
            backend.control.status = 200
        assert [router.client.get(f"/recommend/u-{n}").status_code for n in range(10)] == [200] * 10
        wait_until(lambda: sum(shadow_health(router)["model_c"]["failed"].values()) == 10, what="failed calls")
        health = shadow_health(router)["model_c"]
        stored = router.rows("SELECT status, error, items FROM shadow_calls")
    assert health["failed"] == {"bad_response": 10} and health["submitted"] == 10  # the failed one was not copied
    assert stored == [(502, "bad_response", "[]")] * 10


def test_a_hung_shadow_holds_its_bounds_drops_the_rest_and_counts_every_job(
    tmp_path: Path, backends: dict[str, Backend], caplog: pytest.LogCaptureFixture
) -> None:
    gated = GatedModel()
    requests = DEFAULT_CONCURRENCY + DEFAULT_QUEUE_SIZE + 100
    with serve(gated.app) as url:
        raw = with_shadow(backends, url, timeouts={"connect": 0.5, "read": 60.0, "pool": 0.5})
        with running_router(settings_for(tmp_path, raw)) as router:
            statuses = [router.client.get(f"/recommend/u-{n}").status_code for n in range(requests)]
            assert statuses == [200] * requests  # every live answer while the shadow hangs
            held = shadow_health(router)["model_c"]
            text = router.client.get("/metrics").text
            assert gated.started == DEFAULT_CONCURRENCY
            gated.open()
            wait_until(lambda: shadow_health(router)["model_c"]["completed"] == held["in_flight"] + held["queued"])
            stored = router.rows("SELECT COUNT(*) FROM shadow_calls")
            # A second hang, left hanging at stop: the router gives it a grace, then abandons and counts it.
            gated.close()
            for n in range(5):
                router.client.get(f"/recommend/v-{n}")
            wait_until(lambda: shadow_health(router)["model_c"]["in_flight"] == 5, what="calls to hang again")
            caplog.set_level(logging.INFO, logger="router.service")
        gated.open()
    assert held == {
        "submitted": requests,
        "completed": 0,
        "failed": {},
        "dropped": 100,
        "abandoned": 0,
        "in_flight": DEFAULT_CONCURRENCY,
        "queued": DEFAULT_QUEUE_SIZE,
        "record_errors": 0,
        "concurrency": DEFAULT_CONCURRENCY,
        "queue_size": DEFAULT_QUEUE_SIZE,
    }
    assert metric(text, "router_shadow_calls_total", shadow="model_c", outcome="dropped") == 100
    assert metric(text, "router_shadow_in_flight", shadow="model_c") == DEFAULT_CONCURRENCY
    assert metric(text, "router_shadow_queued", shadow="model_c") == DEFAULT_QUEUE_SIZE
    assert stored == [(DEFAULT_CONCURRENCY + DEFAULT_QUEUE_SIZE,)]
    closed = [
        r for r in caplog.records if r.getMessage() == "router stopping" and getattr(r, "shadow", "") == "model_c"
    ]
    assert len(closed) == 1 and getattr(closed[0], "abandoned", None) == 5


def test_reloads_add_move_and_remove_a_shadow_without_a_new_phase(
    tmp_path: Path, backends: dict[str, Backend], shadow_c: tuple[str, FakeModelControl]
) -> None:
    url, control = shadow_c
    raw = experiment(backends)
    settings = settings_for(tmp_path, raw, admin_token=TOKEN)
    with running_router(settings) as router:
        router.client.get("/recommend/before")
        assert shadow_health(router) == {}

        write_config(settings.config_path, with_shadow(backends, url))
        added = router.client.post("/admin/reload", headers=AUTH).json()
        assert (added["phase"], added["new_phase"]) == (1, False)
        assert added["config"]["shadow"] == [{"name": "model_c", "url": url + "/", "fraction": 1.0}]
        for n in range(5):
            router.client.get(f"/recommend/added-{n}")
        wait_until(lambda: shadow_health(router)["model_c"]["completed"] == 5, what="calls after the reload")

        # A fraction of 0 keeps the shadow (and its counters) but copies nobody.
        write_config(settings.config_path, with_shadow(backends, url, fraction=0.0))
        assert router.client.post("/admin/reload", headers=AUTH).json()["new_phase"] is False
        router.client.get("/recommend/nobody")

        # A shadow named like a variant is refused; the previous config keeps serving.
        bad = experiment(backends, shadow=[{"name": "model_a", "url": url, "fraction": 1.0}])
        write_config(settings.config_path, bad)
        refused = router.client.post("/admin/reload", headers=AUTH)
        assert refused.status_code == 422 and "has the name of a variant" in refused.json()["detail"]

        write_config(settings.config_path, raw)
        removed = router.client.post("/admin/reload", headers=AUTH).json()
        assert (removed["phase"], removed["new_phase"]) == (1, False)
        for n in range(5):
            router.client.get(f"/recommend/removed-{n}")
        assert shadow_health(router) == {}
        calls = router.rows("SELECT user_id FROM shadow_calls ORDER BY user_id")
        phases = router.rows("SELECT COUNT(*) FROM phases")
    assert calls == [(f"added-{n}",) for n in range(5)]
    assert sorted(control.seen) == sorted(f"/recommend/added-{n}?k=10" for n in range(5))
    assert phases == [(1,)]


def test_shadows_are_not_part_of_the_phase_key(backends: dict[str, Backend]) -> None:
    from router.config import build_config

    plain = build_config(experiment(backends))
    shadowed = build_config(with_shadow(backends, "http://model_c:8000", fraction=0.3))
    assert phase_key(plain) == phase_key(shadowed)
