"""Phases are recorded by the store's writer thread: a reload never competes with our own writer for the lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from router.errors import StoreError
from router.store import OutcomeStore, SQLiteBackend
from tests.store.conftest import exposure


class ThreadRecordingBackend(SQLiteBackend):
    """Notes which thread records each phase."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, busy_timeout_ms=50)
        self.phase_threads: list[str] = []

    def start_phase(
        self, experiment: str, config_key: str, design: Mapping[str, Any], *, current: int | None = None
    ) -> tuple[int, bool]:
        self.phase_threads.append(threading.current_thread().name)
        return super().start_phase(experiment, config_key, design, current=current)


def test_phases_are_recorded_by_the_writer_thread_between_batches(tmp_path: Path) -> None:
    backend = ThreadRecordingBackend(tmp_path / "outcomes.sqlite3")
    store = OutcomeStore(backend, flush_interval=0.01)
    store.open()
    try:
        for number in range(20):
            for index in range(50):
                store.record_exposure(exposure(number * 100 + index, phase=number + 1))
            assert store.start_phase("rec-ab", f"key-{number}", {}) == (number + 1, True)
        assert store.start_phase("rec-ab", "key-19", {}) == (20, False)
        assert store.flush(10)
    finally:
        store.close()
    assert backend.phase_threads == ["outcome-store-writer"] * 21
    assert store.stats()["written"]["exposure"] == 1000


def test_a_phase_on_a_store_locked_by_another_process_is_refused_with_the_stores_error(tmp_path: Path) -> None:
    """The writer is retrying a batch meanwhile: the phase gets the locked store's answer, not a wait behind it."""
    path = tmp_path / "outcomes.sqlite3"
    store = OutcomeStore(SQLiteBackend(path, busy_timeout_ms=50), flush_interval=0.01, job_timeout=60)
    store.open()
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            store.record_exposure(exposure(1))
            with pytest.raises(StoreError, match="cannot record the phase the outcome store \\(locked\\)"):
                store.start_phase("rec-ab", "key", {})
            other.execute("ROLLBACK")
        assert store.start_phase("rec-ab", "key", {}) == (1, True)
    finally:
        store.close()
    assert store.stats()["written"]["exposure"] == 1


def test_phases_under_a_writer_that_never_rests_are_never_refused(tmp_path: Path) -> None:
    """The writer commits batch after batch; each phase needs the write lock between two of them.

    With its own connection, the phase waited in SQLite's busy handler, which the writer kept winning: with a
    busy timeout this short, some phases were refused ("database is locked"). On the writer thread, none is.
    """
    store = OutcomeStore(SQLiteBackend(tmp_path / "outcomes.sqlite3", busy_timeout_ms=20), batch_size=2_000)
    store.open()
    stop = threading.Event()
    refused: list[str] = []

    def phases() -> None:
        for number in range(40):
            try:
                store.start_phase("rec-ab", f"key-{number}", {})
            except StoreError as exc:
                refused.append(str(exc))
        stop.set()

    reloads = threading.Thread(target=phases)
    try:
        reloads.start()
        sent = 0
        while not stop.is_set():  # keep the writer busy: a full batch queued whenever it has room
            if store.pending < 4_000:
                for _ in range(2_000):
                    store.record_exposure(exposure(sent))
                    sent += 1
            else:
                store.flush(0.001)
        reloads.join()
        assert store.flush(60)
    finally:
        store.close()
    assert refused == []
    assert store.stats()["written"]["exposure"] == sent and sent > 0
