"""`abtest bench shadow`: what a shadow costs live traffic, end to end and in the dispatcher itself.

End to end (issue 16's targets, one run): the real model servers, a third one from the same code as the
shadow (`python -m recsys.server --model model_a`), and routers on a store each - no shadow, one shadow at
fraction 0.1, one at 1.0, and one at 1.0 whose shadow is an nginx stub answering a fixed list (so the router's
own cost shows apart from the shadow model's compute, which here shares the two cores) - driven by the same
load client (wrk, else aiohttp), alternating over rounds. The table shows medians over rounds, the router's
CPU per request (from /proc) and the shadow's counters; the targets: live p50 at 1 connection rises by <= 0.2
ms at fraction 1.0, throughput at 50 connections >= 0.9x at fraction 0.1; at 1.0 the throughput ratio and the
CPU per shadow call are reported.

The dispatcher alone (in-process, no network), so the figures are its own overhead:

- accepted: every submission is run by a call that answers at once; CPU per shadow call, submit to sink;
- dropped: the backend hangs, the queue is full; CPU per refused `submit` (what a flood costs the hot path);
- memory: traced memory after `submissions` more jobs at a hung backend (bounded: it does not grow with them).

Runs on uvloop, the router's event loop (uvicorn[standard]); on the default asyncio loop the per-call cost is
about 1.7x (mostly the call backstop's timer, which uvloop keeps in C).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvloop
import yaml

from abtest.bench.load import run_load
from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from recsys.training import MODEL_NAMES, train_and_save, trainer
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
    results_dir: Path,
    *,
    rounds: int = 3,
    seconds: float = 5.0,
    levels: tuple[int, ...] = (1, 50),
    submissions: int = 200_000,
) -> dict[str, Any]:
    """Both benchmarks; prints their tables and writes results/bench-shadow.json."""
    router = run_router(rounds=rounds, seconds=seconds, levels=levels)
    print(format_router_table(router))
    dispatcher = run_dispatcher(submissions)
    report = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "router": router, "dispatcher": dispatcher}
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-shadow.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return report


def run_dispatcher(submissions: int = 200_000, concurrency: int = 16, queue_size: int = 256) -> list[dict[str, Any]]:
    """The dispatcher's own cost per accepted and per dropped call, and its memory under a flood; prints a table."""
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
    return rows


# -- end to end ---------------------------------------------------------------------------------------------

#: The routers compared: label -> (shadow fraction, shadow backend). `model` is the third model server; `stub`
#: is nginx answering a fixed list (almost no CPU), which isolates the router's own cost from the shadow model's
#: compute on a machine where everything shares two cores (only when nginx is installed).
TARGETS: dict[str, tuple[float | None, str]] = {
    "none": (None, "model"),
    "0.1": (0.1, "model"),
    "1.0": (1.0, "model"),
    "1.0 stub": (1.0, "stub"),
}

STUB_CONF = """
worker_processes 1;
daemon off;
pid {folder}/stub.pid;
error_log {folder}/stub-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location ~ ^/recommend/([^/]+)$ {{
            return 200 '{{"user_id": "$1", "items": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}';
        }}
        location / {{ return 200 '{{"status": "ok"}}'; }}
    }}
}}
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _stack(folder: Path) -> Iterator[dict[str, tuple[str, int]]]:
    """Both model servers, the shadow backends and one router per entry of TARGETS: label -> (url, pid)."""
    models_dir = folder / "models"
    for name in MODEL_NAMES:
        train_and_save(trainer(name), models_dir, data_spec="synthetic", progress=False)
    ports = {name: free_port() for name in (*MODEL_NAMES, "model_c")}
    with ExitStack() as stack:
        for name, port in ports.items():
            module = ("recsys.server", "--model", "model_a") if name == "model_c" else (name,)
            proc = start_service(
                python_module(*module, "--port", str(port)), env={"MODELS_DIR": str(models_dir)}, log=subprocess.DEVNULL
            )
            stack.callback(stop_service, proc)
            wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=60)
        shadow_urls = {"model": f"http://127.0.0.1:{ports['model_c']}"}
        if shutil.which("nginx"):
            stub_port = free_port()
            conf = folder / "stub.conf"
            conf.write_text(STUB_CONF.format(folder=folder, port=stub_port))
            stub = start_service(["nginx", "-c", str(conf), "-p", str(folder)], log=subprocess.DEVNULL)
            stack.callback(stop_service, stub)
            wait_healthy(f"http://127.0.0.1:{stub_port}", stub, timeout=10)
            shadow_urls["stub"] = f"http://127.0.0.1:{stub_port}"
        routers: dict[str, tuple[str, int]] = {}
        for label, (fraction, backend) in TARGETS.items():
            if backend not in shadow_urls:
                continue
            raw: dict[str, Any] = {
                "experiment": "bench",
                "strategy": "hash",
                "salt": "bench",
                "variants": [{"name": n, "url": f"http://127.0.0.1:{ports[n]}", "weight": 50} for n in MODEL_NAMES],
            }
            if fraction is not None:
                raw["shadow"] = [{"name": "model_c", "url": shadow_urls[backend], "fraction": fraction}]
            slug = label.replace(" ", "-")
            config = folder / f"experiment-{slug}.yaml"
            config.write_text(yaml.safe_dump(raw, sort_keys=False))
            port = free_port()
            router = start_service(
                python_module("router", "--config", str(config), "--port", str(port)),
                env={"RESULTS_DIR": str(folder / f"results-{slug}"), "ROUTER_LOG_LEVEL": "warning"},
                log=subprocess.DEVNULL,
            )
            stack.callback(stop_service, router)
            wait_healthy(f"http://127.0.0.1:{port}", router, timeout=60)
            routers[label] = (f"http://127.0.0.1:{port}", router.pid)
        yield routers


def _shadow_counters(url: str) -> dict[str, Any]:
    shadows = httpx.get(url + "/health", timeout=10).json().get("shadows", {})
    return dict(shadows.get("model_c", {}))


def run_router(*, rounds: int = 3, seconds: float = 5.0, levels: tuple[int, ...] = (1, 50)) -> dict[str, Any]:
    """Load each router at each level, alternating over rounds; medians, CPU per request, the shadow's counters."""
    with tempfile.TemporaryDirectory() as tmp, _stack(Path(tmp)) as routers:
        for url, _ in routers.values():
            run_load(url, connections=10, seconds=2)  # warm-up: pools, caches, lazy imports
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for round_number in range(rounds):
            for level in levels:
                order = list(routers.items())
                if round_number % 2:
                    order.reverse()
                for label, (url, pid) in order:
                    before, cpu = _shadow_counters(url), _cpu_seconds(pid)
                    result = run_load(url, connections=level, seconds=seconds)
                    cpu = _cpu_seconds(pid) - cpu
                    after = _shadow_counters(url)
                    delta = {
                        key: after.get(key, 0) - before.get(key, 0) for key in ("submitted", "completed", "dropped")
                    }
                    runs.setdefault((label, level), []).append(
                        {**result.as_dict(), "cpu_us_per_request": cpu / max(result.requests, 1) * 1e6, "shadow": delta}
                    )
    rows = []
    for (label, level), results in runs.items():
        rows.append(
            {
                "shadow_fraction": label,
                "connections": level,
                "rps": statistics.median(r["rps"] for r in results),
                "p50_ms": statistics.median(r["p50_ms"] for r in results),
                "p99_ms": statistics.median(r["p99_ms"] for r in results),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in results),
                "errors": sum(r["errors"] for r in results),
                "shadow_submitted": sum(r["shadow"]["submitted"] for r in results),
                "shadow_completed": sum(r["shadow"]["completed"] for r in results),
                "shadow_dropped": sum(r["shadow"]["dropped"] for r in results),
                "client": results[0]["client"],
                "rounds": results,
            }
        )
    return {
        "rounds": rounds,
        "seconds_per_run": seconds,
        "levels": list(levels),
        "rows": rows,
        "targets": _targets(rows),
    }


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(row["shadow_fraction"], row["connections"]): row for row in rows}
    targets: dict[str, Any] = {}
    for label in ("1.0", "1.0 stub"):
        if ("none", 1) in by and (label, 1) in by:
            rise = by[(label, 1)]["p50_ms"] - by[("none", 1)]["p50_ms"]
            targets[f"p50 rise at 1 conn, shadow {label} (ms)"] = round(rise, 3)
    for level in sorted({row["connections"] for row in rows} - {1}):
        for label in ("0.1", "1.0", "1.0 stub"):
            if (label, level) in by and ("none", level) in by:
                ratio = by[(label, level)]["rps"] / by[("none", level)]["rps"]
                targets[f"req/s ratio at {level} conn, shadow {label}"] = round(ratio, 3)
        for label in ("1.0", "1.0 stub"):
            if (label, level) not in by or ("none", level) not in by:
                continue
            full, none = by[(label, level)], by[("none", level)]
            calls_per_request = full["shadow_completed"] / max(sum(r["requests"] for r in full["rounds"]), 1)
            extra = full["cpu_us_per_request"] - none["cpu_us_per_request"]
            # The router's extra CPU per request, divided by the shadow calls one request made on average.
            targets[f"CPU per shadow call at {level} conn, shadow {label} (µs)"] = round(
                extra / max(calls_per_request, 1e-9), 1
            )
            targets[f"dropped share at {level} conn, shadow {label}"] = round(
                full["shadow_dropped"] / max(full["shadow_submitted"], 1), 4
            )
    return targets


def format_router_table(report: dict[str, Any]) -> str:
    header = (
        f"{'shadow':>8} {'conn':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/req':>10} "
        f"{'shadowed':>9} {'completed':>9} {'dropped':>8} {'errors':>6}"
    )
    lines = [f"medians of {report['rounds']} alternating rounds, {report['seconds_per_run']:.0f} s each", header]
    lines.append("-" * len(header))
    for row in sorted(report["rows"], key=lambda r: (r["connections"], r["shadow_fraction"])):
        lines.append(
            f"{row['shadow_fraction']:>8} {row['connections']:>5} {row['rps']:>8.0f} {row['p50_ms']:>7.2f} "
            f"{row['p99_ms']:>7.2f} {row['cpu_us_per_request']:>10.0f} {row['shadow_submitted']:>9} "
            f"{row['shadow_completed']:>9} {row['shadow_dropped']:>8} {row['errors']:>6}"
        )
    lines.append("")
    lines += [f"{name}: {value}" for name, value in report["targets"].items()]
    lines.append("targets: p50 rise <= 0.2 ms at 1 conn (shadow 1.0); req/s ratio >= 0.9 at 50 conn (shadow 0.1)")
    return "\n".join(lines)
