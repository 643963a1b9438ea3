"""`abtest bench store`: sustained exposure writes into the real outcome store, and proof that none is lost.

For each offered rate, events are queued from an event loop in 10 ms ticks (as the router does, one
`record_exposure` per request) for a few seconds; then the store is flushed and its rows are counted.
Target (issue 7): >= 20,000 events/s with zero loss.

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
from pathlib import Path
from typing import Any

from router.store import Exposure, OutcomeStore, SQLiteBackend


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


def run(
    results_dir: Path,
    rates: tuple[int, ...] = (20_000, 40_000, 80_000),
    seconds: float = 5.0,
    overload_from: int = OVERLOAD_FROM,
) -> list[dict[str, Any]]:
    """Measure each rate in a fresh store; print and write results/bench-store.json."""
    rows = []
    for number, rate in enumerate(rates, 1):
        if rate >= overload_from:
            print(
                f"store: the next step offers {rate:,} events/s, more than the writer can take: the queue fills and "
                "the store logs and counts each event it drops ('outcome store queue full ... lost'). That loss "
                "is the intended overload, measured and counted, not a bug.",
                flush=True,
            )
        print(f"store: step {number}/{len(rates)}, offering {rate:,} events/s for {seconds:g} s ...", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "outcomes.sqlite3"
            store = OutcomeStore(SQLiteBackend(path))
            store.open()
            try:
                row = asyncio.run(_offer(store, rate, seconds))
                row["lost"] = store.stats()["lost"]["exposure"]
            finally:
                store.close()
            with sqlite3.connect(path) as db:
                row["rows_in_store"] = db.execute("SELECT COUNT(*) FROM exposures").fetchone()[0]
            row["zero_loss"] = row["rows_in_store"] == row["offered"] and row["lost"] == 0
            rows.append(row)
    header = (
        f"{'offered/s':>10} {'achieved/s':>11} {'events':>8} {'in store':>9} {'lost':>5} "
        f"{'max queue':>10} {'flushed s':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['offered_rate']:>10} {row['achieved_rate']:>11} {row['offered']:>8} {row['rows_in_store']:>9} "
            f"{row['lost']:>5} {row['max_pending']:>10} {row['seconds_until_flushed']:>10}"
        )
    lines.append("target: >= 20,000 events/s sustained, zero lost (events = in store)")
    lines.append(f"rates >= {overload_from:,}/s overload the writer on purpose: their losses are counted, not silent")
    print("\n".join(lines))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-store.json"
    out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return rows
