"""A backend dies, hangs or is slow under load: the router answers every request in time and logs each one once."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse

from abtest.processes import CLEAN_EXIT_CODES
from tests.reliability.conftest import SALT, USERS, WEIGHTS, RouterFactory, experiment, urls_of
from tests.reliability.load import Load, Tally
from tests.reliability.observe import assigned, rows
from tests.reliability.services import Service, store_path
from tests.router.conftest import wait_until
from tests.support.fake_model import FakeModelControl, serve_fake_model
from tests.support.servers import serve

#: connect + pool + read from `experiment()`: the longest a request to a failing backend may take.
TIMEOUT_BUDGET = 0.5 + 0.5 + 1.0
#: What a quiet 2-core machine may add on top (scheduling, GC, the load client sharing the CPU).
SLACK = 0.75


def budget(healthy_seconds: list[float], deadline: float = TIMEOUT_BUDGET) -> float:
    """The longest a failing request may take: its deadline, the slack, and what the machine added meanwhile.

    A loaded machine delays every answer; the slowest answer of the healthy variant in the same run (which
    waits on no deadline) measures that delay, so a stall of the whole machine does not fail the test while a
    request that outlived its deadline still does.
    """
    return deadline + SLACK + max(healthy_seconds, default=0.0)


ASSIGNED = assigned(USERS, SALT, WEIGHTS)
USERS_A = [user for user in USERS if ASSIGNED[user] == "model_a"]
USERS_B = [user for user in USERS if ASSIGNED[user] == "model_b"]


def backend_state(router: Service, variant: str) -> str:
    return str(httpx.get(router.url + "/health", timeout=5).json()["backends"][variant]["status"])


def assert_store_matches(router: Service, tally: Tally) -> None:
    """Exactly one exposure row per answered request, with the status and variant the client saw."""
    stored = rows(store_path(router), "SELECT request_id, variant, status FROM exposures")
    assert len(stored) == tally.answered
    assert {r[0] for r in stored} == set(tally.request_ids())
    assert len(tally.request_ids()) == tally.answered  # every answer, errors too, carried its request id
    seen = {a.request_id: (a.variant, a.status) for a in tally.answers}
    assert {r[0]: (r[1], r[2]) for r in stored} == seen


@pytest.mark.parametrize("on_error", ["error", "fallback"])
def test_backend_killed_mid_load_every_request_is_answered_in_time_and_stored_once(
    models: dict[str, Service], start_router: RouterFactory, on_error: str
) -> None:
    changes = {"on_error": "fallback", "fallback_variant": "model_a"} if on_error == "fallback" else {}
    router = start_router(experiment(urls_of(models), **changes))
    model_b = models["model_b"]
    with Load(router.url, users=USERS, concurrency=8) as load:
        load.wait_for(lambda t: t.statuses()[("model_b", 200)] >= 100, what="model_b serving")
        killed_at = time.monotonic()
        model_b.signal(signal.SIGKILL)

        def failed_over(tally: Tally) -> int:
            """Answers to model_b's users since the kill that model_b did not serve."""
            return sum(
                1
                for a in list(tally.answers)
                if a.started + a.seconds > killed_at
                and ASSIGNED[a.user] == "model_b"
                and (a.variant != "model_b" or a.status != 200)
            )

        load.wait_for(lambda t: failed_over(t) >= 200, what="answers while model_b is dead")
        wait_until(lambda: backend_state(router, "model_b") == "down", what="/health to report model_b down")
        model_b.start()
        back_at = time.monotonic()
        load.wait_for(
            lambda t: sum(1 for a in list(t.answers) if a.started > back_at and a.variant == "model_b") >= 100,
            what="model_b serving again after its restart",
        )
        wait_until(lambda: backend_state(router, "model_b") == "up", what="/health to report model_b up")
    tally = load.tally
    assert router.alive(), "the router died with its backend"
    assert router.stop() in CLEAN_EXIT_CODES

    assert not tally.transport_errors, f"requests left without an answer: {load.summary()}"
    by_a = [a for a in tally.answers if ASSIGNED[a.user] == "model_a"]
    slowest = max(a.seconds for a in tally.answers if ASSIGNED[a.user] == "model_b")
    allowed = budget([a.seconds for a in by_a])
    assert slowest < allowed, f"an answer took {slowest:.2f}s (allowed {allowed:.2f}s)"
    during = [a for a in tally.answers if killed_at < a.started < back_at]
    assert all(a.status == 200 and a.variant == "model_a" for a in by_a), "model_a's users were affected"
    if on_error == "error":
        failures = [a for a in tally.answers if a.status != 200]
        assert failures, "no request failed while model_b was dead"
        assert {(a.variant, a.status) for a in failures} <= {("model_b", 503), ("model_b", 502), ("model_b", 504)}
        assert sum(a.status == 503 for a in failures) >= 0.9 * len(failures)  # refused/reset: mostly 503
        assert [a.status for a in tally.answers if a.started > back_at + 0.5] == [200] * sum(
            1 for a in tally.answers if a.started > back_at + 0.5
        )
    else:
        assert {a.status for a in tally.answers} == {200}, "a request failed although a fallback was configured"
        fallbacks = [a for a in tally.answers if ASSIGNED[a.user] == "model_b" and a.variant == "model_a"]
        assert len(fallbacks) >= 100
        assert all(killed_at < a.started + a.seconds and a.started < back_at + 1.0 for a in fallbacks)
        stored = rows(
            store_path(router),
            "SELECT COUNT(*) FROM exposures WHERE assignment = 'fallback' AND variant = 'model_a' "
            "AND assigned_variant = 'model_b' AND status = 200",
        )
        assert stored == [(len(fallbacks),)]
    assert during, "no request was sent while model_b was dead"
    assert sum(1 for a in tally.answers if a.started > back_at and a.variant == "model_b" and a.status == 200) >= 50
    assert_store_matches(router, tally)
    print(f"\n{on_error}: {load.summary()}; slowest answer {slowest * 1000:.0f} ms")


def probe_latencies(client: httpx.Client, users: list[str], count: int) -> tuple[list[float], list[str]]:
    """Sequential GET /recommend for `users` (round-robin): each latency in seconds, each request id."""
    latencies, request_ids = [], []
    for number in range(count):
        started = time.perf_counter()
        response = client.get(f"/recommend/{users[number % len(users)]}", params={"k": 10})
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.headers["X-Variant"] == "model_a"
        request_ids.append(response.headers["X-Request-ID"])
    return latencies, request_ids


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


@pytest.mark.parametrize("fault", ["stopped", "slow"])
def test_hung_or_slow_backend_fails_with_504_after_the_timeout_and_the_other_variant_keeps_its_latency(
    models: dict[str, Service], start_router: RouterFactory, tmp_path: Path, fault: str
) -> None:
    """`stopped`: the real model_b is SIGSTOPped (connections are accepted by the kernel, nothing answers).
    `slow`: a stand-in model_b answers, but 3 s late (the router's read timeout is 1 s)."""
    control = FakeModelControl(delay=3.0)
    with serve_fake_model("model_b", control) as slow_url:
        urls = urls_of(models) if fault == "stopped" else {"model_a": models["model_a"].url, "model_b": slow_url}
        router = start_router(experiment(urls))
        with httpx.Client(base_url=router.url, timeout=10) as client:
            probe_latencies(client, USERS_A, 50)  # warm-up: connections, caches
            before, ids_before = probe_latencies(client, USERS_A, 200)
            if fault == "stopped":
                models["model_b"].signal(signal.SIGSTOP)
            try:
                with Load(router.url, users=USERS_B, concurrency=32) as load:
                    load.wait_for(lambda t: t.sent >= 32, what="hung requests in flight")
                    during, ids_during = probe_latencies(client, USERS_A, 200)
                    load.wait_for(lambda t: t.answered >= 64, what="answers from the hung backend")
            finally:
                if fault == "stopped":
                    models["model_b"].signal(signal.SIGCONT)
        assert router.stop() in CLEAN_EXIT_CODES
    tally = load.tally
    assert not tally.transport_errors, load.summary()
    assert {(a.variant, a.status) for a in tally.answers} == {("model_b", 504)}
    read_timeout = 1.0
    waits = sorted(a.seconds for a in tally.answers)
    assert waits[0] >= read_timeout - 0.01, f"a 504 came before the read timeout: {waits[0]:.3f}s"
    allowed = budget(during, deadline=read_timeout)
    assert waits[-1] < allowed, f"a 504 came {waits[-1]:.3f}s after it was asked for (allowed {allowed:.2f}s)"

    # The healthy variant: its median may move with CPU noise, but nothing may wait on the hung backend.
    median_before, median_during = statistics.median(before), statistics.median(during)
    p95_during = quantile(during, 0.95)
    print(
        f"\n{fault}: model_a latency p50 {median_before * 1000:.2f} -> {median_during * 1000:.2f} ms, "
        f"p95 {quantile(before, 0.95) * 1000:.2f} -> {p95_during * 1000:.2f} ms, max {max(during) * 1000:.1f} ms; "
        f"model_b 504s after {waits[0]:.3f}-{waits[-1]:.3f}s"
    )
    # Nothing waited on the hung backend: such a probe would wait for the read timeout (or fail on the pool
    # timeout, which the 200 check catches); CPU noise moves the median by milliseconds, not by that.
    assert median_during <= 3 * median_before + 0.050
    assert p95_during < 0.5 * read_timeout

    stored = rows(store_path(router), "SELECT request_id, variant, status, error FROM exposures")
    assert len(stored) == 250 + 200 + tally.answered  # warm-up and probes included: one row per answer
    by_id = {r[0]: r[1:] for r in stored}
    assert all(by_id[rid] == ("model_a", 200, None) for rid in ids_before + ids_during)
    assert all(by_id[rid] == ("model_b", 504, "timeout") for rid in tally.request_ids())


RUNAWAY_MODES = ("flood", "bomb", "drip")


def gzip_bomb(size: int) -> bytes:
    """A gzip body that inflates to `size` bytes of JSON (mostly whitespace) from about size/1000 on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * 1_048_576
    parts = [packer.compress(b'{"items": [1')]
    parts += [packer.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, packer.compress(b"]}"), packer.flush()])


def create_runaway_backend() -> FastAPI:
    """A 'model server' whose answers never end well; the user id's prefix picks how.

    flood: an endless body, as fast as the socket takes it; bomb: 64 MiB once gunzipped, 64 KiB sent;
    drip: a byte pair every 0.2 s forever, so no single read ever waits as long as the read timeout.
    """
    app = FastAPI()
    bomb = gzip_bomb(64 * 1_048_576)

    async def flood() -> AsyncIterator[bytes]:
        yield b'{"items": [1'
        while True:
            yield b",1" * 65_536
            await asyncio.sleep(0)  # let the server notice the router hanging up (else this loop hogs it)

    async def drip() -> AsyncIterator[bytes]:
        yield b'{"items": [1'
        while True:
            await asyncio.sleep(0.2)  # the fault being simulated
            yield b",1"

    @app.get("/recommend/{user_id}")
    async def recommend(user_id: str) -> Response:
        if user_id.startswith("bomb"):
            return Response(bomb, media_type="application/json", headers={"Content-Encoding": "gzip"})
        return StreamingResponse(flood() if user_id.startswith("flood") else drip(), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": "runaway", "version": "0"}

    return app


@pytest.mark.parametrize("backend_client", ["aiohttp", "httpx"])
def test_backend_answer_that_never_ends_or_explodes_is_cut_off_and_the_router_survives(
    models: dict[str, Service], start_router: RouterFactory, backend_client: str
) -> None:
    users = {
        mode: next(
            f"{mode}-{i}" for i in range(1000) if assigned([f"{mode}-{i}"], SALT, WEIGHTS)[f"{mode}-{i}"] == "model_b"
        )
        for mode in RUNAWAY_MODES
    }
    with serve(create_runaway_backend()) as runaway_url:
        urls = {"model_a": models["model_a"].url, "model_b": runaway_url}
        router = start_router(experiment(urls, backend_client=backend_client))
        process = psutil.Process(router.pid)
        rss_before = process.memory_info().rss

        def timed(user: str) -> tuple[int, float, str]:
            started = time.monotonic()
            response = httpx.get(f"{router.url}/recommend/{user}", timeout=30)
            return response.status_code, time.monotonic() - started, response.text

        with ThreadPoolExecutor(len(RUNAWAY_MODES)) as pool:
            answers = dict(zip(RUNAWAY_MODES, pool.map(timed, users.values()), strict=True))
        rss_after = process.memory_info().rss
        assert httpx.get(f"{router.url}/recommend/{USERS_A[0]}").status_code == 200  # still serving
        assert router.stop() in CLEAN_EXIT_CODES
    print(
        f"\n{backend_client}: { ({m: (a[0], round(a[1], 2)) for m, a in answers.items()}) }, "
        f"router RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB"
    )
    for mode, (status, seconds, text) in answers.items():
        # The cause is the status (502 for a body cut at 1 MiB, 504 for the drip's deadline); the clock only
        # shows the cut came with the deadline, not at the client's 30 s timeout: twice the budget is room.
        assert seconds < 2 * TIMEOUT_BUDGET + SLACK, f"{mode}: answered after {seconds:.2f}s"
        assert status == (504 if mode == "drip" else 502), (mode, text)
    assert "larger than" in answers["flood"][2] and "larger than" in answers["bomb"][2]
    assert rss_after - rss_before < 64 * 2**20, "the router buffered a runaway answer"
    stored = rows(store_path(router), "SELECT user_id, status, error FROM exposures ORDER BY user_id")
    assert stored == sorted(
        [
            (users["bomb"], 502, "bad_response"),
            (users["drip"], 504, "timeout"),
            (users["flood"], 502, "bad_response"),
            (USERS_A[0], 200, None),
        ]
    )
