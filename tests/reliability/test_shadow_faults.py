"""A shadow backend hangs, errors or is killed mid-load: no live request fails or slows, every loss is counted.

The router (`python -m router`), the real model servers and the shadow run as processes; the shadow is a third
model server from the same code (`python -m recsys.server --model model_a`) or, for errors, the stand-in model
as its own process (`python -m tests.support.faulty_model`, failing from SIGUSR1 on). Each test first measures
the usual live p99 under the same load with a healthy shadow, then breaks the shadow and holds the live answers
to a generous multiple of it.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from abtest.processes import CLEAN_EXIT_CODES, free_port
from tests.reliability.conftest import USERS, RouterFactory, experiment, urls_of
from tests.reliability.load import Answer, Load
from tests.reliability.observe import rows
from tests.reliability.services import Service, store_path

#: connect + pool + read from `experiment()`: the longest any backend call may take.
TIMEOUT_BUDGET = 0.5 + 0.5 + 1.0
#: The live p99 with a broken shadow may be this many times the usual one (plus a floor for tiny p99s).
P99_MULTIPLE, P99_FLOOR = 4.0, 0.020
#: Router memory may grow this much while the shadow is broken (the store's index fills meanwhile too).
RSS_GROWTH = 48 * 2**20


@pytest.fixture(params=["hang", "error", "kill"])
def fault(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shadow_server(models_dir: Path, tmp_path: Path, fault: str) -> Iterator[Service]:
    """The shadow as a process: model_a's code as a third server, or the stand-in that fails on SIGUSR1."""
    if fault == "error":
        service = Service("tests.support.faulty_model", free_port(), tmp_path / "shadow.log")
    else:
        env = {"MODELS_DIR": str(models_dir)}
        service = Service("recsys.server", free_port(), tmp_path / "shadow.log", env, ("--model", "model_a"))
    service.start()
    yield service
    if service.alive():
        service.signal(signal.SIGCONT)
    service.stop()


def shadow_counters(router: Service) -> dict[str, Any]:
    """model_c's counters from /health, checked to balance: every submitted job is accounted for once."""
    counters = dict(httpx.get(router.url + "/health", timeout=5).json()["shadows"]["model_c"])
    accounted = (
        counters["completed"]
        + sum(counters["failed"].values())
        + counters["dropped"]
        + counters["abandoned"]
        + counters["in_flight"]
        + counters["queued"]
    )
    assert counters["submitted"] == accounted, counters
    assert counters["in_flight"] <= counters["concurrency"] and counters["queued"] <= counters["queue_size"]
    return counters


def p99(answers: list[Answer]) -> float:
    return statistics.quantiles([a.seconds for a in answers], n=100, method="inclusive")[98]


def test_a_broken_shadow_changes_nothing_for_live_requests_and_its_losses_are_counted(
    models: dict[str, Service], start_router: RouterFactory, shadow_server: Service, fault: str
) -> None:
    shadow = [{"name": "model_c", "url": shadow_server.url, "fraction": 1.0}]
    router = start_router(experiment(urls_of(models), shadow=shadow))
    process = psutil.Process(router.pid)
    with Load(router.url, users=USERS, concurrency=8) as load:
        load.wait_for(lambda t: t.answered >= 300, what="warm-up")
        usual_from = load.tally.answered
        load.wait_for(lambda t: t.answered >= usual_from + 600, what="the usual latency")
        usual = list(load.tally.answers)[usual_from:]
        healthy = shadow_counters(router)
        rss_before = process.memory_info().rss
        broken_from = load.tally.answered
        # hang: accepts connections, never answers; error: every answer a 500; kill: gone, connections refused
        shadow_server.signal({"hang": signal.SIGSTOP, "error": signal.SIGUSR1, "kill": signal.SIGKILL}[fault])
        load.wait_for(lambda t: t.answered >= broken_from + 1500, timeout=60, what="answers while it is broken")
        during = list(load.tally.answers)[broken_from:]
        broken = shadow_counters(router)
        rss_after = process.memory_info().rss
    tally = load.tally
    stopped_at = time.monotonic()
    assert router.stop() in CLEAN_EXIT_CODES
    stop_seconds = time.monotonic() - stopped_at

    assert not tally.transport_errors, load.summary()
    assert {a.status for a in tally.answers} == {200}, "a live request failed with the shadow"
    usual_p99, during_p99 = p99(usual), p99(during)
    print(
        f"\n{fault}: live p50 {statistics.median(a.seconds for a in usual) * 1000:.2f} -> "
        f"{statistics.median(a.seconds for a in during) * 1000:.2f} ms, p99 {usual_p99 * 1000:.2f} -> "
        f"{during_p99 * 1000:.2f} ms; shadow healthy {healthy['completed']} completed; broken: {broken}; "
        f"RSS +{(rss_after - rss_before) / 2**20:.1f} MiB; stop {stop_seconds:.1f}s"
    )
    assert during_p99 <= max(P99_MULTIPLE * usual_p99, usual_p99 + P99_FLOOR)
    # A live answer that waited on the broken shadow would take its timeout on top of the usual answer; a stall of
    # the whole (loaded, 2-core) machine shows in the slowest usual answer too, so it is allowed for.
    slowest_usual = max(a.seconds for a in usual)
    assert max(a.seconds for a in during) < TIMEOUT_BUDGET + slowest_usual, "a live answer waited on the shadow"
    assert healthy["completed"] > 0 and not healthy["failed"]
    expected_kind = {"hang": "timeout", "error": "bad_response", "kill": "unavailable"}[fault]
    assert broken["failed"].get(expected_kind, 0) > 0, broken
    if fault == "hang":  # 16 calls time out per second at most: the queue fills and the rest are dropped
        assert broken["dropped"] > 0
    assert rss_after - rss_before < RSS_GROWTH

    # After the stop: every call that finished is a row; the log has the final counters.
    stored = rows(store_path(router), "SELECT error, COUNT(*) FROM shadow_calls GROUP BY error")
    finals = [
        json.loads(line)
        for line in router.log_text().splitlines()
        if line.startswith("{") and '"router stopping"' in line and '"model_c"' in line
    ]
    assert len(finals) == 1, router.log_text()[-2000:]
    final = finals[0]
    assert (
        final["submitted"] == final["completed"] + sum(final["failed"].values()) + final["dropped"] + final["abandoned"]
    )
    assert dict(stored) == {
        None: final["completed"],
        **{kind: n for kind, n in final["failed"].items()},
    }
    assert stop_seconds < 15, "the router's stop waited on the shadow"
