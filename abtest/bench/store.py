"""`abtest bench store`: sustained exposure writes into the real outcome store, and proof that none is lost.

For each offered rate, events are queued from an event loop in 10 ms ticks (as the router does, one
`record_exposure` per request) for a few seconds; then the store is flushed and its rows are counted.
Target (issue 7): >= 20,000 events/s with zero loss. With `--store-url postgresql://...` the same steps run
on PostgreSQL too, side by side (each step in a fresh database created next to the one the URL names).

The rates above what the writer can take (about 40,000/s here) are the overload step, on purpose: the bounded
queue fills and the store logs and counts every event it cannot take. Those loss lines are the point of the
step, not a bug; the command says so before it starts that step.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from router.store import Exposure, OutcomeStore, PostgresBackend, SQLiteBackend, StoreBackend


async def _offer(store: OutcomeStore, rate: int, seconds: float) -> dict[str, Any]:
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    offered = accepted = max_pending = 0
    started = time.perf_counter()
    next_tick = started
    while next_tick - started < seconds:
        for _ in range(per_tick):
            offered += 1
            exposure = Exposure(
                ts=time.time(),
                request_id=uuid.uuid4().hex,
                experiment="bench",
                phase=1,
                user_id=str(offered % 5000),
                variant="model_a" if offered % 2 else "model_b",
                assigned_variant="model_a" if offered % 2 else "model_b",
                strategy="hash",
                assignment="strategy",
                propensity=0.5,
                status=200,
                latency_ms=1.5,
                k=10,
                items=tuple(range(offered % 100, offered % 100 + 10)),
                error=None,
            )
            accepted += store.record_exposure(exposure)
        max_pending = max(max_pending, store.pending)
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))  # pacing the offered rate, not syncing
    offering = time.perf_counter() - started
    await store.aflush()
    total = time.perf_counter() - started
    return {
        "offered_rate": rate,
        "offered": offered,
        "accepted": accepted,
        "achieved_rate": round(offered / offering),
        "seconds_offering": round(offering, 2),
        "seconds_until_flushed": round(total, 2),
        "max_pending": max_pending,
    }


#: Offered rates from here on are meant to overload the writer (see the module docstring).
OVERLOAD_FROM = 80_000


@contextmanager
def fresh_store(backend: str, name: str, postgres_url: str | None) -> Iterator[tuple[StoreBackend, str]]:
    """An empty store of `backend`, and the URL it can be counted through; removed afterwards (SQLite)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "outcomes.sqlite3"
            yield SQLiteBackend(path), f"sqlite:///{path}"
    else:
        assert postgres_url is not None
        url = fresh_postgres_database(postgres_url, name)
        yield PostgresBackend(url), url


def fresh_postgres_database(url: str, name: str) -> str:
    """A new, empty database `name` next to the one `url` names (dropped first if a previous run left it)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def count_exposures(url: str) -> int:
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return int(db.execute("SELECT COUNT(*) FROM exposures").fetchone()[0])
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM exposures").fetchone()
    return int(row[0]) if row else 0


def run(
    results_dir: Path,
    rates: tuple[int, ...] = (20_000, 40_000, 80_000),
    seconds: float = 5.0,
    overload_from: int = OVERLOAD_FROM,
    postgres_url: str | None = None,
) -> list[dict[str, Any]]:
    """Measure each rate in a fresh store of each backend; print and write results/bench-store.json."""
    rows = []
    backends = ["sqlite"] + (["postgresql"] if postgres_url else [])
    steps = [(backend, rate) for backend in backends for rate in rates]
    for number, (backend, rate) in enumerate(steps, 1):
        if rate >= overload_from:
            print(
                f"store: the next step offers {rate:,} events/s, more than the writer can take: the queue fills and "
                "the store logs and counts each event it drops ('outcome store queue full ... lost'). That loss "
                "is the intended overload, measured and counted, not a bug.",
                flush=True,
            )
        print(
            f"store: step {number}/{len(steps)}, offering {rate:,} events/s for {seconds:g} s into {backend} ...",
            flush=True,
        )
        with fresh_store(backend, f"bench_store_{rate}", postgres_url) as (engine, url):
            store = OutcomeStore(engine)
            store.open()
            try:
                row = {"backend": backend, **asyncio.run(_offer(store, rate, seconds))}
                row["lost"] = store.stats()["lost"]["exposure"]
            finally:
                store.close()
            row["rows_in_store"] = count_exposures(url)
        row["zero_loss"] = row["rows_in_store"] == row["offered"] and row["lost"] == 0
        rows.append(row)
    header = (
        f"{'backend':<11} {'offered/s':>10} {'achieved/s':>11} {'events':>8} {'in store':>9} {'lost':>6} "
        f"{'max queue':>10} {'flushed s':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['backend']:<11} {row['offered_rate']:>10} {row['achieved_rate']:>11} {row['offered']:>8} "
            f"{row['rows_in_store']:>9} {row['lost']:>6} {row['max_pending']:>10} {row['seconds_until_flushed']:>10}"
        )
    lines.append("target: >= 20,000 events/s sustained, zero lost (events = in store), on each backend")
    lines.append(f"rates >= {overload_from:,}/s overload the writer on purpose: their losses are counted, not silent")
    print("\n".join(lines))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-store.json"
    out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return rows
