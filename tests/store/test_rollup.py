"""The report's rollups (router.store.rollup) are always exactly the totals of the rows they count.

Each test writes rows through a backend, in whatever order and batches a router could, and compares every
rollup table with the same totals counted from the exposures and feedback themselves (the reference queries
below, the questions the rollups replaced). Run against every backend (tests/store/conftest.py).
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from router.report.load import read_phase
from router.store import Exposure, Feedback, PostgresBackend, Record, SQLiteBackend, StoreBackend
from router.store.rollup import RowMarks, rollup_statements
from router.store.schema import ROLLUPS, SCHEMA_VERSION
from tests.store.conftest import BackendFactory, exposure, feedback_for, same_store

_CLICKED = (
    "CASE WHEN EXISTS (SELECT 1 FROM feedback AS f WHERE f.request_id = e.request_id AND f.event = 'click' "
    "AND f.phase = e.phase) THEN 1 ELSE 0 END"
)
_KEY = "e.phase, u.code, e.assigned_variant, e.variant, e.assignment"
_USERS = "JOIN rollup_users AS u ON u.user_id = e.user_id"
_VARIANT_KEY = "e.phase, e.assigned_variant, e.variant, e.assignment"
#: Each rollup table, and the same totals counted from the rows (portable SQL, both engines).
REFERENCE = {
    "rollup_users": "SELECT DISTINCT u.code, e.user_id FROM exposures AS e " + _USERS,
    "unit_rollup": (
        f"SELECT {_KEY}, COUNT(*), SUM(CASE WHEN e.error IS NOT NULL OR e.status >= 400 THEN 1 ELSE 0 END), "
        f"SUM({_CLICKED}) FROM exposures AS e {_USERS} GROUP BY {_KEY}"
    ),
    "event_rollup": (
        f"SELECT {_KEY}, f.event, COUNT(*), SUM(COALESCE(f.value, 0.0)) FROM exposures AS e {_USERS} "
        f"JOIN feedback AS f ON f.request_id = e.request_id AND f.phase = e.phase GROUP BY {_KEY}, f.event"
    ),
    "latency_rollup": (
        f"SELECT {_VARIANT_KEY}, CAST(FLOOR(LN(1.0 + e.latency_ms) * 10000) AS BIGINT), COUNT(*), "
        f"MIN(e.latency_ms), MAX(e.latency_ms) FROM exposures AS e "
        f"GROUP BY {_VARIANT_KEY}, CAST(FLOOR(LN(1.0 + e.latency_ms) * 10000) AS BIGINT)"
    ),
    "time_rollup": (
        f"SELECT {_VARIANT_KEY}, e.strategy, CAST(FLOOR(e.ts) AS BIGINT), COUNT(*), SUM({_CLICKED}), MIN(e.ts), "
        f"MAX(e.ts) FROM exposures AS e GROUP BY {_VARIANT_KEY}, e.strategy, CAST(FLOOR(e.ts) AS BIGINT)"
    ),
}


def _normalised(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples of str, int and rounded floats (engines differ in numeric types)."""
    return sorted(
        tuple(round(float(x), 9) if isinstance(x, float) or type(x).__name__ == "Decimal" else x for x in row)
        for row in rows
    )


def _query(backend: StoreBackend, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(backend, SQLiteBackend):
        with closing(sqlite3.connect(backend.path)) as conn:
            return conn.execute(sql).fetchall()
    assert isinstance(backend, PostgresBackend)
    with psycopg.connect(backend.url, autocommit=True) as pg:
        return pg.execute(sql).fetchall()


def assert_rollups_are_the_rows_totals(backend: StoreBackend) -> None:
    ((stored,),) = _query(backend, "SELECT COUNT(*) FROM exposures")
    ((counted,),) = _query(backend, "SELECT SUM(exposures) FROM unit_rollup")
    assert int(counted) == int(stored), "an exposure is missing from the rollups (or counted twice)"
    for table, reference in REFERENCE.items():
        found = _normalised(_query(backend, f"SELECT * FROM {table}"))
        expected = _normalised(_query(backend, reference))
        assert found == expected, f"{table} differs from the totals of the rows"
        assert found, f"{table} is empty: the test wrote nothing it counts"


def traffic(seed: int) -> tuple[list[Exposure], list[Feedback]]:
    """Exposures of 25 users over two phases (fallbacks, overrides, errors), and feedback on them: clicks (some
    on two items of a list, some repeated), ratings with and without a value."""
    rng = random.Random(seed)
    exposures = []
    for n in range(240):
        kind = rng.choice(["strategy"] * 6 + ["fallback", "override"])
        seen = exposure(
            n,
            user=f"u{rng.randrange(25)}",
            phase=1 if n < 160 else 2,
            status=rng.choice([200] * 9 + [504]),
            ts=1_700_000_000.0 + n * 0.37,
            variant=rng.choice(["model_a", "model_b"]),
            assignment=kind,
        )
        seen = replace(seen, latency_ms=rng.lognormvariate(1.5, 0.6))
        if kind == "fallback":
            seen = replace(seen, assigned_variant="model_b" if seen.variant == "model_a" else "model_a")
        exposures.append(seen)
    feedback = []
    for seen in exposures:
        if not seen.items:
            continue
        for item in rng.sample(seen.items, rng.choice([0, 0, 1, 1, 2])):
            feedback.append(feedback_for(seen, item))
            if rng.random() < 0.2:
                feedback.append(feedback_for(seen, item))  # sent twice: stored once
        if rng.random() < 0.3:
            feedback.append(feedback_for(seen, seen.items[0], event="rating", value=rng.choice([None, 1.0, 4.5])))
    return exposures, feedback


def shuffled_batches(records: Sequence[Record], rng: random.Random) -> list[list[Record]]:
    """The records in a random order (feedback before its exposure too) cut into batches of 1 to 40."""
    mixed = list(records)
    rng.shuffle(mixed)
    batches, start = [], 0
    while start < len(mixed):
        size = rng.randint(1, 40)
        batches.append(mixed[start : start + size])
        start += size
    return batches


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_are_the_rows_totals_whatever_order_and_batches_the_rows_arrive_in(
    new_backend: BackendFactory, seed: int
) -> None:
    backend = new_backend()
    backend.open()
    backend.start_phase("rec-ab", "k1", {"strategy": "hash"})
    backend.start_phase("rec-ab", "k2", {"strategy": "hash"})
    exposures, feedback = traffic(seed)
    for batch in shuffled_batches([*exposures, *feedback], random.Random(seed)):
        backend.write(batch)
    assert_rollups_are_the_rows_totals(backend)


def test_a_click_counts_once_for_its_exposure_in_every_order(new_backend: BackendFactory) -> None:
    """The four ways a first and second click can meet their exposure: all at once, exposure first, clicks first,
    one click on each side of the exposure."""
    backend = new_backend()
    backend.open()
    backend.start_phase("rec-ab", "k1", {"strategy": "hash"})
    seen = [exposure(n, user="u1") for n in range(4)]
    clicks = [(feedback_for(s, s.items[0]), feedback_for(s, s.items[1])) for s in seen]
    backend.write([seen[0], *clicks[0]])
    backend.write([seen[1]])
    backend.write([*clicks[1]])
    backend.write([*clicks[2]])
    backend.write([seen[2]])
    backend.write([clicks[3][0]])
    backend.write([seen[3]])
    backend.write([clicks[3][1]])
    with backend.snapshot() as snapshot:
        totals = snapshot.unit_totals(1, by="variant", assignments=("strategy",))
        assert int(totals.clicked.sum()) == 4 and int(totals.events["click"].sum()) == 8
        series = snapshot.timeline(1, by="variant", assignments=("strategy",), buckets=1)
        assert sum(int(s.clicked[-1]) for s in series.values()) == 4
    assert_rollups_are_the_rows_totals(backend)


def test_writers_of_two_routers_at_once_are_counted_exactly(new_backend: BackendFactory) -> None:
    """One router writes the exposures while another writes their clicks, at the same time, in small batches:
    a click and its exposure committed concurrently must still be counted once (the rollup lock)."""
    first = new_backend()
    first.open()
    first.start_phase("rec-ab", "k1", {"strategy": "hash"})
    second = same_store(first)
    second.open()
    seen = [exposure(n, user=f"u{n % 40}") for n in range(400)]
    clicks = [feedback_for(s, s.items[n % 3]) for n, s in enumerate(seen)]
    failures: list[BaseException] = []

    def write_all(backend: StoreBackend, records: Sequence[Record]) -> None:
        try:
            for start in range(0, len(records), 4):
                batch = records[start : start + 4]
                for _ in range(200):  # SQLite's busy timeout is short here: a locked store is retried, as the
                    try:  # router's writer retries it
                        backend.write(batch)
                        break
                    except sqlite3.OperationalError:
                        continue
                else:
                    raise AssertionError("the store stayed locked for 200 attempts")
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [
        threading.Thread(target=write_all, args=(first, seen)),
        threading.Thread(target=write_all, args=(second, clicks)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures and not any(thread.is_alive() for thread in threads)
    second.close()
    with first.snapshot() as snapshot:
        assert int(snapshot.unit_totals(1, by="variant", assignments=("strategy",)).clicked.sum()) == 400
    assert_rollups_are_the_rows_totals(first)


def test_a_version_6_store_is_migrated_with_its_rollups_filled_from_its_rows(new_backend: BackendFactory) -> None:
    backend = new_backend()
    backend.open()
    backend.start_phase("rec-ab", "k1", {"strategy": "hash"})
    backend.start_phase("rec-ab", "k2", {"strategy": "hash"})
    exposures, feedback = traffic(3)
    backend.write([*exposures, *feedback])
    backend.close()
    # Back to version 6: no rollups, no latency index.
    statements = [f"DROP TABLE {table.name}" for table in ROLLUPS]
    statements += ["DROP INDEX exposures_phase_latency", "UPDATE meta SET value = '6' WHERE key = 'schema_version'"]
    if isinstance(backend, SQLiteBackend):
        with closing(sqlite3.connect(backend.path)) as conn:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
    else:
        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(backend.url, autocommit=True) as pg:
            for statement in statements:
                pg.execute(statement)
    reopened = same_store(backend)
    reopened.open()
    assert _query(reopened, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert_rollups_are_the_rows_totals(reopened)
    later = exposure(999, user="u1", phase=2)
    reopened.write([later, feedback_for(later, later.items[0])])  # and kept from then on
    assert_rollups_are_the_rows_totals(reopened)
    reopened.close()


def test_every_rollup_statement_costs_the_batch_not_the_store_on_sqlite_without_statistics(tmp_path: Path) -> None:
    """A router's SQLite store has no ANALYZE statistics: each statement must still start from the batch's id
    range and look rows up by index (a SCAN of exposures or feedback would cost the whole store per batch)."""
    backend = SQLiteBackend(tmp_path / "outcomes.sqlite3")
    backend.open()
    backend.start_phase("rec-ab", "k1", {"strategy": "hash"})
    exposures, feedback = traffic(4)
    backend.write([*exposures, *feedback])
    backend.close()
    with closing(sqlite3.connect(backend.path)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchall() == []
        for statement in rollup_statements("sqlite", RowMarks(exposures=200, feedback=50)):
            plan = [str(step[3]) for step in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
            assert not [step for step in plan if step.startswith("SCAN")], (statement, plan)


#: The row tables under the names the store's SQL gives them, and the index reads that touch only a few rows.
_ROW_TABLES = ("exposures", "feedback", "e", "f", "o")
_BOUNDED_READS = ("latency_ms>", "latency_ms<", "request_id=", "rowid")


def test_the_report_reads_the_rollups_and_never_scans_the_rows_on_sqlite_without_statistics(tmp_path: Path) -> None:
    """Every statement the report's read runs is planned as a read of the rollups or a bounded index range, never
    a pass over a phase's exposures or feedback (the latency guardrail's slow requests and the exact ranks are
    ranges of the latency index)."""
    backend = SQLiteBackend(tmp_path / "outcomes.sqlite3")
    backend.open()
    plan = {"guardrails": [{"metric": "latency_p99", "action": "alert"}]}
    backend.start_phase(
        "rec-ab", "k1", {"strategy": "hash", "variants": [{"name": "model_a"}, {"name": "model_b"}], **plan}
    )
    exposures, feedback = traffic(5)
    backend.write([replace(e, phase=1) for e in exposures] + [replace(f, phase=1) for f in feedback])
    statements: list[str] = []
    with backend.snapshot() as snapshot:
        snapshot.connection.set_trace_callback(statements.append)
        data = read_phase(snapshot)
        snapshot.connection.set_trace_callback(None)
        assert data.outcomes.slow_threshold_ms is not None and data.outcomes.totals.slow is not None
        scans = []
        for statement in statements:
            for *_, step in snapshot.connection.execute(f"EXPLAIN QUERY PLAN {statement}"):
                words = str(step).split()
                reads_rows = len(words) > 1 and words[0] in ("SCAN", "SEARCH") and words[1] in _ROW_TABLES
                if reads_rows and not any(bounded in str(step) for bounded in _BOUNDED_READS):
                    scans.append((statement, step))
    assert len(statements) > 10 and not scans, scans
