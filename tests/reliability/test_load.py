"""Sustained concurrent traffic with feedback: nothing lost, no 5xx, and the router's memory stays flat.

    RELIABILITY_LOAD_ANSWERS=60000 pytest tests/reliability/test_load.py -s     # longer run, figures printed

The router keeps the last 20,000 exposures in memory for attribution, so its RSS grows until that index is
full and must be flat afterwards: the run first warms up past 20,000 answers, then measures RSS across a
second stretch of `RELIABILITY_LOAD_ANSWERS` answers (default 20,000; counted, not timed, so a slow machine
runs longer instead of measuring less). Filling the index costs about 1.2 KB per exposure
(25 MB for 20,000, measured), so a leak of even a third of an exposure per request would add more than the
tolerance over the stretch's 20,000 answers. The tolerance, 8 MB, is what a steady-state router may still
move by: SQLite's page cache (up to 2 MB per connection, two connections), allocator arenas not yet reused,
and the stretch's pending-queue high-water mark (measured: under 1 MB).
"""

from __future__ import annotations

import inspect
import os
import statistics
import threading
import time

import httpx
import psutil
import pytest

from abtest.processes import CLEAN_EXIT_CODES
from router.store import OutcomeStore
from tests.reliability.conftest import RouterFactory, experiment, urls_of
from tests.reliability.load import Load
from tests.reliability.observe import metric, rows, store_counters
from tests.reliability.services import Service, store_path
from tests.router.conftest import wait_until

CONNECTIONS = 50
CLICK_SHARE = 0.25
USERS = [f"user-{i}" for i in range(5_000)]
INDEX_SIZE = inspect.signature(OutcomeStore).parameters["index_size"].default  # what the router uses
RSS_TOLERANCE = 8 * 1024 * 1024


@pytest.mark.slow
def test_sustained_load_with_feedback_loses_nothing_and_router_memory_stays_flat(
    models: dict[str, Service], start_router: RouterFactory
) -> None:
    stretch = int(os.environ.get("RELIABILITY_LOAD_ANSWERS", "20000"))
    router = start_router(experiment(urls_of(models)))
    process = psutil.Process(router.pid)
    rss_start = process.memory_info().rss
    samples: list[tuple[float, int, int]] = []  # (seconds since start, answers so far, router RSS)
    sampling = threading.Event()

    with Load(router.url, users=USERS, concurrency=CONNECTIONS, clicks=CLICK_SHARE) as load:

        def sample() -> None:
            started = time.monotonic()
            while not sampling.wait(0.5):  # the sampler's own period, not synchronisation
                samples.append((time.monotonic() - started, load.tally.answered, process.memory_info().rss))

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        load.wait_for(lambda t: t.answered >= INDEX_SIZE + 2_000, timeout=120, what="the attribution index to fill")
        warm_answers, rss_warm = load.tally.answered, process.memory_info().rss
        load.wait_for(lambda t: t.answered >= warm_answers + stretch, timeout=600, what="the measured stretch")
        rss_end, end_answers = process.memory_info().rss, load.tally.answered
        sampling.set()
        sampler.join()
    tally = load.tally
    elapsed = load.elapsed

    wait_until(lambda: store_counters(router.url)["pending"] == 0, what="the queue to drain")
    counters = store_counters(router.url)
    text = httpx.get(router.url + "/metrics").text
    assert router.stop() in CLEAN_EXIT_CODES

    requests = tally.answered + tally.feedback_sent
    latencies = sorted(a.seconds for a in tally.answers)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
    measured = end_answers - warm_answers
    print(
        f"\nload: {CONNECTIONS} connections, {elapsed:.1f}s, {tally.answered} recommendations + "
        f"{tally.feedback_sent} clicks = {requests} requests ({requests / elapsed:.0f} req/s); "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; statuses {dict(tally.statuses())}; "
        f"router RSS {rss_start / 2**20:.1f} MB at start, {rss_warm / 2**20:.1f} MB after {warm_answers} answers "
        f"(index full), {rss_end / 2**20:.1f} MB after {measured} more; "
        f"events written {counters['written']}, lost {counters['lost']}, store errors {counters['errors']}"
    )
    print("RSS samples (s, answers, MB):", [(round(t, 1), n, round(r / 2**20, 1)) for t, n, r in samples[::4]])

    assert not tally.transport_errors and not tally.feedback_errors, load.summary()
    assert {status for _, status in tally.statuses()} == {200}, "the router answered with an error"
    assert metric(text, "router_backend_errors_total") == 0
    assert len(tally.acked_feedback) == tally.feedback_sent, load.summary()  # every click acknowledged
    assert counters["lost"] == {"exposure": 0, "feedback": 0, "variant_info": 0, "shadow_call": 0}
    assert counters["errors"] == {}
    assert counters["written"]["exposure"] == tally.answered
    assert counters["written"]["feedback"] == tally.feedback_sent
    store = store_path(router)
    assert rows(store, "SELECT COUNT(*) FROM exposures") == [(tally.answered,)]
    assert rows(store, "SELECT COUNT(*) FROM feedback") == [(tally.feedback_sent,)]
    assert measured >= stretch
    assert rss_end - rss_warm < RSS_TOLERANCE, (
        f"router RSS grew {(rss_end - rss_warm) / 2**20:.1f} MB over {measured} requests after warm-up"
    )
