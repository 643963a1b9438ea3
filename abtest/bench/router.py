"""`abtest bench router`: the router against the physical limit (a backend called directly) and nginx.

On loopback it starts the real model servers (one worker each), the router (hash strategy, outcome
logging on, as in production) and - when installed - nginx with `split_clients` over the same two
backends (keep-alive upstreams, one worker, like the router's one process). The same load client
(wrk, else aiohttp) drives each target at each concurrency level, alternating targets over rounds so
that the machine's noise hits them alike; the table shows medians over rounds and the ratios.

Targets (issue 7, this 2-core machine): router adds <= 1 ms to p50 over direct at 1 connection; router
throughput >= 0.5 x nginx at 50 connections; router RSS flat (+-10%) across a 60 s run at full load.

`interleave=True` (the default) adds a second router running strategy `interleave` over the same two backends
(each request asks both, concurrently, and merges) and model_b called directly (`direct_b`), so the table shows
what an interleaved request costs over the slower of the two backends called directly (the larger of the two
direct p50s). Target (issue 14): <= 1 ms p50 at 1 connection. The figure includes waiting for the slower of two
concurrent answers, which is slower than either one's median: a cost of interleaving, not of the router code.

`baseline=PATH` adds another router target run from a checkout of an earlier commit (e.g. a `git worktree`),
same config and backends, so a change's cost is measured in one run:

    git worktree add /tmp/before <commit> && abtest bench router --baseline /tmp/before
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from abtest.bench.load import LoadResult, run_load
from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from recsys.training import MODEL_NAMES, train_and_save, trainer

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream model_a {{ server 127.0.0.1:{port_a}; keepalive 128; }}
    upstream model_b {{ server 127.0.0.1:{port_b}; keepalive 128; }}
    map $uri $user_id {{ "~^/recommend/(?<id>[^/]+)$" $id; }}
    split_clients "bench-${{user_id}}" $variant {{ 50% model_a; * model_b; }}
    server {{
        listen 127.0.0.1:{port};
        location /recommend/ {{
            proxy_pass http://$variant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Target:
    name: str
    url: str


def _memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_router(
    stack: ExitStack, config: Path, results: Path, checkout: Path | None = None
) -> tuple[str, subprocess.Popen[str]]:
    """A router process on a free port (from `checkout` instead of this tree when given), healthy."""
    port = free_port()
    env = {"RESULTS_DIR": str(results), "ROUTER_LOG_LEVEL": "warning"}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)  # ahead of the installed (editable) project on sys.path
    router = start_service(
        python_module("router", "--config", str(config), "--port", str(port)),
        env=env,
        log=subprocess.DEVNULL,
        cwd=str(checkout) if checkout is not None else None,
    )
    stack.callback(stop_service, router)
    wait_healthy(f"http://127.0.0.1:{port}", router, timeout=60)
    return f"http://127.0.0.1:{port}", router


@contextmanager
def _services(
    folder: Path, baseline: Path | None = None, interleave: bool = True, bandit: bool = True
) -> Iterator[tuple[dict[str, Target], subprocess.Popen[str]]]:
    """Model servers, router(s) and (if installed) nginx, all healthy; yields the targets and the router process."""
    models_dir = folder / "models"
    for name in MODEL_NAMES:
        train_and_save(trainer(name), models_dir, data_spec="synthetic", progress=False)
    ports = {name: free_port() for name in MODEL_NAMES}
    with ExitStack() as stack:
        for name in MODEL_NAMES:
            proc = start_service(
                python_module(name, "--port", str(ports[name])),
                env={"MODELS_DIR": str(models_dir)},
                log=subprocess.DEVNULL,
            )
            stack.callback(stop_service, proc)
            wait_healthy(f"http://127.0.0.1:{ports[name]}", proc, timeout=60)

        config = folder / "experiment.yaml"
        variants = [{"name": n, "url": f"http://127.0.0.1:{ports[n]}", "weight": 50} for n in MODEL_NAMES]
        config.write_text(
            yaml.safe_dump({"experiment": "bench", "strategy": "hash", "salt": "bench", "variants": variants})
        )
        router_url, router = _start_router(stack, config, folder / "results")
        targets = {
            "direct": Target("direct", f"http://127.0.0.1:{ports['model_a']}"),
            "router": Target("router", router_url),
        }
        if baseline is not None:
            baseline_url, _ = _start_router(stack, config, folder / "results-baseline", Path(baseline).resolve())
            targets["baseline"] = Target("baseline", baseline_url)
        if interleave:
            interleaved = folder / "interleave.yaml"
            interleaved.write_text(
                yaml.safe_dump({"experiment": "bench", "strategy": "interleave", "salt": "bench", "variants": variants})
            )
            interleave_url, _ = _start_router(stack, interleaved, folder / "results-interleave")
            targets["interleave"] = Target("interleave", interleave_url)
            targets["direct_b"] = Target("direct_b", f"http://127.0.0.1:{ports['model_b']}")
        if bandit:  # issue 15: an adaptive strategy costs no more than hash on the request path
            adaptive = folder / "thompson.yaml"
            adaptive.write_text(
                yaml.safe_dump({"experiment": "bench", "strategy": "thompson", "salt": "bench", "variants": variants})
            )
            thompson_url, _ = _start_router(stack, adaptive, folder / "results-thompson")
            targets["thompson"] = Target("thompson", thompson_url)
        if shutil.which("nginx"):
            nginx_port = free_port()
            conf = folder / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(folder=folder, port=nginx_port, port_a=ports["model_a"], port_b=ports["model_b"])
            )
            nginx = start_service(["nginx", "-c", str(conf), "-p", str(folder)], log=subprocess.DEVNULL)
            stack.callback(stop_service, nginx)
            wait_healthy(f"http://127.0.0.1:{nginx_port}", nginx, timeout=10, path="/recommend/1")
            targets["nginx"] = Target("nginx", f"http://127.0.0.1:{nginx_port}")
        yield targets, router


def _median(results: list[LoadResult], field: str) -> float:
    return float(statistics.median(getattr(result, field) for result in results))


def run(
    results_dir: Path,
    *,
    levels: tuple[int, ...] = (1, 10, 50),
    rounds: int = 3,
    seconds: float = 5.0,
    soak_seconds: float = 60.0,
    baseline: Path | None = None,
    interleave: bool = True,
    bandit: bool = True,
) -> dict[str, Any]:
    """Measure, print the table, write results/bench-router.json; returns what it wrote."""
    print("router: training and starting the model servers, the router and nginx ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp, _services(Path(tmp), baseline, interleave, bandit) as (targets, router):
        for target in targets.values():
            run_load(target.url, connections=10, seconds=2)  # warm-up: pools, caches, JIT-free but lazy imports
        runs: dict[tuple[str, int], list[LoadResult]] = {}
        total, done = rounds * len(levels) * len(targets), 0
        for round_number in range(rounds):
            for level in levels:
                order = list(targets.values())
                if round_number % 2:
                    order.reverse()  # alternate, so neither target always runs on a warmer machine
                for target in order:
                    done += 1
                    print(f"router: run {done}/{total}: {target.name}, {level} connections, {seconds:g} s", flush=True)
                    runs.setdefault((target.name, level), []).append(
                        run_load(target.url, connections=level, seconds=seconds)
                    )
        if soak_seconds > 0:
            print(f"router: {soak_seconds:g} s at full load for the memory check ...", flush=True)
        soak = _soak(targets["router"].url, router.pid, soak_seconds) if soak_seconds > 0 else {}
    rows = [
        {
            "target": name,
            "connections": level,
            "rps": _median(results, "rps"),
            "p50_ms": _median(results, "p50_ms"),
            "p99_ms": _median(results, "p99_ms"),
            "errors": sum(result.errors for result in results),
            "client": results[0].client,
            "rounds": [result.as_dict() for result in results],
        }
        for (name, level), results in runs.items()
    ]
    summary = _ratios(rows, levels)
    report = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "levels": list(levels),
        "rounds": rounds,
        "seconds_per_run": seconds,
        "rows": rows,
        "ratios": summary,
        "router_memory": soak,
    }
    print(format_table(report))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-router.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return report


def _soak(url: str, pid: int, seconds: float) -> dict[str, Any]:
    """Full load on the router for `seconds`, RSS sampled before and after (and its peak from /proc)."""
    before = _memory_mib(pid)
    first = run_load(url, connections=50, seconds=seconds / 2)
    middle = _memory_mib(pid)
    second = run_load(url, connections=50, seconds=seconds / 2)
    after = _memory_mib(pid)
    return {
        "seconds": seconds,
        "requests": first.requests + second.requests,
        "errors": first.errors + second.errors,
        "rss_mib_before": round(before, 1),
        "rss_mib_middle": round(middle, 1),
        "rss_mib_after": round(after, 1),
        "growth_second_half_pct": round(100 * (after - middle) / middle, 1),
    }


def _ratios(rows: list[dict[str, Any]], levels: tuple[int, ...]) -> dict[str, Any]:
    by = {(row["target"], row["connections"]): row for row in rows}
    ratios: dict[str, Any] = {}
    for level in levels:
        router = by[("router", level)]
        direct = by[("direct", level)]
        entry = {
            "router_added_p50_ms": round(router["p50_ms"] - direct["p50_ms"], 3),
            "router_over_direct_rps": round(router["rps"] / direct["rps"], 3),
        }
        if ("nginx", level) in by:
            entry["router_over_nginx_rps"] = round(router["rps"] / by[("nginx", level)]["rps"], 3)
        if ("interleave", level) in by and ("direct_b", level) in by:
            slower = max(direct["p50_ms"], by[("direct_b", level)]["p50_ms"])
            entry["interleave_added_p50_ms_over_slower_direct"] = round(by[("interleave", level)]["p50_ms"] - slower, 3)
            entry["interleave_over_router_rps"] = round(by[("interleave", level)]["rps"] / router["rps"], 3)
        if ("thompson", level) in by:
            entry["thompson_over_router_rps"] = round(by[("thompson", level)]["rps"] / router["rps"], 3)
            entry["thompson_minus_router_p50_ms"] = round(by[("thompson", level)]["p50_ms"] - router["p50_ms"], 3)
        if ("baseline", level) in by:
            before = by[("baseline", level)]
            entry["router_over_baseline_rps"] = round(router["rps"] / before["rps"], 3)
            entry["router_minus_baseline_p50_ms"] = round(router["p50_ms"] - before["p50_ms"], 3)
        ratios[str(level)] = entry
    return ratios


def format_table(report: dict[str, Any]) -> str:
    header = f"{'target':10} {'conn':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    lines = [f"medians of {report['rounds']} alternating rounds, {report['seconds_per_run']:.0f} s each", header]
    lines.append("-" * len(header))
    for row in sorted(report["rows"], key=lambda row: (row["connections"], row["target"])):
        lines.append(
            f"{row['target']:10} {row['connections']:>5} {row['rps']:>9.0f} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['errors']:>7}"
        )
    lines.append("")
    for level, entry in report["ratios"].items():
        parts = [f"router adds {entry['router_added_p50_ms']:+.2f} ms p50 over direct"]
        parts.append(f"router/direct req/s {entry['router_over_direct_rps']:.2f}")
        if "router_over_nginx_rps" in entry:
            parts.append(f"router/nginx req/s {entry['router_over_nginx_rps']:.2f}")
        if "interleave_added_p50_ms_over_slower_direct" in entry:
            parts.append(
                f"interleave adds {entry['interleave_added_p50_ms_over_slower_direct']:+.2f} ms p50 over the slower "
                f"direct, interleave/router req/s {entry['interleave_over_router_rps']:.2f}"
            )
        if "thompson_over_router_rps" in entry:
            parts.append(
                f"thompson/hash router req/s {entry['thompson_over_router_rps']:.2f}, "
                f"p50 {entry['thompson_minus_router_p50_ms']:+.2f} ms"
            )
        if "router_over_baseline_rps" in entry:
            parts.append(
                f"router/baseline req/s {entry['router_over_baseline_rps']:.2f}, "
                f"p50 {entry['router_minus_baseline_p50_ms']:+.2f} ms"
            )
        lines.append(f"{level:>3} conn: " + "; ".join(parts))
    memory = report.get("router_memory")
    if memory:
        lines.append(
            f"router RSS over {memory['seconds']:.0f} s at 50 conn: {memory['rss_mib_before']} -> "
            f"{memory['rss_mib_middle']} -> {memory['rss_mib_after']} MiB "
            f"({memory['growth_second_half_pct']:+.1f}% in the second half), {memory['requests']} requests"
        )
    lines.append(
        "targets: +<=1 ms p50 at 1 conn; router/nginx >= 0.5 at 50 conn; RSS flat +-10%; "
        "interleave +<=1 ms p50 over the slower direct at 1 conn; thompson within noise of hash"
    )
    return "\n".join(lines)
