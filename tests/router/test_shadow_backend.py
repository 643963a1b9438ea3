"""Shadow calls over the router's real backend client to a fake model server on loopback: what gets recorded
when the shadow answers, fails, hangs past its timeout, or is killed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from router.config import Timeouts
from router.proxy import AiohttpClient
from router.shadow import ShadowJob, ShadowPool, ShadowResult, ShadowVariant, backend_call
from tests.support.fake_model import FakeModelControl, items_for, serve_fake_model

TIMEOUTS = Timeouts(connect=0.5, read=0.3, pool=0.5)
DEADLINE = 20.0


@pytest.fixture
def model_c() -> Iterator[tuple[str, FakeModelControl]]:
    control = FakeModelControl()
    with serve_fake_model("model_c", control) as url:
        yield url, control


async def shadow_requests(url: str, users: list[str], *, concurrency: int = 4) -> list[ShadowResult]:
    """Shadow one request per user (sequentially, so none is dropped) and return what the sink received."""
    received: list[ShadowResult] = []
    arrived = asyncio.Event()

    def record(result: ShadowResult) -> None:
        received.append(result)
        if len(received) == len(users):
            arrived.set()

    client = AiohttpClient(TIMEOUTS)
    pool = ShadowPool(backend_call(client), record, concurrency=concurrency, queue_size=len(users))
    try:
        async with asyncio.timeout(DEADLINE):
            await pool.configure([ShadowVariant(name="model_c", url=url, fraction=1.0)])
            for n, user in enumerate(users):
                jobs = pool.jobs_for(request_id=f"{n:032x}", phase=3, user_id=user, k=5, variant="model_a")
                assert pool.submit(jobs) == 1
            await arrived.wait()
            stats = (await pool.aclose())["model_c"]
            assert stats.completed + stats.failed_total == len(users) and stats.dropped == stats.abandoned == 0
    finally:
        await client.aclose()
    return sorted(received, key=lambda r: r.job.request_id)


def test_shadow_records_the_backends_items_and_latency(model_c: tuple[str, FakeModelControl]) -> None:
    url, control = model_c
    users = [str(u) for u in range(20)]
    results = asyncio.run(shadow_requests(url, users))
    assert [r.items for r in results] == [tuple(items_for(u, 5)) for u in users]
    assert all(r.status == 200 and r.error is None and r.latency_ms > 0 for r in results)
    assert all(r.job.phase == 3 and r.job.variant == "model_a" for r in results)
    assert sorted(control.seen) == sorted(f"/recommend/{u}?k=5" for u in users)


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [("status500", 502, "bad_response"), ("status503", 503, "unavailable"), ("garbage", 502, "bad_response")],
)
def test_shadow_failures_are_recorded_with_their_kind(
    model_c: tuple[str, FakeModelControl], fault: str, status: int, kind: str
) -> None:
    url, control = model_c
    if fault == "garbage":
        control.garbage = True
    else:
        control.status = int(fault.removeprefix("status"))
    results = asyncio.run(shadow_requests(url, ["1", "2", "3"]))
    assert [(r.status, r.error, r.items) for r in results] == [(status, kind, ())] * 3


def test_a_shadow_slower_than_its_timeout_is_recorded_as_a_timeout(model_c: tuple[str, FakeModelControl]) -> None:
    url, control = model_c
    control.delay = 1.5  # five times the 0.3 s read timeout
    results = asyncio.run(shadow_requests(url, ["1", "2"]))
    assert [(r.status, r.error) for r in results] == [(504, "timeout")] * 2
    assert all(r.latency_ms < 1500 for r in results)  # the client's timeout fired, not the model's answer


def test_a_killed_shadow_is_recorded_as_unavailable() -> None:
    with serve_fake_model("model_c") as url:
        assert asyncio.run(shadow_requests(url, ["1"]))[0].status == 200
    results = asyncio.run(shadow_requests(url, ["1", "2", "3"]))  # the server is gone: connection refused
    assert [(r.status, r.error) for r in results] == [(503, "unavailable")] * 3


def test_shadow_job_carries_the_live_request_id() -> None:
    shadow = ShadowVariant(name="model_c", url="http://c", fraction=1.0)
    job = ShadowJob(shadow, "ab" * 16, 1, "42", 10, "model_b")
    assert job.request_id == "ab" * 16 and job.shadow.as_variant().base_url == "http://c"
