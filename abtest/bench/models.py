"""`abtest bench models`: what each model server costs - training, start-up, memory, latency, throughput.

Targets (issue 4, this 2-core machine): p99 <= 10 ms at 4 connections; >= 1,000 req/s for one worker at
50 connections; start-up <= 5 s from an artefact; RSS <= 400 MB.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from abtest.bench.load import run_load
from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from recsys.recommender import FactorModel
from recsys.training import MODEL_NAMES, train_and_save, trainer


def _memory_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _in_process_latency(model: FactorModel, calls: int = 5000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    users = [str(user) for user in rng.choice(model.user_ids, calls)]
    timings = np.empty(calls)
    for index, user in enumerate(users):
        started = time.perf_counter()
        model.recommend(user, 10)
        timings[index] = time.perf_counter() - started
    return {"p50_us": float(np.percentile(timings, 50) * 1e6), "p99_us": float(np.percentile(timings, 99) * 1e6)}


def bench_model(name: str, models_dir: Path, seconds: float) -> dict[str, Any]:
    """Every figure for one model server, measured on the default synthetic data set."""
    started = time.perf_counter()
    model = train_and_save(trainer(name), models_dir, data_spec="synthetic", progress=False)
    train_wall = time.perf_counter() - started
    in_process = _in_process_latency(model)

    port = free_port()
    started = time.perf_counter()
    proc = start_service(
        python_module(name, "--port", str(port)), env={"MODELS_DIR": str(models_dir)}, log=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, timeout=60)
        startup = time.perf_counter() - started
        run_load(base, connections=4, seconds=2)  # warm-up
        at_4 = run_load(base, connections=4, seconds=seconds)
        at_50 = run_load(base, connections=50, seconds=seconds)
        memory = _memory_kib(proc.pid)
    finally:
        stop_service(proc)
    return {
        "model": name,
        "training_seconds": model.metadata["training_seconds"],
        "train_and_evaluate_wall_seconds": round(train_wall, 3),
        "startup_seconds": round(startup, 3),
        "rss_mib": round(memory["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "in_process_p50_us": round(in_process["p50_us"], 1),
        "in_process_p99_us": round(in_process["p99_us"], 1),
        "http_4conn": at_4.as_dict(),
        "http_50conn": at_50.as_dict(),
    }


def run(results_dir: Path, seconds: float = 10.0) -> list[dict[str, Any]]:
    """Benchmark both servers one after the other (never at once: they would share the 2 cores)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for number, name in enumerate(MODEL_NAMES, 1):
            print(f"models: {name} ({number}/{len(MODEL_NAMES)}): train, start, {seconds:g} s runs ...", flush=True)
            rows.append(bench_model(name, Path(folder), seconds))
    print(format_table(rows))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-models.json"
    out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'model':8} {'train s':>8} {'start s':>8} {'peak RSS MiB':>13} {'in-proc p50/p99 us':>19} "
        f"{'4 conn p50/p99 ms':>18} {'4 conn req/s':>13} {'50 conn req/s':>14} {'50 conn p99 ms':>15}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        four, fifty = row["http_4conn"], row["http_50conn"]
        lines.append(
            f"{row['model']:8} {row['training_seconds']:>8.2f} {row['startup_seconds']:>8.2f} "
            f"{row['peak_rss_mib']:>13.0f} {row['in_process_p50_us']:>9.0f}/{row['in_process_p99_us']:<9.0f} "
            f"{four['p50_ms']:>8.2f}/{four['p99_ms']:<9.2f} {four['rps']:>13.0f} {fifty['rps']:>14.0f} "
            f"{fifty['p99_ms']:>15.2f}"
        )
    lines.append("targets: p99 <= 10 ms at 4 conn; >= 1000 req/s at 50 conn; start <= 5 s; RSS <= 400 MB")
    return "\n".join(lines)
