"""Guardrails that act, through the real stack: the router (uvicorn on loopback) over two fake model servers.

Both backends fail 5 % of their requests (every 20th). While that lasts the error-rate guardrail (tolerance
10 pp, action stop) is judged healthy and nobody moves. Then model_b starts failing every request (served by
model_a as fallbacks, which count as model_b's failures): the watcher stops model_b within a bounded number
of model_b exposures, as a new phase, visible in /config, /metrics and the report; a reload keeps the stop;
an admin resumes it (another phase).

The bound: with these sizes (about 150 users per arm, 2 requests each, 5 % failures, tuning 400) the core's
sequence excludes the 10 pp tolerance after about 63 failing model_b exposures (computed by feeding the same
per-user counts to router.report.comparison). The test allows 200: three times that, plus the batch of 20
requests and the one or two rounds that may pass before the watcher sees a batch.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.strategies import HashStrategy, bucket_ranges
from tests.router.conftest import AB, SALT, Backend, RunningRouter, experiment, running_router, settings_for, wait_until

TOKEN = "guardrail-admin-token"
USERS = [f"user-{i}" for i in range(300)]
HARM_BOUND = 200
"""model_b exposures after the harm begins within which model_b must be stopped (see the module docstring)."""
BATCH = 20


@pytest.fixture
def router(tmp_path: Path, backends: dict[str, Backend]) -> Iterator[RunningRouter]:
    raw = experiment(
        backends,
        on_error="fallback",
        fallback_variant="model_a",
        analysis={"tuning": 400},
        guardrails=[{"metric": "error_rate", "tolerance": {"margin": 0.10}, "action": "stop"}],
    )
    for backend in backends.values():
        backend.control.fail_every = 20
    settings = settings_for(tmp_path, raw, admin_token=TOKEN, guardrail_interval=0.1)
    with running_router(settings) as running:
        yield running


def sample(router: RunningRouter, name: str, labels: dict[str, str]) -> float:
    value = router.service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def settle(router: RunningRouter) -> None:
    """Write everything queued, then wait for a guardrail round that started after it was written."""
    router.flush()
    done = sample(router, "router_guardrail_checks_total", {"result": "ok"})
    wait_until(
        lambda: sample(router, "router_guardrail_checks_total", {"result": "ok"}) >= done + 2,
        timeout=60,
        what="two guardrail rounds",
    )


def assigned(variant: str) -> list[str]:
    strategy = HashStrategy(bucket_ranges(AB), salt=SALT)
    return [user for user in USERS if strategy.assign(user).variant == variant]


def test_a_failing_variant_is_stopped_by_its_guardrail_and_nobody_moves_before(
    router: RunningRouter, backends: dict[str, Backend]
) -> None:
    users_b, users_a = assigned("model_b"), assigned("model_a")
    for _ in range(2):
        for user in USERS:
            router.client.get(f"/recommend/{user}")
    settle(router)
    settle(router)

    # Healthy: judged (not merely inconclusive), nothing stopped, every user where the hash put them.
    assert sample(router, "router_guardrail_state", {"variant": "model_b", "guardrail": "error_rate"}) == -1
    assert router.service.live.phase == 1 and router.service.live.stops == {}
    assert sample(router, "router_guardrail_stops_total", {"variant": "model_b", "guardrail": "error_rate"}) == 0
    strategy = HashStrategy(bucket_ranges(AB), salt=SALT)
    rows = router.rows("SELECT user_id, assigned_variant, phase FROM exposures")
    assert len(rows) == 2 * len(USERS)
    assert all(phase == 1 and variant == strategy.assign(user).variant for user, variant, phase in rows)

    harm_started = time.time()
    backends["model_b"].control.status = 500
    for batch in range(HARM_BOUND // BATCH + 5):
        for i in range(BATCH):
            router.client.get(f"/recommend/{users_b[(batch * BATCH + i) % len(users_b)]}")
        router.client.get(f"/recommend/{users_a[batch % len(users_a)]}")
        settle(router)
        if router.service.live.phase != 1:
            break
    harmed = router.rows(
        "SELECT COUNT(*) FROM exposures WHERE phase = 1 AND assigned_variant = 'model_b' AND ts >= ?", (harm_started,)
    )[0][0]
    assert router.service.live.phase == 2, f"model_b was not stopped after {harmed} failing exposures"
    assert 0 < harmed <= HARM_BOUND

    stop = router.service.live.stops["model_b"]
    assert (stop["guardrail"], stop["phase"], stop["moved_to"]) == ("error_rate", 1, "model_a")
    described = router.client.get("/config").json()
    assert described["stopped"]["model_b"]["guardrail"] == "error_rate"
    assert described["weights_in_effect"] == {"model_a": 1.0, "model_b": 0.0}
    metrics = router.client.get("/metrics").text
    assert 'router_variant_stopped{variant="model_b"} 1.0' in metrics
    assert 'router_guardrail_stops_total{guardrail="error_rate",variant="model_b"} 1.0' in metrics

    calls = len(backends["model_b"].control.seen)
    answer = router.client.get(f"/recommend/{users_b[0]}")
    assert answer.status_code == 200 and answer.headers["X-Variant"] == "model_a"
    assert router.client.get(f"/recommend/{users_a[0]}").headers["X-Variant"] == "model_a"
    assert len(backends["model_b"].control.seen) == calls  # the stopped backend gets nothing any more
    phase_two = router.rows("SELECT assigned_variant, assignment FROM exposures WHERE phase = 2")
    assert set(phase_two) == {("model_a", "strategy")}

    router.flush()
    for phase in (1, 2):
        verdict = router.client.get("/results", params={"phase": phase}).json()["comparisons"][0]["verdict"]
        assert "model_b was stopped by guardrail error_rate at" in verdict

    headers = {"Authorization": f"Bearer {TOKEN}"}
    reloaded = router.client.post("/admin/reload", headers=headers).json()
    assert reloaded["phase"] == 2 and "model_b" in reloaded["config"]["stopped"]  # a reload keeps the stop

    backends["model_b"].control.reset()
    resumed = router.client.post("/admin/resume/model_b", headers=headers)
    assert resumed.status_code == 200 and resumed.json()["phase"] == 3
    assert router.client.get(f"/recommend/{users_b[0]}").headers["X-Variant"] == "model_b"
    assert router.client.post("/admin/resume/model_b", headers=headers).status_code == 409
    assert 'router_variant_stopped{variant="model_b"} 0.0' in router.client.get("/metrics").text
    with sqlite3.connect(router.store_path) as connection:
        recorded = connection.execute("SELECT phase, config_json FROM phases ORDER BY phase").fetchall()
    assert [phase for phase, _ in recorded] == [1, 2, 3]
    assert [len(json.loads(design)["stopped"]) for _, design in recorded] == [0, 1, 0]
