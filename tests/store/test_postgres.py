"""What only the PostgreSQL backend does: SQLSTATE kinds, reconnecting after a restart, one phase across routers,
a REPEATABLE READ snapshot, the binary COPY reader, and the same totals as SQLite over the same rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import errors as pg_errors

from abtest.bench.report import chunks, generate
from router.errors import ConfigError
from router.store import PostgresBackend, SQLiteBackend, UnitTotals, backend_for
from router.store.postgres import error_kind
from router.store.postgres_reader import numeric_columns
from router.store.schema import SCHEMA_VERSION
from tests.store.conftest import exposure, feedback_for
from tests.support.postgres import PostgresCluster, free_port


@pytest.fixture
def backend(postgres_url: str) -> Iterator[PostgresBackend]:
    opened = PostgresBackend(postgres_url)
    opened.open()
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("error", "kind", "poison"),
    [
        (pg_errors.DiskFull, "full", False),
        (pg_errors.AdminShutdown, "unavailable", False),
        (pg_errors.CannotConnectNow, "unavailable", False),
        (pg_errors.ReadOnlySqlTransaction, "readonly", False),
        (pg_errors.LockNotAvailable, "locked", False),
        (pg_errors.QueryCanceled, "locked", False),
        (pg_errors.IoError, "io", False),
        (pg_errors.DataCorrupted, "corrupt", False),
        (pg_errors.UniqueViolation, "constraint", True),
        (pg_errors.NumericValueOutOfRange, "constraint", True),
        (pg_errors.UndefinedTable, "other", False),
    ],
)
def test_engine_errors_are_classified_by_their_sqlstate(error: type[psycopg.Error], kind: str, poison: bool) -> None:
    failure = PostgresBackend("postgresql://nowhere/x").classify(error("from the server"))
    assert failure is not None and (failure.kind, failure.poison) == (kind, poison)


def test_a_connection_lost_without_an_answer_is_unavailable() -> None:
    assert error_kind(psycopg.OperationalError("server closed the connection unexpectedly")) == "unavailable"


def test_the_schema_is_created_once_and_a_newer_one_is_refused(backend: PostgresBackend, postgres_url: str) -> None:
    backend.open()  # again: nothing recreated
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
        conn.execute("UPDATE meta SET value = %s", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(Exception, match="newer than this router's"):
        PostgresBackend(postgres_url).open()


def test_writes_reconnect_after_the_server_restarts(
    backend: PostgresBackend, postgres: PostgresCluster, postgres_url: str
) -> None:
    backend.write([exposure(1)])
    assert backend.find_exposure(exposure(1).request_id) == exposure(1)
    postgres.restart()
    with pytest.raises(psycopg.OperationalError) as broken:
        backend.write([exposure(2)])  # the writer's connection died with the old server
    failure = backend.classify(broken.value)
    assert failure is not None and failure.kind == "unavailable" and not failure.poison
    backend.write([exposure(2)])  # the next attempt connects anew
    assert backend.find_exposure(exposure(2).request_id) == exposure(2)  # the pool checks its connections too


def test_routers_starting_at_once_agree_on_one_phase(postgres_url: str) -> None:
    PostgresBackend(postgres_url).open()
    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        router = PostgresBackend(postgres_url)
        barrier.wait()
        results.append(router.start_phase("rec-ab", "key-new", {"salt": "s"}))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [(1, False)] * 5 + [(1, True)]


def test_a_snapshot_sees_one_moment_while_the_router_writes(backend: PostgresBackend) -> None:
    backend.start_phase("rec-ab", "k", {"strategy": "hash"})
    backend.write([exposure(n) for n in range(10)])
    with backend.snapshot() as snapshot:
        before = int(snapshot.unit_totals(1, by="variant", assignments=("strategy",)).exposures.sum())
        backend.write([exposure(n) for n in range(10, 20)])  # committed meanwhile
        assert int(snapshot.unit_totals(1, by="variant", assignments=("strategy",)).exposures.sum()) == before == 10
        assert snapshot.time_range(1) == (exposure(0).ts, exposure(9).ts)
    with backend.snapshot() as later:
        assert int(later.unit_totals(1, by="variant", assignments=("strategy",)).exposures.sum()) == 20


def test_numeric_columns_read_a_binary_copy_of_many_chunks(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        n, half = numeric_columns(
            conn,
            "SELECT g::int8, (g * 0.5)::float8 FROM generate_series(1, %(rows)s) AS g",
            {"rows": 200_001},
            ["i8", "f8"],
        )
        empty = numeric_columns(conn, "SELECT 1::int8 WHERE false", {}, ["i8"])
    assert n.dtype == np.int64 and half.dtype == np.float64
    assert n.tolist() == list(range(1, 200_002)) and np.array_equal(half, n * 0.5)
    assert empty[0].size == 0


def test_unit_totals_are_the_same_on_both_backends_over_the_same_rows(postgres_url: str, tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'outcomes.sqlite3'}"
    for url in (sqlite_url, postgres_url):
        generate(url, 30_000)
        backend = backend_for(url)
        backend.open()
        seen = exposure(7, user="u1")  # request id 7 is a generated exposure of another user: still its rating
        backend.write([feedback_for(seen, 7, event="rating", value=4.5)])
        backend.close()
    sqlite, postgres = SQLiteBackend(tmp_path / "outcomes.sqlite3"), PostgresBackend(postgres_url)
    with sqlite.snapshot() as a, postgres.snapshot() as b:
        left = a.unit_totals(1, by="assigned_variant", assignments=("strategy", "fallback"), slow_above_ms=5.0)
        right = b.unit_totals(1, by="assigned_variant", assignments=("strategy", "fallback"), slow_above_ms=5.0)
        assert left.variants == right.variants == ("model_a", "model_b")

        def keyed(t: UnitTotals) -> list[tuple[float, ...]]:
            """Per pair, independent of the order each backend returns them in."""
            assert t.slow is not None
            columns = (
                t.variant,
                t.exposures,
                t.clicked,
                t.errors,
                t.fallbacks,
                t.slow,
                *t.events.values(),
                *t.values.values(),
            )
            return sorted(zip(*(c.tolist() for c in columns), strict=True))

        assert keyed(left) == keyed(right)
        assert int(left.clicked.sum()) > 1_000 and list(left.events) == list(right.events) == ["click", "rating"]
        quantiles = (0.5, 0.95, 0.99)
        found = [
            snapshot.latency_percentiles(1, by="variant", assignments=("strategy",), quantiles=quantiles)
            for snapshot in (a, b)
        ]
        assert found[0].keys() == found[1].keys() == {"model_a", "model_b"}
        for variant in found[0]:
            assert found[0][variant] == pytest.approx(found[1][variant])
        timeline_a = a.timeline(1, by="variant", assignments=("strategy",), buckets=50)
        timeline_b = b.timeline(1, by="variant", assignments=("strategy",), buckets=50)
        assert {k: v.clicked.tolist() for k, v in timeline_a.items()} == {
            k: v.clicked.tolist() for k, v in timeline_b.items()
        }
    assert sum(len(rows) for rows, _ in chunks(30_000)) == 30_000


def test_probe_says_which_url_cannot_be_reached() -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/abtest"
    with pytest.raises(ConfigError, match=r"postgres:\*\*\*@127.0.0.1.*cannot connect to PostgreSQL") as raised:
        PostgresBackend(url, connect_timeout=1.0).probe()
    assert "s3cret" not in str(raised.value)
