"""The generic outcome store (queue, writer thread, index, retries, loss counting) over a real SQLite backend."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.errors import StoreError, StoreOverloadedError
from router.store import Exposure, OutcomeStore, SQLiteBackend, VariantInfo
from router.store.schema import SCHEMA_VERSION
from tests.store.conftest import exposure, feedback_for, shadow_call_for


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def sqlite_store(path: Path, *, busy_timeout_ms: int = 50, **options: Any) -> OutcomeStore:
    return OutcomeStore(SQLiteBackend(path, busy_timeout_ms=busy_timeout_ms), **options)


def path_of(store: OutcomeStore) -> Path:
    backend = store.backend
    assert isinstance(backend, SQLiteBackend)
    return backend.path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OutcomeStore]:
    opened = sqlite_store(tmp_path / "outcomes.sqlite3")
    opened.open()
    yield opened
    opened.close()


def test_close_writes_every_queued_event(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "outcomes.sqlite3", flush_interval=10.0)  # only close() can write them
    store.open()
    shown = [exposure(n) for n in range(1_000)]
    for seen in shown:
        assert store.record_exposure(seen)
    for seen in shown[:300]:
        store.record_feedback(feedback_for(seen, seen.items[1]))
    store.record_variant_info(VariantInfo(phase=1, variant="model_a", info={"algorithm": "svd"}, fetched_at=1.0))
    store.close()
    assert count(path_of(store), "exposures") == 1_000
    assert count(path_of(store), "feedback") == 300
    assert count(path_of(store), "variant_info") == 1
    assert store.stats()["written"] == {"exposure": 1_000, "feedback": 300, "variant_info": 1, "shadow_call": 0}


def test_rows_hold_what_was_recorded(store: OutcomeStore) -> None:
    seen = exposure(7)
    store.record_exposure(seen)
    store.record_feedback(feedback_for(seen, 8))
    assert store.flush(5)
    with sqlite3.connect(path_of(store)) as conn:
        row = conn.execute("SELECT request_id, variant, items, status, error FROM exposures").fetchone()
        assert row == (seen.request_id, "model_a", "[7,8,9]", 200, None)
        assert conn.execute("SELECT position, attributed_by FROM feedback").fetchone() == (1, "request_id")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_a_store_with_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    first = sqlite_store(path)
    first.open()
    first.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 999"):
        sqlite_store(path).open()


def test_attribution_finds_unflushed_and_flushed_exposures(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    store = sqlite_store(path, flush_interval=10.0)
    store.open()
    early, failed = exposure(1, user="alice"), exposure(3, user="alice", status=504)
    # The latest to arrive, in a later phase, finishing (recorded) before an earlier one of the first phase.
    late, slow = exposure(2, user="alice", phase=2), exposure(0, user="alice", ts=early.ts - 5)
    for seen in (early, late, slow, failed):
        store.record_exposure(seen)

    async def lookups(on: OutcomeStore) -> tuple[Exposure | None, Exposure | None, Exposure | None, Exposure | None]:
        return (
            await on.find_exposure(early.request_id),
            await on.latest_exposure("alice"),
            await on.latest_exposure("bob"),
            await on.find_exposure("f" * 32),
        )

    # Not yet on disk: the in-memory index answers. The latest *successful* exposure to arrive is the user's latest.
    assert asyncio.run(lookups(store)) == (early, late, None, None)
    store.close()
    # A new process: the database answers.
    reopened = sqlite_store(path)
    reopened.open()
    try:
        assert asyncio.run(lookups(reopened)) == (early, late, None, None)
    finally:
        reopened.close()


def test_index_stays_bounded_and_lookups_fall_back_to_the_database(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "outcomes.sqlite3", index_size=10, max_pending=1_000)
    store.open()
    try:
        shown = [exposure(n, user=f"u{n % 50}") for n in range(300)]
        for start in range(0, 300, 30):
            for seen in shown[start : start + 30]:
                store.record_exposure(seen)
            assert store.flush(5)
        assert len(store._by_request) <= 40  # the index keeps recent or unwritten exposures only
        found = asyncio.run(store.find_exposure(shown[0].request_id))
        assert found == shown[0]
        assert asyncio.run(store.latest_exposure("u0")) == shown[250]
    finally:
        store.close()


def test_a_locked_store_is_retried_then_overload_refuses_feedback_and_counts_lost_exposures(
    tmp_path: Path,
) -> None:
    store = sqlite_store(tmp_path / "outcomes.sqlite3", max_pending=20, busy_timeout_ms=20, retry_max_delay=0.05)
    store.open()
    blocker = sqlite3.connect(path_of(store), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        accepted = [exposure(n) for n in range(20)]
        for seen in accepted:
            assert store.record_exposure(seen)
        assert not store.record_exposure(exposure(99))  # queue full: refused and counted, not dropped silently
        with pytest.raises(StoreOverloadedError, match="overloaded"):
            store.record_feedback(feedback_for(accepted[0], accepted[0].items[0]))
        deadline = time.monotonic() + 10
        while not store.stats()["errors"].get("locked"):
            assert time.monotonic() < deadline, "the writer never reported the lock"
            time.sleep(0.01)  # polling the writer thread's counters, with a deadline
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush(10)  # the lock is gone: the retry writes everything that was accepted
    stats = store.stats()
    store.close()
    assert count(path_of(store), "exposures") == 20
    assert stats["lost"]["exposure"] == 1
    assert stats["lost"]["feedback"] == 0  # refused with an error, so never acknowledged


def test_a_bad_row_does_not_block_the_others(store: OutcomeStore) -> None:
    seen = exposure(1)
    store.record_exposure(seen)
    assert store.flush(5)
    store.record_exposure(exposure(2))
    store.record_exposure(seen)  # same request_id again: violates UNIQUE
    store.record_exposure(exposure(3))
    assert store.flush(5)
    assert count(path_of(store), "exposures") == 3
    assert store.stats()["lost"]["exposure"] == 1
    assert store.stats()["errors"]["constraint"] >= 1


def test_writes_happen_in_batches_off_the_calling_thread(store: OutcomeStore) -> None:
    # Queueing is a deque append plus an index entry; writing 20k rows is the writer thread's job. Proved by
    # the cause, not a time budget: with the database locked by another writer, every one is still accepted
    # at once (a write on the calling thread would wait for the lock, then fail), and none is written yet.
    blocker = sqlite3.connect(path_of(store), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert all(store.record_exposure(exposure(n)) for n in range(20_000))
        assert store.pending == 20_000
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush(30)
    assert count(path_of(store), "exposures") == 20_000


def test_shadow_rows_are_refused_first_so_a_shadow_backlog_never_takes_the_room_of_live_events(
    tmp_path: Path,
) -> None:
    store = sqlite_store(tmp_path / "outcomes.sqlite3", max_pending=20, shadow_headroom=5, busy_timeout_ms=20)
    store.open()
    blocker = sqlite3.connect(path_of(store), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer cannot write: the queue only fills
    try:
        live = [exposure(n) for n in range(20)]
        for seen in live[:10]:
            assert store.record_exposure(seen)
        shadowed = [store.record_shadow_call(shadow_call_for(seen)) for seen in live[:10]]
        assert shadowed == [True] * 5 + [False] * 5  # shadow rows stop at max_pending - headroom = 15
        for seen in live[10:15]:
            assert store.record_exposure(seen)  # the headroom is the live events'
        assert store.accepting is False and not store.record_exposure(exposure(99))
        lost = store.stats()["lost"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush(10)
    store.close()
    assert lost == {"exposure": 1, "feedback": 0, "variant_info": 0, "shadow_call": 5}
    assert count(path_of(store), "exposures") == 15 and count(path_of(store), "shadow_calls") == 5


def test_shadow_headroom_must_fit_the_queue(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shadow_headroom"):
        sqlite_store(tmp_path / "outcomes.sqlite3", max_pending=10, shadow_headroom=11)


def test_a_lookup_waits_for_another_processs_write_and_the_waiters_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    here = sqlite_store(path, max_waiting=1)
    there = sqlite_store(path, flush_interval=10.0)  # another replica on the same file, not flushing yet
    here.open()
    there.open()
    served = exposure(1)
    there.record_exposure(served)

    async def scenario() -> tuple[Exposure | None, BaseException | None, Exposure | None]:
        waiting = asyncio.create_task(here.find_exposure(served.request_id, within=30.0))
        deadline = time.monotonic() + 10
        while here._waiting == 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - a poll with a deadline
            await asyncio.sleep(0.001)  # until the first lookup is waiting
        assert here._waiting == 1
        try:
            await here.find_exposure("f" * 32, within=30.0)
            refused: BaseException | None = None
        except StoreOverloadedError as exc:  # a second waiter is one too many
            refused = exc
        await asyncio.to_thread(there.flush, 10.0)  # the other replica writes: the waiting lookup finds it
        found = await waiting
        return found, refused, await here.find_exposure("e" * 32, within=0.2)  # never written: None, bounded

    try:
        found, refused, missing = asyncio.run(scenario())
        assert found == served and isinstance(refused, StoreOverloadedError) and missing is None
    finally:
        there.close()
        here.close()
