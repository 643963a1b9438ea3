"""The outcome store: exposures, feedback, phases and variant info in SQLite, written off the event loop.

    store = EventStore(results_dir / "outcomes.sqlite3")
    store.open()                                         # schema (router/schema.py), WAL, writer thread
    phase, is_new = store.start_phase("rec-ab", key, design)
    store.record_exposure(exposure)                      # never blocks: queued for the writer thread
    store.record_feedback(feedback)                      # raises StoreOverloadedError when the queue is full
    await store.find_exposure(request_id)                # recent in-memory index first, then the database
    store.close()                                        # drains the queue: nothing acknowledged is lost

One writer thread commits queued events in batches (every `flush_interval` seconds, sooner when a batch is
full) with `executemany`. A failing store (locked, read-only, disk full, I/O error) is retried with
backoff and logged; the queue is bounded, so while it is full new feedback is refused (503, the client
retries) and exposures that cannot be queued are counted as lost - never dropped silently. On a hard kill
at most the last `flush_interval` of events is lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.schema import DDL, SCHEMA_VERSION

log = logging.getLogger(__name__)

#: The outcome store's file name inside RESULTS_DIR.
STORE_FILE = "outcomes.sqlite3"

_EXPOSURE_COLUMNS = (
    "ts, request_id, experiment, phase, user_id, variant, assigned_variant, strategy, assignment, "
    "status, latency_ms, k, items, error"
)
_INSERT_EXPOSURE = f"INSERT INTO exposures ({_EXPOSURE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_FEEDBACK = (
    "INSERT INTO feedback (ts, request_id, experiment, phase, user_id, variant, assignment, item_id, position, "
    "event, value, attributed_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_INFO = "INSERT OR REPLACE INTO variant_info (phase, variant, info_json, fetched_at) VALUES (?,?,?,?)"
_SELECT_BY_REQUEST = f"SELECT {_EXPOSURE_COLUMNS} FROM exposures WHERE request_id = ?"
_SELECT_LATEST_FOR_USER = (
    f"SELECT {_EXPOSURE_COLUMNS} FROM exposures WHERE user_id = ? AND phase = ? AND status = 200 "
    "ORDER BY ts DESC, id DESC LIMIT 1"
)


class StoreError(RuntimeError):
    """The outcome store cannot be opened or read (a clear message says why)."""


class StoreOverloadedError(StoreError):
    """The write queue is full (the store is failing or too slow): refuse new feedback until it drains."""


class StoreFileMovedError(sqlite3.OperationalError):
    """The store file was deleted or replaced after open(): the writer's connection would write into a file
    nobody can see any more, so it refuses (retried and counted like any other store failure)."""


@dataclass(frozen=True, slots=True)
class Exposure:
    """One answered /recommend request (errors included); the columns of `exposures`."""

    ts: float
    request_id: str
    experiment: str
    phase: int
    user_id: str
    variant: str
    assigned_variant: str
    strategy: str
    assignment: str
    status: int
    latency_ms: float
    k: int
    items: Sequence[int]
    error: str | None

    def row(self) -> tuple[Any, ...]:
        return (
            self.ts,
            self.request_id,
            self.experiment,
            self.phase,
            self.user_id,
            self.variant,
            self.assigned_variant,
            self.strategy,
            self.assignment,
            self.status,
            self.latency_ms,
            self.k,
            orjson.dumps(list(self.items)).decode(),
            self.error,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Exposure:
        values = list(row)
        values[12] = orjson.loads(values[12])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Feedback:
    """One accepted POST /feedback, attributed to an exposure; the columns of `feedback`."""

    ts: float
    request_id: str
    experiment: str
    phase: int
    user_id: str
    variant: str
    assignment: str
    item_id: int
    position: int | None
    event: str
    value: float | None
    attributed_by: str

    def row(self) -> tuple[Any, ...]:
        return (
            self.ts,
            self.request_id,
            self.experiment,
            self.phase,
            self.user_id,
            self.variant,
            self.assignment,
            self.item_id,
            self.position,
            self.event,
            self.value,
            self.attributed_by,
        )


@dataclass(frozen=True, slots=True)
class VariantInfo:
    """A backend's GET /info for one phase; the columns of `variant_info`."""

    phase: int
    variant: str
    info: dict[str, Any]
    fetched_at: float

    def row(self) -> tuple[Any, ...]:
        return (self.phase, self.variant, orjson.dumps(self.info).decode(), self.fetched_at)


Event = Exposure | Feedback | VariantInfo

#: Failures caused by a row, not by the store: retrying the batch cannot help, so rows are written one by one.
_POISON = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    TypeError,
    ValueError,
)
_KIND = {Exposure: "exposure", Feedback: "feedback", VariantInfo: "variant_info"}


@dataclass
class StoreStats:
    """Counters for metrics: events written and lost by kind, store errors by kind."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KIND.values(), 0))
    lost: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KIND.values(), 0))
    errors: dict[str, int] = field(default_factory=dict)


class EventStore:
    """SQLite outcome store with a background batched writer and a recent-exposure index for attribution.

    Call `record_*`, `find_exposure` and `latest_exposure` from one event loop; the writer thread only
    touches the queue and its own connection.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_pending: int = 50_000,
        index_size: int = 20_000,
        batch_size: int = 5_000,
        flush_interval: float = 0.05,
        retry_max_delay: float = 2.0,
        stop_timeout: float = 10.0,
        busy_timeout_ms: int = 1_000,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self._batch_size = batch_size
        self._retry_max_delay = retry_max_delay
        self._stop_timeout = stop_timeout
        self._busy_timeout_ms = busy_timeout_ms

        self._pending: deque[Event] = deque()
        self._inflight = 0  # events the writer has taken but not yet resolved
        self._enqueued = 0  # events ever queued (event loop thread)
        self._done = 0  # events ever written or given up on (writer thread)
        self._done_cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._writer: threading.Thread | None = None

        self._stats = StoreStats()
        self._stats_lock = threading.Lock()
        self._last_loss_log = 0.0

        # The recent-exposure index: the last `index_size` exposures, plus every one not yet on disk, so an
        # attribution lookup never misses an acknowledged exposure (older ones are found in the database).
        self._index_size = index_size
        self._by_request: dict[str, Exposure] = {}
        self._request_order: deque[tuple[int, str]] = deque()  # (sequence number, request_id), oldest first
        self._latest_by_user: dict[str, Exposure] = {}
        self._user_order: deque[tuple[int, str, str]] = deque()  # (sequence number, user_id, request_id)

        self._read_conn: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file open() set up

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the file and schema if needed, check the schema version, start the writer thread."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.executescript(DDL)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the outcome store {self.path}: {exc}") from exc
        if found != str(SCHEMA_VERSION):
            raise StoreError(
                f"outcome store {self.path} has schema version {found}, this router writes version "
                f"{SCHEMA_VERSION}: move the old file aside or migrate it"
            )
        self._file_id = _file_identity(self.path)
        self._writer = threading.Thread(target=self._run, name="outcome-store-writer", daemon=True)
        self._writer.start()
        log.info("outcome store open", extra={"path": str(self.path)})

    def close(self) -> None:
        """Write everything queued, then stop the writer (gives up after `stop_timeout` s of store failure)."""
        if self._writer is not None:
            self._stop_deadline = time.monotonic() + self._stop_timeout
            self._stop.set()
            self._wake.set()
            self._writer.join()
            self._writer = None
        with self._read_lock:
            if self._read_conn is not None:
                self._read_conn.close()
                self._read_conn = None
        log.info("outcome store closed", extra={"path": str(self.path), "written": dict(self._stats.written)})

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event queued before the call is written (or given up on). False on timeout."""
        target = self._enqueued
        self._wake.set()
        with self._done_cond:
            return self._done_cond.wait_for(lambda: self._done >= target, timeout)

    async def aflush(self, within: float | None = None) -> bool:
        """`flush` without blocking the event loop."""
        return await asyncio.to_thread(self.flush, within)

    # -- phases ------------------------------------------------------------------------------------

    def start_phase(self, experiment: str, config_key: str, design: dict[str, Any]) -> tuple[int, bool]:
        """Continue the latest phase if it has this experiment and key, else start the next one.

        Returns (phase, is_new). Blocking: call before serving or through a thread.
        """
        try:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                latest = conn.execute(
                    "SELECT phase, experiment, config_key FROM phases ORDER BY phase DESC LIMIT 1"
                ).fetchone()
                if latest is not None and latest[1] == experiment and latest[2] == config_key:
                    conn.execute("COMMIT")
                    return int(latest[0]), False
                phase = 1 if latest is None else int(latest[0]) + 1
                conn.execute(
                    "INSERT INTO phases (phase, experiment, started_at, config_key, config_json) VALUES (?,?,?,?,?)",
                    (phase, experiment, time.time(), config_key, orjson.dumps(design).decode()),
                )
                conn.execute("COMMIT")
                return phase, True
            finally:
                conn.close()
        except sqlite3.Error as exc:
            self._count_error(exc)
            raise StoreError(f"cannot record the phase in {self.path}: {exc}") from exc

    # -- writing (event loop side) -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events queued or being written."""
        return len(self._pending) + self._inflight

    @property
    def accepting(self) -> bool:
        """False while the queue is full (or the store is closing): new feedback would be refused."""
        return len(self._pending) + self._inflight < self.max_pending and not self._stop.is_set()

    def record_exposure(self, exposure: Exposure) -> bool:
        """Queue an exposure and index it for attribution. False if the queue is full (counted as lost)."""
        if not self._enqueue(exposure):
            self._count_lost("exposure", exposure.request_id)
            return False
        self._index(exposure)
        return True

    def record_feedback(self, feedback: Feedback) -> None:
        """Queue a feedback event. Raises StoreOverloadedError when the queue is full (nothing is acknowledged)."""
        if not self._enqueue(feedback):
            raise StoreOverloadedError("outcome store overloaded, retry")

    def record_variant_info(self, info: VariantInfo) -> bool:
        """Queue a backend's /info for its phase. False if the queue is full (counted as lost)."""
        if not self._enqueue(info):
            self._count_lost("variant_info", info.variant)
            return False
        return True

    def _enqueue(self, event: Event) -> bool:
        pending = self._pending
        if len(pending) + self._inflight >= self.max_pending or self._stop.is_set():
            return False
        pending.append(event)
        self._enqueued += 1
        if len(pending) >= self._batch_size:
            self._wake.set()
        return True

    def _index(self, exposure: Exposure) -> None:
        seq = self._enqueued  # FIFO: this exposure is on disk once the writer has resolved `seq` events
        self._by_request[exposure.request_id] = exposure
        self._request_order.append((seq, exposure.request_id))
        if exposure.status == 200:
            self._latest_by_user[exposure.user_id] = exposure
            self._user_order.append((seq, exposure.user_id, exposure.request_id))
        done, size = self._done, self._index_size
        order = self._request_order
        while len(order) > size and order[0][0] <= done:
            self._by_request.pop(order.popleft()[1], None)
        users = self._user_order
        while len(users) > size and users[0][0] <= done:
            _, user, request_id = users.popleft()
            latest = self._latest_by_user.get(user)
            if latest is not None and latest.request_id == request_id:
                del self._latest_by_user[user]

    # -- attribution lookups -----------------------------------------------------------------------

    async def find_exposure(self, request_id: str) -> Exposure | None:
        """The exposure with this request id: from the recent index, else the database. Raises StoreError."""
        found = self._by_request.get(request_id)
        if found is not None:
            return found
        return await asyncio.to_thread(self._select_one, _SELECT_BY_REQUEST, (request_id,))

    async def latest_exposure(self, user_id: str, phase: int) -> Exposure | None:
        """The user's latest successful exposure in `phase`. Raises StoreError if the database cannot be read."""
        latest = self._latest_by_user.get(user_id)
        if latest is not None:
            # The index holds the user's latest exposure overall: if it is from another phase, so is every other.
            return latest if latest.phase == phase else None
        return await asyncio.to_thread(self._select_one, _SELECT_LATEST_FOR_USER, (user_id, phase))

    def _select_one(self, sql: str, params: tuple[Any, ...]) -> Exposure | None:
        try:
            with self._read_lock:
                if self._read_conn is None:
                    self._read_conn = self._connect(check_same_thread=False)
                row = self._read_conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            self._count_error(exc)
            raise StoreError(f"cannot read the outcome store: {exc}") from exc
        return None if row is None else Exposure.from_row(row)

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                if not self._stop.is_set() and len(self._pending) < self._batch_size:
                    self._wake.wait(self.flush_interval)
                    self._wake.clear()
                while self._pending:
                    batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
                    self._inflight = len(batch)
                    try:
                        conn = self._write_with_retry(conn, batch)
                    except Exception:  # the thread's outermost handler: never die silently with a full queue
                        log.critical(
                            "outcome store writer failed unexpectedly; %d events lost", len(batch), exc_info=True
                        )
                        self._count_lost_batch(batch)
                        conn = self._discard(conn)
                    self._inflight = 0
                    with self._done_cond:
                        self._done += len(batch)
                        self._done_cond.notify_all()
                if self._stop.is_set() and not self._pending:
                    return
                with self._done_cond:  # wake any flush() waiting on an already-empty queue
                    self._done_cond.notify_all()
        finally:
            if conn is not None:
                conn.close()

    def _write_with_retry(self, conn: sqlite3.Connection | None, batch: list[Event]) -> sqlite3.Connection | None:
        delay = 0.05
        while True:
            try:
                self._check_file()
                if conn is None:
                    conn = self._connect()
                self._write(conn, batch)
                return conn
            except _POISON as exc:
                log.error("outcome store rejected a batch (%s); writing its rows one by one", exc)
                self._count_error(exc)
                assert conn is not None
                self._write_one_by_one(conn, batch)
                return conn
            except sqlite3.Error as exc:
                kind = self._count_error(exc)
                conn = self._discard(conn)
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    self._give_up(batch, exc)
                    return conn
                log.error(
                    "outcome store write failed (%s: %s); %d events waiting, retrying in %.2fs",
                    kind,
                    exc,
                    len(batch) + len(self._pending),
                    delay,
                    extra={"store_error": kind},
                )
                time.sleep(delay)  # the writer thread's own backoff; the event loop is not waiting on it
                delay = min(delay * 2, self._retry_max_delay)

    def _write(self, conn: sqlite3.Connection, batch: list[Event]) -> None:
        exposures = [e.row() for e in batch if type(e) is Exposure]
        feedback = [e.row() for e in batch if type(e) is Feedback]
        infos = [e.row() for e in batch if type(e) is VariantInfo]
        conn.execute("BEGIN IMMEDIATE")
        try:
            if exposures:
                conn.executemany(_INSERT_EXPOSURE, exposures)
            if feedback:
                conn.executemany(_INSERT_FEEDBACK, feedback)
            if infos:
                conn.executemany(_INSERT_INFO, infos)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        written = self._stats.written
        written["exposure"] += len(exposures)
        written["feedback"] += len(feedback)
        written["variant_info"] += len(infos)

    def _write_one_by_one(self, conn: sqlite3.Connection, batch: list[Event]) -> None:
        """After a constraint failure: keep every row that fits, report each one that does not."""
        for event in batch:
            try:
                self._write(conn, [event])
            except (sqlite3.Error, *_POISON) as exc:
                kind = _KIND[type(event)]
                with self._stats_lock:
                    self._stats.lost[kind] += 1
                log.error("outcome store refused a %s and it is lost: %s (%r)", kind, exc, event)

    def _count_lost_batch(self, batch: list[Event]) -> None:
        with self._stats_lock:
            for event in batch:
                self._stats.lost[_KIND[type(event)]] += 1

    def _give_up(self, batch: list[Event], exc: sqlite3.Error) -> None:
        lost = batch + list(self._pending)
        self._pending.clear()
        self._count_lost_batch(lost)
        log.error(
            "outcome store still failing at shutdown after %.0fs (%s): %d events could not be written and are lost",
            self._stop_timeout,
            exc,
            len(lost),
        )
        batch[:] = lost  # so the caller counts all of them as done

    # -- helpers -----------------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Raise StoreFileMovedError if the file at `path` is no longer the one open() set up."""
        try:
            found: tuple[int, int] | None = _file_identity(self.path)
        except FileNotFoundError:
            found = None
        if found != self._file_id:
            raise StoreFileMovedError(
                f"the outcome store file {self.path} was deleted or replaced while the router ran; "
                "restart the router to open it anew"
            )

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=check_same_thread, timeout=self._busy_timeout_ms / 1000
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @staticmethod
    def _discard(conn: sqlite3.Connection | None) -> None:
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                log.warning("closing a failed outcome store connection failed too", exc_info=True)

    def _count_error(self, exc: Exception) -> str:
        kind = error_kind(exc)
        with self._stats_lock:
            self._stats.errors[kind] = self._stats.errors.get(kind, 0) + 1
        return kind

    def _count_lost(self, kind: str, what: str) -> None:
        with self._stats_lock:
            self._stats.lost[kind] += 1
            total = self._stats.lost[kind]
        now = time.monotonic()
        if now - self._last_loss_log >= 1.0:
            self._last_loss_log = now
            log.error(
                "outcome store queue full (%d pending): %s %s not recorded; %d %s events lost so far",
                self.pending,
                kind,
                what,
                total,
                kind,
            )

    def stats(self) -> dict[str, Any]:
        """A snapshot for metrics and /health: written/lost by kind, errors by kind, pending."""
        with self._stats_lock:
            return {
                "written": dict(self._stats.written),
                "lost": dict(self._stats.lost),
                "errors": dict(self._stats.errors),
                "pending": self.pending,
                "max_pending": self.max_pending,
            }


def _file_identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def error_kind(exc: Exception) -> str:
    """A short label for a SQLite failure: locked, readonly, full, io, corrupt, moved, constraint or other."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if isinstance(exc, StoreFileMovedError):
        return "moved"
    if isinstance(exc, _POISON):
        return "constraint"
    if "BUSY" in name or "LOCKED" in name or "locked" in text or "busy" in text:
        return "locked"
    if "READONLY" in name or "readonly" in text or "read-only" in text:
        return "readonly"
    if "FULL" in name or "full" in text:
        return "full"
    if "IOERR" in name or "disk i/o" in text:
        return "io"
    if "CORRUPT" in name or "NOTADB" in name or "malformed" in text:
        return "corrupt"
    return "other"
