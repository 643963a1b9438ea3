"""`abtest bench router --workers-cpu`: what a second router process on the same store costs per request.

The same model servers, load client and load serve one router process (`python -m router`) and then two
(`--workers 2`, sharing the port and one SQLite store in WAL mode), in alternating rounds. The figure is the
router's CPU time per 1,000 answered requests, read from /proc (utime + stime of every router process, the
supervisor included): on 2 shared cores, where the load client and the backends compete for the same CPUs,
throughput and latency say more about the machine than about the router, while CPU per request says what
sharing the store costs. Target (issue 17): two processes within 15% of one. Throughput is reported too.

    abtest bench router --workers-cpu --rounds 3 --seconds 5
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from abtest.bench.load import run_load
from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from recsys.training import MODEL_NAMES, train_and_save, trainer

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its children still running (the workers of a supervisor), from /proc."""
    total = 0.0
    for process in (pid, *children_of(pid)):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of proc(5), after "pid (comm)"
    return total


def children_of(pid: int) -> list[int]:
    """The running processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def run(results_dir: Path, *, rounds: int = 3, seconds: float = 5.0, connections: int = 20) -> dict[str, Any]:
    """Measure, print the table, write results/bench-router-workers.json; returns what it wrote."""
    print("router workers: training and starting the model servers and the routers ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        ports = {name: free_port() for name in MODEL_NAMES}
        for name in MODEL_NAMES:
            train_and_save(trainer(name), folder / "models", data_spec="synthetic", progress=False)
            proc = start_service(
                python_module(name, "--port", str(ports[name])),
                env={"MODELS_DIR": str(folder / "models")},
                log=subprocess.DEVNULL,
            )
            stack.callback(stop_service, proc)
            wait_healthy(f"http://127.0.0.1:{ports[name]}", proc, timeout=60)
        config = folder / "experiment.yaml"
        variants = [{"name": n, "url": f"http://127.0.0.1:{ports[n]}", "weight": 50} for n in MODEL_NAMES]
        config.write_text(
            yaml.safe_dump({"experiment": "bench", "strategy": "hash", "salt": "b", "variants": variants})
        )
        routers: dict[int, tuple[str, int]] = {}
        for workers in (1, 2):
            port = free_port()
            proc = start_service(
                python_module("router", "--config", str(config), "--port", str(port), "--workers", str(workers)),
                env={"RESULTS_DIR": str(folder / f"results-{workers}"), "ROUTER_LOG_LEVEL": "warning"},
                log=subprocess.DEVNULL,
            )
            stack.callback(stop_service, proc)
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, timeout=60)
            run_load(url, connections=connections, seconds=2)  # warm-up (both workers: many connections)
            routers[workers] = (url, proc.pid)
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for round_number in range(rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)  # alternate: the machine's noise hits both alike
            for workers in order:
                url, pid = routers[workers]
                print(f"router workers: round {round_number + 1}/{rounds}, {workers} process(es)", flush=True)
                before = cpu_seconds(pid)
                result = run_load(url, connections=connections, seconds=seconds)
                used = cpu_seconds(pid) - before
                answered = max(result.requests - result.errors, 1)
                runs[workers].append(
                    {"rps": result.rps, "cpu_ms_per_1000": 1000 * 1000 * used / answered, "errors": result.errors}
                )
    rows: dict[int, dict[str, Any]] = {
        workers: {
            "processes": workers,
            "rps": statistics.median(r["rps"] for r in measured),
            "cpu_ms_per_1000": statistics.median(r["cpu_ms_per_1000"] for r in measured),
            "errors": sum(int(r["errors"]) for r in measured),
            "rounds": measured,
        }
        for workers, measured in runs.items()
    }
    ratio = rows[2]["cpu_ms_per_1000"] / rows[1]["cpu_ms_per_1000"]
    report = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "connections": connections,
        "seconds_per_run": seconds,
        "store": "sqlite (WAL), one file per router",
        "rows": list(rows.values()),
        "cpu_ratio_2_over_1": ratio,
        "target": "cpu_ratio_2_over_1 <= 1.15",
    }
    print(format_table(report))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-router-workers.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"router processes on one store, {report['connections']} connections, "
        f"medians of {len(report['rows'][0]['rounds'])} runs",
        f"{'processes':>9}  {'req/s':>8}  {'router CPU ms / 1,000 req':>26}  {'errors':>6}",
    ]
    for row in report["rows"]:
        lines.append(f"{row['processes']:>9}  {row['rps']:>8.0f}  {row['cpu_ms_per_1000']:>26.1f}  {row['errors']:>6}")
    verdict = "met" if report["cpu_ratio_2_over_1"] <= 1.15 else "NOT met"
    lines.append(f"CPU per request, 2 processes / 1: {report['cpu_ratio_2_over_1']:.3f} (target <= 1.15: {verdict})")
    return "\n".join(lines)
