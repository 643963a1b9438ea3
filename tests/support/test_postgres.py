"""The test PostgreSQL server itself: it stores rows, survives restarts and crashes, refuses when stopped."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresCluster, PostgresNotInstalledError, find_binaries, postgres_cluster


def count(url: str) -> int:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_keeps_committed_rows_across_a_restart_and_breaks_open_connections(
    postgres: PostgresCluster, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL)")
        conn.execute("INSERT INTO events VALUES (1, 'exposure'), (2, 'feedback')")
        conn.commit()
        row = conn.execute("SELECT kind FROM events WHERE id = 2").fetchone()
        assert row == ("feedback",)

        postgres.restart()

        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert count(postgres_url) == 2


def test_postgres_keeps_committed_rows_through_a_crash(postgres: PostgresCluster, postgres_url: str) -> None:
    """`immediate` skips the shutdown checkpoint: the rows come back from the WAL."""
    with psycopg.connect(postgres_url, connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO events SELECT generate_series(1, 1000)")
    postgres.restart(mode="immediate")
    assert count(postgres_url) == 1000
    assert "database system was interrupted" in postgres.log_file.read_text(encoding="utf-8", errors="replace")


def test_stopped_postgres_refuses_connections_until_started(postgres: PostgresCluster, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint)")
    postgres.stop()
    assert not postgres.running
    with pytest.raises(psycopg.OperationalError, match=r"(?i)connection refused"):
        psycopg.connect(postgres_url, connect_timeout=5)
    postgres.start()
    assert count(postgres_url) == 0


def test_each_test_gets_an_empty_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_postgres_cluster_is_stopped_and_removed_at_the_end() -> None:
    with postgres_cluster() as cluster:
        root, port = cluster.root, cluster.port
        assert cluster.url.endswith(f"127.0.0.1:{port}/abtest")
        with psycopg.connect(cluster.url, connect_timeout=10) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone() == (15,)
    assert not root.exists()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_missing_postgres_is_an_error_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotInstalledError, match=r"apt-get install postgresql-15"):
        find_binaries(tmp_path)
