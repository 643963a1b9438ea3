"""`abtest bench shadow` (to be wired): what the shadow dispatcher itself costs the router's event loop.

Three in-process runs, no network, so the figures are the dispatcher's own overhead (the HTTP call to a
shadow backend comes on top, and is measured by the router bench with a shadow configured):

- accepted: every submission is run by a call that answers at once; CPU per shadow call, submit to sink;
- dropped: the backend hangs, the queue is full; CPU per refused `submit` (what a flood costs the hot path);
- memory: traced memory after `submissions` more jobs at a hung backend (bounded: it does not grow with them).

Runs on uvloop, the router's event loop (uvicorn[standard]); on the default asyncio loop the per-call cost is
about 1.7x (mostly the call backstop's timer, which uvloop keeps in C).
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from router.shadow import ShadowDispatcher, ShadowJob, ShadowResult, ShadowVariant

_SHADOW = ShadowVariant(name="model_c", url="http://model_c:8000", fraction=1.0)


def _jobs(count: int) -> list[ShadowJob]:
    return [ShadowJob(_SHADOW, f"{n:032x}", 1, str(n), 10, "model_a") for n in range(count)]


async def _accepted(submissions: int, concurrency: int, queue_size: int) -> dict[str, Any]:
    items = list(range(10))
    batch = concurrency + queue_size  # what the dispatcher holds at once: submitted together, none dropped
    received = 0
    target = 0
    drained = asyncio.Event()

    async def answer(job: ShadowJob) -> Sequence[int]:
        return items

    def sink(result: ShadowResult) -> None:
        nonlocal received
        received += 1
        if received == target:
            drained.set()

    dispatcher = ShadowDispatcher(answer, sink, concurrency=concurrency, queue_size=queue_size)
    jobs = _jobs(1000)
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, submissions, batch):
        target = min(start + batch, submissions)
        drained.clear()
        for n in range(start, target):
            dispatcher.submit(jobs[n % len(jobs)])
        await drained.wait()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = await dispatcher.aclose()
    return {
        "run": "accepted",
        "calls": stats.completed,
        "dropped": stats.dropped,
        "cpu_us_per_call": round(cpu / submissions * 1e6, 2),
        "calls_per_s": round(submissions / wall),
    }


async def _dropped(submissions: int, concurrency: int, queue_size: int) -> dict[str, Any]:
    async def hang(job: ShadowJob) -> Sequence[int]:
        await asyncio.Event().wait()
        return []

    dispatcher = ShadowDispatcher(hang, lambda result: None, concurrency=concurrency, queue_size=queue_size)
    jobs = _jobs(1000)
    for n in range(concurrency + queue_size):
        dispatcher.submit(jobs[n % len(jobs)])
    cpu = time.process_time()
    for n in range(submissions):
        dispatcher.submit(jobs[n % len(jobs)])
    cpu = time.process_time() - cpu
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(submissions):
            dispatcher.submit(jobs[n % len(jobs)])
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = await dispatcher.aclose(grace=0)
    return {
        "run": "dropped",
        "calls": 0,
        "dropped": stats.dropped,
        "cpu_us_per_call": round(cpu / submissions * 1e6, 2),
        "memory_growth_bytes": after - before,
        "in_flight_max": concurrency,
        "queued_max": queue_size,
    }


def run(
    results_dir: Path, submissions: int = 200_000, concurrency: int = 16, queue_size: int = 256
) -> list[dict[str, Any]]:
    """Run both measurements; print a table and write results/bench-shadow.json."""
    rows = [
        uvloop.run(_accepted(submissions, concurrency, queue_size)),
        uvloop.run(_dropped(submissions, concurrency, queue_size)),
    ]
    header = f"{'run':>9} {'submissions':>12} {'calls':>8} {'dropped':>8} {'CPU µs/each':>12} {'memory +B':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['run']:>9} {submissions:>12} {row['calls']:>8} {row['dropped']:>8} "
            f"{row['cpu_us_per_call']:>12} {row.get('memory_growth_bytes', '-'):>10}"
        )
    lines.append(f"limits: {concurrency} in flight, {queue_size} queued per shadow; memory +B: after another flood")
    print("\n".join(lines))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-shadow.json"
    out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return rows
