"""`abtest bench report`: how long the report takes, and how much memory, over stores of 1M and 10M exposures.

    abtest bench report                                   # SQLite, and PostgreSQL when --store-url names one
    abtest bench report --store-url postgresql://postgres@127.0.0.1:5432/bench --sizes 1000000

Each store follows the documented schema as the router writes it: one hash phase at 50/50, ten exposures per
user, a click on about 5% of the lists. Generation is vectorised (numpy arrays, then one executemany per chunk
on SQLite and one COPY per chunk on PostgreSQL), so it costs seconds per million rows; the rollups the router's
writer keeps batch by batch (router.store.rollup) are then filled once, as a migration fills them. The report
is then built (`write_reports`: Markdown, HTML and JSON) in a fresh child process, which reports its wall time
and its peak RSS (`ru_maxrss`), so the figures are the report's alone. Target (issue 17): 10M exposures / 1M
users in <= 10 s and <= 500 MB on each backend, memory flat from 1M to 10M.
"""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from abtest.bench.store import fresh_postgres_database
from router.store import backend_for
from router.store.rollup import rollup_backfill
from router.store.schema import EXPOSURES, FEEDBACK, Table, ddl

EXPOSURES_PER_USER = 10
CLICK_RATE = 0.05
CHUNK = 500_000
DESIGN = {
    "experiment": "bench",
    "strategy": "hash",
    "unit": "user",
    "salt": "bench-1",
    "variants": [
        {"name": "model_a", "url": "http://model_a:8000", "weight": 50, "share": 0.5},
        {"name": "model_b", "url": "http://model_b:8000", "weight": 50, "share": 0.5},
    ],
}


def rows_of(table: Table, **columns: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Rows in `table`'s insert order from columns by name (the first is a list: it sets the length).

    Any column not given is NULL, so a column added to the schema later needs no edit here unless it must
    hold a value (then the insert fails loudly).
    """
    return list(zip(*(columns.get(name, repeat(None)) for name in table.insert_columns), strict=False))  # repeats


def chunks(exposures: int, seed: int = 17) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """(exposure rows, click rows) in schema column order, CHUNK exposures at a time, made from numpy arrays."""
    rng = np.random.default_rng(seed)
    users = max(1, exposures // EXPOSURES_PER_USER)
    items = orjson.dumps(list(range(10))).decode()
    for start in range(0, exposures, CHUNK):
        n = np.arange(start, min(start + CHUNK, exposures))
        user = rng.integers(0, users, n.size)
        variant = np.where(user % 2 == 0, "model_a", "model_b")
        latency = rng.lognormal(1.5, 0.4, n.size)
        ctr = np.where(variant == "model_a", CLICK_RATE, CLICK_RATE * 1.05)
        clicked = rng.random(n.size) < ctr
        ts = 1_700_000_000.0 + n * 0.001
        ids = [f"{i:032x}" for i in n.tolist()]
        names = [f"u{u}" for u in user.tolist()]
        variants = variant.tolist()
        exposure_rows = rows_of(
            EXPOSURES,
            ts=ts.tolist(),
            request_id=ids,
            experiment=repeat("bench"),
            phase=repeat(1),
            user_id=names,
            variant=variants,
            assigned_variant=variants,
            strategy=repeat("hash"),
            assignment=repeat("strategy"),
            propensity=repeat(0.5),
            status=repeat(200),
            latency_ms=latency.tolist(),
            k=repeat(10),
            items=repeat(items),
        )
        chosen = np.flatnonzero(clicked)
        click_rows = rows_of(
            FEEDBACK,
            ts=(ts[chosen] + 1.0).tolist(),
            request_id=[ids[i] for i in chosen.tolist()],
            experiment=repeat("bench"),
            phase=repeat(1),
            user_id=[names[i] for i in chosen.tolist()],
            variant=[variants[i] for i in chosen.tolist()],
            assignment=repeat("strategy"),
            item_id=repeat(0),
            position=repeat(0),
            event=repeat("click"),
            attributed_by=repeat("request_id"),
        )
        yield exposure_rows, click_rows


def generate(url: str, exposures: int) -> float:
    """Fill the empty store at `url` with a generated phase; returns the seconds it took."""
    started = time.perf_counter()
    backend = backend_for(url)
    backend.open()
    backend.start_phase("bench", "bench-key", DESIGN)
    backend.close()
    exposure_columns, feedback_columns = ", ".join(EXPOSURES.insert_columns), ", ".join(FEEDBACK.insert_columns)
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            # A bulk load: the secondary indexes are built once at the end (as the schema defines them), not
            # row by row in random user order; the unique request id index stays (ids arrive in order).
            conn.execute("PRAGMA synchronous=OFF")
            secondary = [index for table in (EXPOSURES, FEEDBACK) for index in table.indexes if not index.unique]
            for index in secondary:
                conn.execute(f"DROP INDEX IF EXISTS {index.name}")
            marks_e = ", ".join("?" * len(EXPOSURES.insert_columns))
            marks_f = ", ".join("?" * len(FEEDBACK.insert_columns))
            for exposure_rows, click_rows in chunks(exposures):
                conn.execute("BEGIN")
                conn.executemany(f"INSERT INTO exposures ({exposure_columns}) VALUES ({marks_e})", exposure_rows)
                conn.executemany(f"INSERT INTO feedback ({feedback_columns}) VALUES ({marks_f})", click_rows)
                conn.execute("COMMIT")
            for statement in ddl("sqlite", (EXPOSURES, FEEDBACK)).split(";\n"):
                if statement.strip():
                    conn.execute(statement)  # CREATE ... IF NOT EXISTS: only the dropped indexes are made
            conn.execute("BEGIN")
            for statement in rollup_backfill("sqlite"):  # what the router's writer keeps, batch by batch
                conn.execute(statement)
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for exposure_rows, click_rows in chunks(exposures):
                with conn.transaction(), conn.cursor() as cursor:
                    with cursor.copy(f"COPY exposures ({exposure_columns}) FROM STDIN") as copy:
                        for row in exposure_rows:
                            copy.write_row(row)
                    with cursor.copy(f"COPY feedback ({feedback_columns}) FROM STDIN") as copy:
                        for row in click_rows:
                            copy.write_row(row)
            with conn.transaction():
                for statement in rollup_backfill("postgresql"):  # what the router's writer keeps, batch by batch
                    conn.execute(statement)
            conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def measure(url: str) -> dict[str, float]:
    """Build and write the report in a fresh child process: its wall seconds and peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.run(  # noqa: S603 - argv is built here, never from user input
            [sys.executable, "-m", "abtest.bench.report", url, folder],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
    if child.returncode != 0:
        raise RuntimeError(f"the report failed on {url}: {child.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return figures


def peak_rss_kb() -> int:
    """This process's peak RSS since its exec (VmHWM): ru_maxrss would count the parent's RSS at fork too."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best there is


def _child(url: str, folder: str) -> None:
    """In the child: import, build, write; print the report's seconds and this process's peak RSS as JSON."""
    from router.report import write_reports

    started = time.perf_counter()
    write_reports(backend_for(url), Path(folder))
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_kb() / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1)}))


def run(
    results_dir: Path, *, sizes: tuple[int, ...] = (1_000_000, 10_000_000), postgres_url: str | None = None
) -> list[dict[str, Any]]:
    """Generate each store size on each backend, measure its report; print and write results/bench-report.json."""
    rows: list[dict[str, Any]] = []
    backends = ["sqlite"] + (["postgresql"] if postgres_url else [])
    with tempfile.TemporaryDirectory(dir=results_dir if results_dir.exists() else None) as folder:
        for backend in backends:
            for size in sizes:
                if backend == "sqlite":
                    url = f"sqlite:///{Path(folder) / f'bench-{size}.sqlite3'}"
                else:
                    assert postgres_url is not None
                    url = fresh_postgres_database(postgres_url, f"bench_report_{size}")
                print(f"report: {backend}, generating {size:,} exposures ...", flush=True)
                generated = generate(url, size)
                print(f"report: {backend}, {size:,} exposures generated in {generated:.1f} s; building ...", flush=True)
                figures = measure(url)
                rows.append(
                    {
                        "backend": backend,
                        "exposures": size,
                        "users": size // EXPOSURES_PER_USER,
                        "generate_seconds": round(generated, 1),
                        **figures,
                    }
                )
                if backend == "sqlite":
                    Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    header = f"{'backend':<11} {'exposures':>11} {'users':>9} {'generated s':>12} {'report s':>9} {'peak RSS MB':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['backend']:<11} {row['exposures']:>11,} {row['users']:>9,} {row['generate_seconds']:>12} "
            f"{row['seconds']:>9} {row['peak_rss_mb']:>12}"
        )
    for backend in backends:
        mine = [row for row in rows if row["backend"] == backend]
        if len(mine) > 1:
            first, last = mine[0], mine[-1]
            lines.append(
                f"{backend}: {first['exposures']:,} -> {last['exposures']:,} exposures: time x"
                f"{last['seconds'] / max(first['seconds'], 1e-9):.1f}, peak RSS x"
                f"{last['peak_rss_mb'] / max(first['peak_rss_mb'], 1e-9):.2f}"
            )
    lines.append("target: 10M exposures / 1M users in <= 10 s and <= 500 MB peak RSS, on each backend")
    print("\n".join(lines))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-report.json"
    out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return rows


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
