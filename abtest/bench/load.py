"""A load client for the benchmarks: wrk when installed (a C client on its own core), else an aiohttp client.

Every request asks for a different user id (cycling through `users`), so a hash split really splits.

    run_load("http://127.0.0.1:8001", connections=4, seconds=5)
    LoadResult(client='wrk', connections=4, requests=19512, errors=0, seconds=5.0, rps=3902.4, p50_ms=0.9, p99_ms=2.1)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

_WRK_SCRIPT = """
local counter = 0
local users = {users}
local prefix = "{prefix}"
local suffix = "{suffix}"
local thread_offset = 0
setup = function(thread)
  thread:set("thread_offset", thread_offset)
  thread_offset = thread_offset + 7919
end
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. ((counter + thread_offset) % users + 1) .. suffix)
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout
  local fields = '"requests": %d, "errors": %d, "seconds": %.6f, "p50_us": %.1f, "p99_us": %.1f'
  io.write(string.format('WRK_JSON {{' .. fields .. '}}\\n',
    summary.requests, errors, summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One load run: throughput and latency as the client saw them."""

    client: str
    connections: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_load(
    base_url: str,
    *,
    connections: int,
    seconds: float,
    users: int = 1000,
    path: str = "/recommend/{user}?k=10",
    client: str = "auto",
) -> LoadResult:
    """Drive `base_url + path` for `seconds` with `connections` concurrent keep-alive connections."""
    use_wrk = client == "wrk" or (client == "auto" and shutil.which("wrk") is not None)
    if use_wrk:
        return _run_wrk(base_url, connections, seconds, users, path)
    return asyncio.run(_run_aiohttp(base_url, connections, seconds, users, path))


def _run_wrk(base_url: str, connections: int, seconds: float, users: int, path: str) -> LoadResult:
    prefix, _, suffix = path.partition("{user}")
    script = _WRK_SCRIPT.format(users=users, prefix=prefix, suffix=suffix)
    with tempfile.TemporaryDirectory() as folder:
        script_path = Path(folder) / "load.lua"
        script_path.write_text(script, encoding="utf-8")
        threads = max(1, min(2, connections))
        argv = [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "-s",
            str(script_path),
            base_url,
        ]
        output = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout  # noqa: S603
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return LoadResult(
        client="wrk",
        connections=connections,
        requests=data["requests"],
        errors=data["errors"],
        seconds=data["seconds"],
        rps=data["requests"] / data["seconds"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


async def _run_aiohttp(base_url: str, connections: int, seconds: float, users: int, path: str) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                url = path.format(user=next(counter) % users + 1)
                started = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        if response.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    values = np.array(latencies) * 1000
    return LoadResult(
        client="aiohttp",
        connections=connections,
        requests=len(values),
        errors=errors,
        seconds=elapsed,
        rps=len(values) / elapsed,
        p50_ms=float(np.percentile(values, 50)),
        p99_ms=float(np.percentile(values, 99)),
    )
