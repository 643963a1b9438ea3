"""What only the SQLite backend does: WAL, the schema version, migrating version-1, -2 and -4 stores, a moved file."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from router.errors import StoreError, StoreFormatError
from router.store import SQLiteBackend
from router.store.schema import SCHEMA_VERSION, SHADOW_CALLS
from router.store.sqlite import StoreFileMovedError
from tests.store.conftest import exposure, feedback_for, interleaved, shadow_call_for

V1_SCHEMA = Path(__file__).with_name("schema_v1.sql")
V2_SCHEMA = Path(__file__).with_name("schema_v2.sql")


def make_v1_store(path: Path) -> None:
    """A store exactly as the version-1 router wrote it: its DDL, a hash phase at 30/70, rows of each kind."""
    config = {
        "experiment": "rec-ab",
        "strategy": "hash",
        "salt": "s",
        "variants": [
            {"name": "model_a", "url": "http://a", "weight": 30, "share": 0.3},
            {"name": "model_b", "url": "http://b", "weight": 70, "share": 0.7},
        ],
    }
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA.read_text(encoding="utf-8"))
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO phases VALUES (1, 'rec-ab', 1.0, 'key', ?)", (json.dumps(config),))
        rows = [
            ("r1", "model_a", "model_a", "strategy"),
            ("r2", "model_b", "model_b", "strategy"),
            ("r3", "model_a", "model_b", "fallback"),  # assigned model_b, served by model_a
            ("r4", "model_b", "model_b", "override"),
        ]
        for request_id, variant, assigned, assignment in rows:
            conn.execute(
                "INSERT INTO exposures (ts, request_id, experiment, phase, user_id, variant, assigned_variant, "
                "strategy, assignment, status, latency_ms, k, items, error) "
                "VALUES (1.0, ?, 'rec-ab', 1, 'u', ?, ?, 'hash', ?, 200, 1.0, 3, '[1,2,3]', NULL)",
                (request_id, variant, assigned, assignment),
            )


def test_a_version_1_store_is_migrated_on_open_with_true_propensities(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    make_v1_store(path)
    backend = SQLiteBackend(path)
    backend.open()
    try:
        with sqlite3.connect(path) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            propensities = dict(conn.execute("SELECT request_id, propensity FROM exposures"))
        assert version == str(SCHEMA_VERSION)
        # The assigned variant's configured share; overrides were never randomised.
        assert propensities == {"r1": 0.3, "r2": 0.7, "r3": 0.7, "r4": None}
        found = backend.find_exposure("r3")
        assert found is not None and found.propensity == 0.7 and found.assigned_variant == "model_b"
        backend.write([exposure(1)])  # and it keeps working as a current store
        assert backend.find_exposure(exposure(1).request_id) == exposure(1)
    finally:
        backend.close()


def test_a_version_2_store_is_migrated_on_open_and_its_rows_are_not_interleaved(tmp_path: Path) -> None:
    """Version 3 added exposures.teams and exposures.failed_variant (interleaving): NULL for every older row."""
    path = tmp_path / "outcomes.sqlite3"
    old = exposure(1)
    with sqlite3.connect(path) as conn:
        conn.executescript(V2_SCHEMA.read_text(encoding="utf-8"))
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        columns = [c for c in old.columns() if c not in ("teams", "failed_variant", "epoch")]
        conn.execute(
            f"INSERT INTO exposures ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            tuple(old.columns()[c] for c in columns),
        )
    backend = SQLiteBackend(path)
    backend.open()
    try:
        with sqlite3.connect(path) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            added = conn.execute("SELECT teams, failed_variant FROM exposures").fetchall()
        assert int(version) == SCHEMA_VERSION >= 3
        assert added == [(None, None)]
        assert backend.find_exposure(old.request_id) == old  # teams None: an exposure of one variant
        merged = interleaved(2, teams=("model_b", "model_a", "model_b"), failed_variant=None)
        backend.write([merged])
        assert backend.find_exposure(merged.request_id) == merged
    finally:
        backend.close()


def test_a_version_2_store_is_migrated_on_open_with_the_shadow_calls_table(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(V2_SCHEMA.read_text(encoding="utf-8"))
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        conn.execute("INSERT INTO phases VALUES (1, 'rec-ab', 1.0, 'key', '{}')")
    old = SQLiteBackend(path)
    old_exposure = exposure(1)
    with sqlite3.connect(path) as conn:  # a row written by the version-2 router
        columns = {k: v for k, v in old_exposure.columns().items() if k not in ("teams", "failed_variant", "epoch")}
        conn.execute(
            f"INSERT INTO exposures ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            tuple(columns.values()),
        )
    old.open()
    try:
        with sqlite3.connect(path) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            names = tuple(row[1] for row in conn.execute("PRAGMA table_info(shadow_calls)"))
            indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(shadow_calls)")}
        assert version == str(SCHEMA_VERSION)
        assert names == SHADOW_CALLS.column_names
        assert indexes == {"shadow_calls_phase_shadow": 1}  # name -> unique
        assert old.find_exposure(old_exposure.request_id) == old_exposure  # existing rows untouched
        old.write([shadow_call_for(old_exposure)])
        with old.snapshot() as snapshot:
            assert snapshot.shadow_names(1) == ("model_c",)
    finally:
        old.close()
    reopened = SQLiteBackend(path)  # opening a current store again changes nothing
    reopened.open()
    reopened.close()


def test_a_store_newer_than_the_router_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    SQLiteBackend(path).open()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 999"):
        SQLiteBackend(path).open()


def test_the_store_runs_in_wal_mode(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "outcomes.sqlite3")
    backend.open()
    backend.write([exposure(1)])
    with sqlite3.connect(backend.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    backend.close()


def test_a_replaced_store_file_is_noticed_before_writing(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "outcomes.sqlite3")
    backend.open()
    backend.write([exposure(1)])
    os.replace(backend.path, tmp_path / "moved.sqlite3")
    with pytest.raises(StoreFileMovedError) as raised:
        backend.write([exposure(2)])
    failure = backend.classify(raised.value)
    assert failure is not None and failure.kind == "moved" and not failure.poison
    backend.close()


def test_a_file_that_is_not_sqlite_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    path.write_text("this is not a database\n" * 100)
    with pytest.raises(StoreFormatError, match="not a SQLite database"), SQLiteBackend(path).snapshot():
        pass


def test_a_version_4_store_is_migrated_keeping_the_first_of_each_repeated_feedback(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    current = SQLiteBackend(path)
    current.open()
    current.close()
    seen = exposure(1)
    click = feedback_for(seen, seen.items[0])
    with sqlite3.connect(path) as conn:  # turn it into a version-4 store holding repeated clicks
        conn.execute("DROP INDEX feedback_once")
        conn.execute("DROP INDEX exposures_user_latest")
        conn.execute("CREATE INDEX feedback_request ON feedback (request_id)")
        conn.execute("CREATE INDEX exposures_user ON exposures (user_id, phase, ts)")
        conn.execute("DROP TABLE weight_epochs")  # version 6's
        conn.execute("ALTER TABLE exposures DROP COLUMN epoch")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO phases VALUES (1, 'rec-ab', 1.0, 'key', '{}')")
    with sqlite3.connect(path) as conn:  # version 4 had no unique index: the repeats were stored
        for ts in (5.0, 6.0, 7.0):
            columns = {**click.columns(), "ts": ts}
            conn.execute(
                f"INSERT INTO feedback ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                tuple(columns.values()),
            )
    migrated = SQLiteBackend(path)
    migrated.open()
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT ts FROM feedback").fetchall() == [(5.0,)]
            indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(feedback)")}
            assert indexes.get("feedback_once") == 1 and "feedback_request" not in indexes
            exposure_indexes = {row[1] for row in conn.execute("PRAGMA index_list(exposures)")}
            assert "exposures_user_latest" in exposure_indexes and "exposures_user" not in exposure_indexes
            assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
                str(SCHEMA_VERSION),
            )
        migrated.write([click])  # a repeat after the migration is skipped
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone() == (1,)
    finally:
        migrated.close()
