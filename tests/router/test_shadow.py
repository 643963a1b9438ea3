"""Shadow variants: config, per-user membership, the bounded off-path dispatcher, the pool, the ASGI hook.

Every asynchronous test synchronises on events and futures, and is bounded by `asyncio.timeout` deadlines;
the only timer that fires on purpose is the dispatcher's own call backstop, which is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError
from scipy import stats as scipy_stats
from starlette.background import BackgroundTask

from router import shadow as shadow_module
from router.config import Variant
from router.errors import BackendTimeoutError, BackendUnavailableError, BadBackendResponseError
from router.metrics import ShadowCollector
from router.shadow import (
    INTERNAL_ERROR,
    ShadowDispatcher,
    ShadowJob,
    ShadowPool,
    ShadowResult,
    ShadowStats,
    ShadowVariant,
    after_response,
    is_shadowed,
    parse_shadows,
    shadow_salt,
)
from router.strategies import HashStrategy, bucket_ranges, unit_point
from tests.support.servers import serve

DEADLINE = 10.0  # seconds any one asynchronous test may take before it fails instead of hanging

C = ShadowVariant(name="model_c", url="http://model_c:8000", fraction=1.0)
D = ShadowVariant(name="model_d", url="http://model_d:8000", fraction=1.0)


def job(n: int = 0, shadow: ShadowVariant = C, user_id: str | None = None) -> ShadowJob:
    return ShadowJob(shadow, f"{n:032x}", 1, user_id or f"u{n}", 10, "model_a")


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(DEADLINE):
            return await main()

    return asyncio.run(bounded())


def balanced(stats: ShadowStats) -> bool:
    """Every submitted job is accounted for exactly once."""
    accounted = stats.completed + stats.failed_total + stats.dropped + stats.abandoned + stats.in_flight + stats.queued
    return stats.submitted == accounted


class Tally(list[Any]):
    """A list that can be awaited until it holds n entries."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, entry: Any) -> None:
        self.append(entry)
        for count, future in self._waiters:
            if len(self) >= count and not future.done():
                future.set_result(None)

    async def wait_for(self, count: int) -> list[Any]:
        if len(self) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((count, future))
            await future
        return self


class Gate:
    """A shadow call that waits until the test opens the gate; records which jobs started."""

    def __init__(self, items: Sequence[int] = (1, 2, 3)) -> None:
        self.open = asyncio.Event()
        self.started = Tally()
        self.items = list(items)

    async def __call__(self, job: ShadowJob) -> Sequence[int]:
        self.started.add(job)
        await self.open.wait()
        return self.items


class Results:
    """A result sink that can be awaited for its n-th result."""

    def __init__(self) -> None:
        self.received = Tally()

    def __call__(self, result: ShadowResult) -> None:
        self.received.add(result)

    async def wait_for(self, count: int) -> list[ShadowResult]:
        return await self.received.wait_for(count)


# -- config -------------------------------------------------------------------------------------------

URLS = [
    ("http://model_c:8000", True),
    ("http://127.0.0.1:9000/", True),
    ("https://models.internal/c/", True),
    ("http://user:pw@model_c:8000", False),
    ("http://model_c:8000?x=1", False),
    ("http://model_c:8000#top", False),
    ("ftp://model_c", False),
    ("model_c:8000", False),
]


@pytest.mark.parametrize(("url", "accepted"), URLS)
def test_shadow_url_is_validated_exactly_like_a_variant_url(url: str, accepted: bool) -> None:
    def accepts(build: Callable[[], object]) -> bool:
        try:
            build()
        except ValidationError:
            return False
        return True

    assert accepts(lambda: Variant(name="model_c", url=url, weight=1)) is accepted
    assert accepts(lambda: ShadowVariant(name="model_c", url=url, fraction=0.5)) is accepted


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "bad name", "url": "http://c", "fraction": 0.5},
        {"name": "c", "url": "http://c", "fraction": 1.5},
        {"name": "c", "url": "http://c", "fraction": -0.1},
        {"name": "c", "url": "http://c", "fraction": float("nan")},
        {"name": "c", "url": "http://c", "fraction": 0.5, "weight": 1},
    ],
)
def test_shadow_variant_refuses_bad_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ShadowVariant.model_validate(fields)


def test_parse_shadows_refuses_duplicate_names_and_variant_names() -> None:
    entry = {"name": "model_c", "url": "http://c", "fraction": 0.2}
    assert parse_shadows(None) == ()
    assert parse_shadows([entry], ["model_a", "model_b"])[0].fraction == 0.2
    with pytest.raises(ValueError, match="duplicate shadow name 'model_c'"):
        parse_shadows([entry, entry])
    with pytest.raises(ValueError, match="has the name of a variant"):
        parse_shadows([{**entry, "name": "model_a"}], ["model_a", "model_b"])
    with pytest.raises(ValidationError):
        parse_shadows([{**entry, "url": "http://c?x=1"}])


# -- membership ---------------------------------------------------------------------------------------


def test_shadow_membership_is_pinned_to_the_growthbook_hash() -> None:
    """Golden values: a shadow's point is unit_point('shadow/<name>/', user); they must never change."""
    assert shadow_salt("model_c") == "shadow/model_c/"
    golden = {"1": 0.7345, "2": 0.7916, "42": 0.6353, "alice": 0.2127, "user-7": 0.3989, "0": 0.8272}
    for user_id, point in golden.items():
        assert unit_point(C.salt, user_id) == point
        assert is_shadowed(C.model_copy(update={"fraction": 0.5}), user_id) is (point < 0.5)


def test_shadow_membership_is_the_same_on_every_call_and_every_copy() -> None:
    shadow = ShadowVariant(name="model_c", url="http://c", fraction=0.3)
    again = ShadowVariant.model_validate(shadow.model_dump(mode="json"))  # another replica's copy
    users = [f"user-{i}" for i in range(2000)]
    first = [is_shadowed(shadow, u) for u in users]
    assert first == [is_shadowed(shadow, u) for u in users] == [is_shadowed(again, u) for u in users]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.2, 0.5, 0.9])
def test_shadow_fraction_is_respected_within_the_binomial_band(fraction: float) -> None:
    shadow = ShadowVariant(name="model_c", url="http://c", fraction=fraction)
    n = 20_000
    shadowed = sum(is_shadowed(shadow, str(i)) for i in range(n))
    low, high = scipy_stats.binom.ppf([0.005, 0.995], n, fraction)  # the 99% band
    assert low <= shadowed <= high


def test_fraction_zero_shadows_nobody_and_one_shadows_everybody() -> None:
    users = [str(i) for i in range(5000)]
    assert not any(is_shadowed(C.model_copy(update={"fraction": 0.0}), u) for u in users)
    assert all(is_shadowed(C.model_copy(update={"fraction": 1.0}), u) for u in users)


def test_shadow_membership_is_independent_of_the_ab_split_and_of_other_shadows() -> None:
    """Chi-square tests of independence over 20,000 users: shadow x arm, and shadow c x shadow d."""
    users = [str(i) for i in range(20_000)]
    split = HashStrategy(bucket_ranges((("model_a", 0.5), ("model_b", 0.5))), salt="rec-ab-1")
    c = C.model_copy(update={"fraction": 0.2})
    d = D.model_copy(update={"fraction": 0.2})
    arms = [split.assign(u).variant == "model_a" for u in users]
    in_c = [is_shadowed(c, u) for u in users]
    in_d = [is_shadowed(d, u) for u in users]
    for left, right in ((arms, in_c), (in_c, in_d)):
        pairs = list(zip(left, right, strict=True))
        table = [[pairs.count((a, b)) for b in (True, False)] for a in (True, False)]
        assert scipy_stats.chi2_contingency(table).pvalue > 0.001
    for arm in (True, False):  # within each arm, the fraction holds
        n = sum(1 for a in arms if a is arm)
        shadowed = sum(1 for a, s in zip(arms, in_c, strict=True) if a is arm and s)
        low, high = scipy_stats.binom.ppf([0.005, 0.995], n, 0.2)
        assert low <= shadowed <= high


# -- the dispatcher -----------------------------------------------------------------------------------


def test_dispatcher_bounds_in_flight_and_queued_and_counts_drops_with_a_hung_backend() -> None:
    async def main() -> None:
        gate, results = Gate(), Results()
        dispatcher = ShadowDispatcher(gate, results, concurrency=4, queue_size=8)
        baseline = len(asyncio.all_tasks())
        accepted = [dispatcher.submit(job(i)) for i in range(1000)]
        await gate.started.wait_for(4)
        stats = dispatcher.stats()
        assert accepted.count(True) == 12 and accepted[:12] == [True] * 12
        assert (stats.submitted, stats.in_flight, stats.queued, stats.dropped) == (1000, 4, 8, 988)
        assert len(asyncio.all_tasks()) - baseline == 4  # one task per call in flight, never one per job
        assert len(gate.started) == 4 and balanced(stats)
        gate.open.set()
        await results.wait_for(12)
        stats = dispatcher.stats()
        assert (stats.completed, stats.in_flight, stats.queued, stats.dropped) == (12, 0, 0, 988)
        assert sorted(r.job.request_id for r in results.received) == [job(i).request_id for i in range(12)]
        assert all(r.items == (1, 2, 3) and r.status == 200 and r.error is None for r in results.received)
        assert balanced(stats)
        await dispatcher.aclose()

    run(main)


def test_dispatcher_memory_stays_bounded_under_a_flood_at_a_hung_backend() -> None:
    """100,000 more submissions to a hung backend leave memory where 20,000 left it (within 64 KiB)."""

    async def main() -> None:
        gate = Gate()
        dispatcher = ShadowDispatcher(gate, Results(), concurrency=16, queue_size=256)
        jobs = [job(i) for i in range(64)]
        tracemalloc.start()
        try:
            for i in range(20_000):
                dispatcher.submit(jobs[i % 64])
            before, _ = tracemalloc.get_traced_memory()
            for i in range(100_000):
                dispatcher.submit(jobs[i % 64])
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        stats = dispatcher.stats()
        assert (stats.in_flight, stats.queued, stats.dropped) == (16, 256, 120_000 - 272)
        assert after - before < 64 * 1024
        final = await dispatcher.aclose(grace=0)  # some calls never started: abandoned all the same
        assert final.abandoned == 272 and final.in_flight == final.queued == 0 and balanced(final)

    run(main)


def test_dispatcher_counts_failures_by_kind_and_keeps_working() -> None:
    failures: dict[str, BaseException] = {
        "u-timeout": BackendTimeoutError("model_c", "slow"),
        "u-unavailable": BackendUnavailableError("model_c", "refused"),
        "u-bad": BadBackendResponseError("model_c", "HTTP 500"),
        "u-bug": RuntimeError("a bug in the call"),
    }

    async def call(job: ShadowJob) -> Sequence[int]:
        if job.user_id in failures:
            raise failures[job.user_id]
        return [7, 8]

    async def main() -> None:
        results = Results()
        dispatcher = ShadowDispatcher(call, results, concurrency=2, queue_size=10)
        users = [*failures, "u-ok", "u-ok2"]
        for n, user in enumerate(users):
            assert dispatcher.submit(job(n, user_id=user))
        await results.wait_for(len(users))
        by_user = {r.job.user_id: r for r in results.received}
        assert {u: (r.status, r.error) for u, r in by_user.items()} == {
            "u-timeout": (504, "timeout"),
            "u-unavailable": (503, "unavailable"),
            "u-bad": (502, "bad_response"),
            "u-bug": (500, INTERNAL_ERROR),
            "u-ok": (200, None),
            "u-ok2": (200, None),
        }
        assert by_user["u-bad"].items == () and by_user["u-ok"].items == (7, 8)
        stats = dispatcher.stats()
        assert stats.completed == 2
        assert stats.failed == {"timeout": 1, "unavailable": 1, "bad_response": 1, INTERNAL_ERROR: 1}
        assert balanced(stats)
        await dispatcher.aclose()

    run(main)


def test_dispatcher_backstop_fails_a_call_that_outlives_its_deadline() -> None:
    async def main() -> None:
        gate, results = Gate(), Results()
        dispatcher = ShadowDispatcher(gate, results, concurrency=1, queue_size=1, call_timeout=0.05)
        dispatcher.submit(job(0))
        dispatcher.submit(job(1))
        received = await results.wait_for(2)  # the backstop fires for both, one after the other
        assert [(r.status, r.error) for r in received] == [(504, "timeout"), (504, "timeout")]
        assert received[0].latency_ms >= 50 * 0.9 and received[1].wait_ms >= received[0].latency_ms * 0.9
        assert dispatcher.stats().failed == {"timeout": 2}

    run(main)


def test_dispatcher_serves_a_slow_backend_in_submission_order() -> None:
    async def main() -> None:
        gates = [asyncio.Event() for _ in range(4)]

        async def call(job: ShadowJob) -> Sequence[int]:
            await gates[int(job.request_id, 16)].wait()
            return [int(job.request_id, 16)]

        results = Results()
        dispatcher = ShadowDispatcher(call, results, concurrency=1, queue_size=3)
        assert all(dispatcher.submit(job(i)) for i in range(4))
        assert not dispatcher.submit(job(9))  # one in flight, three waiting: the fifth is dropped
        for i, gate in enumerate(gates):
            gate.set()
            received = await results.wait_for(i + 1)
            assert received[-1].items == (i,)
            assert dispatcher.stats().queued == max(0, 2 - i)  # the next job started at once
        assert dispatcher.stats().dropped == 1

    run(main)


def test_dispatcher_counts_recorder_failures_and_keeps_recording() -> None:
    async def main() -> None:
        recorded: list[ShadowResult] = []
        done = asyncio.Event()

        def flaky(result: ShadowResult) -> None:
            recorded.append(result)
            if len(recorded) == 6:
                done.set()
            if len(recorded) % 2:
                raise OSError("store is full")

        async def call(job: ShadowJob) -> Sequence[int]:
            return [1]

        dispatcher = ShadowDispatcher(call, flaky, concurrency=2, queue_size=10)
        for i in range(6):
            dispatcher.submit(job(i))
        await done.wait()
        stats = dispatcher.stats()
        assert (stats.completed, stats.callback_errors) == (6, 3)

    run(main)


def test_aclose_drains_calls_that_finish_within_the_grace() -> None:
    async def main() -> None:
        gate, results = Gate(), Results()
        dispatcher = ShadowDispatcher(gate, results, concurrency=2, queue_size=4)
        for i in range(6):
            dispatcher.submit(job(i))
        closing = asyncio.create_task(dispatcher.aclose(grace=DEADLINE))
        await gate.started.wait_for(2)
        gate.open.set()
        final = await closing
        assert (final.completed, final.abandoned, final.dropped, final.in_flight, final.queued) == (6, 0, 0, 0, 0)
        assert final.closed and balanced(final) and len(results.received) == 6
        assert not dispatcher.submit(job(99))  # closed: refused and counted, not raised
        assert dispatcher.stats().dropped == 1

    run(main)


def test_aclose_abandons_hung_calls_after_the_grace_and_delivers_nothing_late() -> None:
    async def main() -> None:
        gate, results = Gate(), Results()
        dispatcher = ShadowDispatcher(gate, results, concurrency=3, queue_size=5)
        for i in range(10):
            dispatcher.submit(job(i))
        final = await dispatcher.aclose(grace=0.01)
        assert (final.abandoned, final.dropped, final.in_flight, final.queued) == (8, 2, 0, 0)
        assert balanced(final) and results.received == [] and dispatcher.stats() == final
        assert await dispatcher.aclose() == final  # closing twice is harmless

    run(main)


def test_aclose_leaves_behind_a_call_that_ignores_cancellation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_module, "CANCEL_GRACE", 0.01)

    async def main() -> None:
        release, returned = asyncio.Event(), asyncio.Event()

        async def stubborn(job: ShadowJob) -> Sequence[int]:
            while True:
                try:
                    await release.wait()
                    break
                except asyncio.CancelledError:
                    continue  # the misbehaviour under test
            returned.set()
            return [1]

        results = Results()
        dispatcher = ShadowDispatcher(stubborn, results, concurrency=1, queue_size=0)
        dispatcher.submit(job(0))
        final = await dispatcher.aclose(grace=0.01)
        assert final.abandoned == 1 and final.in_flight == 0
        release.set()
        await returned.wait()  # the dispatcher handles the late return in the same step
        assert results.received == [] and dispatcher.stats() == final

    run(main)


def test_dispatcher_refuses_bad_limits() -> None:
    async def call(job: ShadowJob) -> Sequence[int]:
        return []

    with pytest.raises(ValueError, match="concurrency"):
        ShadowDispatcher(call, lambda r: None, concurrency=0)
    with pytest.raises(ValueError, match="queue_size"):
        ShadowDispatcher(call, lambda r: None, queue_size=-1)
    with pytest.raises(ValueError, match="call_timeout"):
        ShadowDispatcher(call, lambda r: None, call_timeout=0)


# -- the pool -----------------------------------------------------------------------------------------


def test_pool_reload_adds_keeps_and_removes_shadows() -> None:
    async def main() -> None:
        gate, results = Gate(), Results()
        pool = ShadowPool(gate, results, concurrency=1, queue_size=1)
        assert await pool.configure([C]) == {}
        jobs = pool.jobs_for(request_id="0" * 32, phase=1, user_id="42", k=5, variant="model_a")
        assert [(j.shadow.name, j.k, j.variant) for j in jobs] == [("model_c", 5, "model_a")]
        assert pool.submit(jobs) == 1
        moved = C.model_copy(update={"url": "http://model_c_v2:8000"})
        assert await pool.configure([moved, D]) == {}  # c keeps its dispatcher and counters; d is new
        assert pool.stats()["model_c"].in_flight == 1 and pool.stats()["model_d"].submitted == 0
        new_jobs = pool.jobs_for(request_id="1" * 32, phase=1, user_id="42", k=5, variant="model_a")
        assert {j.shadow.base_url for j in new_jobs} == {"http://model_c_v2:8000", "http://model_d:8000"}
        removed = await pool.configure([D], close_grace=0.01)
        assert set(removed) == {"model_c"} and removed["model_c"].abandoned == 1
        assert pool.submit(jobs) == 0  # a job for a removed shadow goes nowhere
        assert set(pool.stats()) == {"model_d"}
        final = await pool.aclose(grace=0.01)
        assert set(final) == {"model_d"} and pool.shadows == ()

    run(main)


def test_pool_jobs_follow_each_shadows_fraction() -> None:
    async def main() -> None:
        pool = ShadowPool(Gate(), Results())
        await pool.configure([C.model_copy(update={"fraction": 0.0}), D])
        jobs = [pool.jobs_for(request_id="0" * 32, phase=1, user_id=str(u), k=10, variant="a") for u in range(200)]
        assert all([j.shadow.name for j in js] == ["model_d"] for js in jobs)
        await pool.aclose()

    run(main)


def test_pool_a_hung_shadow_does_not_starve_another() -> None:
    async def main() -> None:
        results = Results()
        hung = Gate()

        async def call(job: ShadowJob) -> Sequence[int]:
            if job.shadow.name == "model_c":
                return await hung(job)
            return [4]

        pool = ShadowPool(call, results, concurrency=2, queue_size=2)
        await pool.configure([C, D])
        for n in range(50):  # one live request at a time, each shadowed by both
            pool.submit(pool.jobs_for(request_id=f"{n:032x}", phase=1, user_id=str(n), k=10, variant="model_a"))
            received = await results.wait_for(n + 1)  # model_d answers every one while model_c hangs
        assert {r.job.shadow.name for r in received} == {"model_d"}
        stats = pool.stats()
        assert stats["model_d"].completed == 50 and stats["model_c"].dropped == 46
        await pool.aclose(grace=0.01)

    run(main)


# -- after the live answer ----------------------------------------------------------------------------


def test_after_response_runs_once_after_the_last_body_message() -> None:
    async def main() -> None:
        events: list[str] = []

        async def send(message: Any) -> None:
            events.append(f"{message['type']}:{message.get('more_body', False)}")

        wrapped = after_response(send, lambda: events.append("submit"))
        await wrapped({"type": "http.response.start", "status": 200, "headers": []})
        await wrapped({"type": "http.response.body", "body": b"a", "more_body": True})
        await wrapped({"type": "http.response.body", "body": b"b"})
        await wrapped({"type": "http.response.body", "body": b""})
        assert events == [
            "http.response.start:False",
            "http.response.body:True",
            "http.response.body:False",
            "submit",
            "http.response.body:False",
        ]

    run(main)


def live_app(pool: ShadowPool) -> Any:
    """A tiny ASGI router: answers /recommend/<user> at once, then submits the shadow jobs; /stats shows the pool."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await pool.configure([C])
                    await send({"type": "lifespan.startup.complete"})
            await pool.aclose(grace=0.01)
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/stats":
            stats = pool.stats()["model_c"]
            body = (
                f'{{"submitted": {stats.submitted}, "in_flight": {stats.in_flight}, '
                f'"queued": {stats.queued}, "dropped": {stats.dropped}}}'
            ).encode()
        else:
            user_id = scope["path"].rsplit("/", 1)[-1]
            jobs = pool.jobs_for(request_id="0" * 32, phase=1, user_id=user_id, k=10, variant="model_a")
            send = after_response(send, lambda: pool.submit(jobs))
            body = b'{"items": [1, 2, 3]}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def test_live_answers_arrive_while_the_shadow_hangs_over_a_real_socket() -> None:
    """200 live requests over uvicorn while every shadow call hangs forever: each answer arrives (the client's
    5 s timeout would fail it otherwise), and the pool holds 4 calls and 8 jobs, having dropped the rest."""

    async def hang(job: ShadowJob) -> Sequence[int]:
        await asyncio.Event().wait()
        return []

    pool = ShadowPool(hang, lambda result: None, concurrency=4, queue_size=8)
    with serve(live_app(pool)) as base_url, httpx.Client(base_url=base_url, timeout=5.0) as client:
        for n in range(200):
            response = client.get(f"/recommend/{n}")
            assert response.status_code == 200 and response.json() == {"items": [1, 2, 3]}
        # The submit ran in the same loop step as the body write, before the client could ask again.
        stats = client.get("/stats").json()
    assert stats == {"submitted": 200, "in_flight": 4, "queued": 8, "dropped": 188}


def test_a_fastapi_route_submits_in_a_background_task_after_its_response() -> None:
    """The FastAPI route's way: `Response(background=BackgroundTask(pool.submit_in_background, jobs))`. The
    coroutine runs on the event loop after the body is sent (a plain function would run in a thread, where
    `submit` has no loop)."""

    async def hang(job: ShadowJob) -> Sequence[int]:
        await asyncio.Event().wait()
        return []

    pool = ShadowPool(hang, lambda result: None, concurrency=2, queue_size=3)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.configure([C])
        yield
        await pool.aclose(grace=0.01)

    app = FastAPI(lifespan=lifespan)

    @app.get("/recommend/{user_id}")
    async def recommend(user_id: str) -> Response:
        jobs = pool.jobs_for(request_id="0" * 32, phase=1, user_id=user_id, k=10, variant="model_a")
        return Response(
            b'{"items": []}', media_type="application/json", background=BackgroundTask(pool.submit_in_background, jobs)
        )

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        current = pool.stats()["model_c"]
        return {"submitted": current.submitted, "in_flight": current.in_flight, "dropped": current.dropped}

    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=5.0) as client:
        assert all(client.get(f"/recommend/{n}").status_code == 200 for n in range(20))
        assert client.get("/stats").json() == {"submitted": 20, "in_flight": 2, "dropped": 15}


def test_shadow_collector_exposes_every_counter_by_shadow() -> None:
    stats = ShadowStats(
        submitted=10,
        completed=5,
        failed={"timeout": 2},
        dropped=1,
        abandoned=0,
        in_flight=1,
        queued=1,
        callback_errors=0,
        concurrency=4,
        queue_size=8,
        closed=False,
    )
    registry = CollectorRegistry()
    registry.register(ShadowCollector(lambda: {"model_c": stats}))
    text = generate_latest(registry).decode()
    for line in (
        'router_shadow_submitted_total{shadow="model_c"} 10.0',
        'router_shadow_calls_total{outcome="completed",shadow="model_c"} 5.0',
        'router_shadow_calls_total{outcome="timeout",shadow="model_c"} 2.0',
        'router_shadow_calls_total{outcome="dropped",shadow="model_c"} 1.0',
        'router_shadow_in_flight{shadow="model_c"} 1.0',
        'router_shadow_queued{shadow="model_c"} 1.0',
    ):
        assert line in text
