"""The outcome store: exposures, feedback and variant info, queued by the event loop, written by one thread.

    store = OutcomeStore(SQLiteBackend(path))          # or backend_for(STORE_URL): router.store
    store.open()                                       # the backend's schema; starts the writer thread
    phase, is_new = store.start_phase("rec-ab", key, design)
    store.record_exposure(exposure)                    # never blocks: queued for the writer thread
    store.record_feedback(feedback)                    # raises StoreOverloadedError when the queue is full
    await store.find_exposure(request_id)              # recent in-memory index first, then the database
    await store.latest_exposure(user_id)               # the user's latest to arrive, in any phase
    store.close()                                      # drains the queue: nothing acknowledged is lost

Everything here is the same for every database engine (router.store.backend draws the seam). One writer thread
commits queued events in batches (every `flush_interval` seconds, sooner when a batch is full). A failing store
(locked, read-only, disk full, I/O error, unreachable) is retried with backoff and logged; the queue is bounded,
so while it is full new feedback is refused (503, the client retries) and exposures that cannot be queued are
counted as lost - never dropped silently. On a hard kill at most the last `flush_interval` of events is lost.

Shadow calls (docs/shadow.md) are the first to go: they are queued only while the queue is below
`max_pending - shadow_headroom`, so a backlog of shadow rows can never take the room live exposures and
feedback need; a refused shadow row is counted as lost (kind `shadow_call`), never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from router.errors import StoreError, StoreOverloadedError
from router.store.backend import StoreBackend
from router.store.epochs import EpochTransaction, StoredEpoch
from router.store.reader import PhaseSnapshot
from router.store.records import RECORD_KINDS, Exposure, Feedback, Record, ShadowCall, VariantInfo

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class StoreStats:
    """Counters for metrics: events written and lost by kind, store errors by kind."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_KINDS, 0))
    lost: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_KINDS, 0))
    errors: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_KINDS, 0))
    """Rows the store skipped as repeats of a unique key (feedback sent twice): acknowledged, stored once."""


class OutcomeStore:
    """The generic outcome store over one backend: a bounded queue, a batched writer thread, a recent index.

    Call `record_*`, `find_exposure` and `latest_exposure` from one event loop; the writer thread only
    touches the queue and the backend's writing side.
    """

    def __init__(
        self,
        backend: StoreBackend,
        *,
        max_pending: int = 50_000,
        index_size: int = 20_000,
        batch_size: int = 5_000,
        flush_interval: float = 0.05,
        retry_max_delay: float = 2.0,
        stop_timeout: float = 10.0,
        shadow_headroom: int | None = None,
        job_timeout: float = 10.0,
        max_waiting: int = 1_000,
    ) -> None:
        self.backend = backend
        self.max_pending = max_pending
        self.max_waiting = max_waiting
        self._waiting = 0  # find_exposure calls waiting for another replica's write
        # Room kept for live exposures and feedback that shadow rows may not take: a fifth of the queue
        # (10,000 events by default, a fifth of a second of live traffic at 50,000 requests a second).
        self.shadow_headroom = max_pending // 5 if shadow_headroom is None else shadow_headroom
        if not 0 <= self.shadow_headroom <= max_pending:
            raise ValueError(f"shadow_headroom must lie in [0, max_pending], got {self.shadow_headroom}")
        self.flush_interval = flush_interval
        self._batch_size = batch_size
        self._retry_max_delay = retry_max_delay
        self._stop_timeout = stop_timeout

        self._pending: deque[Record] = deque()
        self._inflight = 0  # events the writer has taken but not yet resolved
        self._enqueued = 0  # events ever queued (event loop thread)
        self._done = 0  # events ever written or given up on (writer thread)
        self._done_cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._writer: threading.Thread | None = None
        self._jobs: deque[_Job[Any]] = deque()  # phase records for the writer thread to run (start_phase)
        self._job_timeout = job_timeout

        self._stats = StoreStats()
        self._failing: dict[str, str] | None = None  # the last write's failure, until a write succeeds
        self._stats_lock = threading.Lock()
        self._last_loss_log: dict[str, float] = {}  # by kind: a flood of shadow losses never hides a live one

        # The recent-exposure index: the last `index_size` exposures, plus every one not yet on disk, so an
        # attribution lookup never misses an acknowledged exposure (older ones are found in the database).
        self._index_size = index_size
        self._by_request: dict[str, Exposure] = {}
        self._request_order: deque[tuple[int, str]] = deque()  # (sequence number, request_id), oldest first
        self._latest_by_user: dict[str, Exposure] = {}
        self._user_order: deque[tuple[int, str, str]] = deque()  # (sequence number, user_id, request_id)

    @property
    def description(self) -> str:
        """Where the store is (the backend's URL, without secrets)."""
        return self.backend.description

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (create or migrate) the backend's store and start the writer thread. Raises StoreError."""
        self.backend.open()
        self._writer = threading.Thread(target=self._run, name="outcome-store-writer", daemon=True)
        self._writer.start()
        log.info("outcome store open", extra={"store": self.description})

    def close(self) -> None:
        """Write everything queued, then stop the writer (gives up after `stop_timeout` s of store failure)."""
        if self._writer is not None:
            self._stop_deadline = time.monotonic() + self._stop_timeout
            self._stop.set()
            self._wake.set()
            self._writer.join()
            self._writer = None
        self.backend.close()
        with self._stats_lock:
            written, lost = dict(self._stats.written), dict(self._stats.lost)
        log.info("outcome store closed", extra={"store": self.description, "written": written, "lost": lost})

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

    def start_phase(
        self, experiment: str, config_key: str, design: Mapping[str, Any], *, current: int | None = None
    ) -> tuple[int, bool]:
        """Continue this configuration's phase, else start the next: (phase, is_new) (router.store.phases).

        `current` is the phase the caller serves now (None at start-up). Blocking: call before serving or
        through a thread. Raises StoreError. Once the writer thread runs, the phase is recorded by that thread,
        between two batches: a reload never competes with our own writer for the database's write lock (under
        load, SQLite's busy handler let the writer win for over a second and refused the reload: "database is
        locked"). A store that is failing fails the phase at once, as before.
        """

        def action() -> tuple[int, bool]:
            return self.backend.start_phase(experiment, config_key, design, current=current)

        writer = self._writer
        if writer is None or threading.current_thread() is writer or not writer.is_alive():
            return self._call(action, "record the phase")
        job = _Job(action)
        self._jobs.append(job)
        self._wake.set()
        if not job.finished.wait(self._job_timeout) and job.cancel():
            raise StoreError(
                f"cannot record the phase in the outcome store: its writer did not get to it in {self._job_timeout:g}s"
            )
        job.finished.wait()  # it was started before the timeout: it ends (within the store's busy timeout)
        return job.outcome()

    def latest_epoch(self, phase: int) -> StoredEpoch | None:
        """The phase's latest weight epoch (blocking). Raises StoreError."""
        return self._call(lambda: self.backend.latest_epoch(phase), "read the weight epoch from")

    def epoch_exposures(self, phase: int, epoch: StoredEpoch) -> int:
        """How many exposures `epoch` has assigned so far (blocking). Raises StoreError."""
        return self._call(lambda: self.backend.epoch_exposures(phase, epoch), "count the epoch's exposures in")

    def in_epoch_lock(self, action: Callable[[EpochTransaction], T]) -> T:
        """Run `action` holding the store's epoch lock, in one transaction (blocking). Raises StoreError."""

        def locked() -> T:
            with self.backend.epoch_transaction() as tx:
                return action(tx)

        return self._call(locked, "lock the weight epochs of")

    def snapshot(self) -> AbstractContextManager[PhaseSnapshot]:
        """A read-only, consistent view for the report (blocking: use from a worker thread)."""
        return self.backend.snapshot()

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

    def record_shadow_call(self, call: ShadowCall) -> bool:
        """Queue a finished shadow call, unless the queue is within `shadow_headroom` of full (counted as lost).

        Never blocks: shadow rows are dropped before anything live is (see the module docstring).
        """
        if not self._enqueue(call, limit=self.max_pending - self.shadow_headroom):
            self._count_lost("shadow_call", call.request_id)
            return False
        return True

    def _enqueue(self, event: Record, *, limit: int | None = None) -> bool:
        pending = self._pending
        if len(pending) + self._inflight >= (self.max_pending if limit is None else limit) or self._stop.is_set():
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
            # "Latest" is defined once, here and in every backend: the greatest (ts, request_id), where ts is the
            # request's arrival; not the last to finish, and whatever its phase.
            latest = self._latest_by_user.get(exposure.user_id)
            if latest is None or (exposure.ts, exposure.request_id) > (latest.ts, latest.request_id):
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

    async def find_exposure(self, request_id: str, *, within: float = 0.0) -> Exposure | None:
        """The exposure with this request id: from the recent index, else the database. Raises StoreError.

        `within` > 0 keeps asking the database for that many seconds while it has no such row: another replica
        that served the exposure writes it within its flush interval (a caller passes it for a verified id
        only). At most `max_waiting` lookups wait at once; more raise StoreOverloadedError (retry later).
        """
        found = self._by_request.get(request_id)
        if found is not None:
            return found
        found = await asyncio.to_thread(self._call, lambda: self.backend.find_exposure(request_id), "read")
        if found is not None or within <= 0:
            return found
        if self._waiting >= self.max_waiting:
            raise StoreOverloadedError("too many feedback events waiting for their exposure, retry")
        self._waiting += 1
        try:
            deadline = time.monotonic() + within
            delay = self.flush_interval / 2
            while found is None and time.monotonic() < deadline:
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))  # poll, with backoff
                delay = min(delay * 2, 0.25)
                found = self._by_request.get(request_id) or await asyncio.to_thread(
                    self._call, lambda: self.backend.find_exposure(request_id), "read"
                )
            return found
        finally:
            self._waiting -= 1

    async def latest_exposure(self, user_id: str) -> Exposure | None:
        """The user's latest successful exposure (by arrival, any phase). Raises StoreError if it cannot read.

        The greater of the index's and the database's: the index holds this process's latest that may not be
        on disk yet, the database also holds other replicas' (so every replica answers the same once written).
        """
        indexed = self._latest_by_user.get(user_id)
        stored = await asyncio.to_thread(self._call, lambda: self.backend.latest_exposure(user_id), "read")
        if indexed is None or (
            stored is not None and (stored.ts, stored.request_id) > (indexed.ts, indexed.request_id)
        ):
            return stored
        return indexed

    def shared_secret(self, name: str, candidate: str) -> str:
        """The store's value of `name`, keeping `candidate` if it has none (blocking). Raises StoreError."""
        return self._call(lambda: self.backend.shared_secret(name, candidate), "read the secret of")

    def _call(self, action: Callable[[], T], what: str) -> T:
        """Run a backend call; count and wrap the engine's failures as StoreError."""
        try:
            return action()
        except StoreError:
            raise
        except Exception as exc:
            failure = self.backend.classify(exc)
            if failure is None:
                raise
            self._count_error(failure.kind)
            raise StoreError(f"cannot {what} the outcome store ({failure.kind}): {exc}") from exc

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_until_stopped()
        finally:
            while self._jobs:  # nobody will run them now: their callers get an answer, not a hang
                self._jobs.popleft().fail(StoreError("the outcome store is closed"))

    def _run_jobs(self) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            if job.claim():
                try:
                    job.succeed(self._call(job.action, "record the phase"))
                except Exception as exc:  # handed to the caller, who raises it in its own thread
                    job.fail(exc)

    def _write_until_stopped(self) -> None:
        while True:
            if not self._stop.is_set() and len(self._pending) < self._batch_size and not self._jobs:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
            self._run_jobs()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
                self._inflight = len(batch)
                try:
                    self._write_with_retry(batch)
                except Exception:  # the thread's outermost handler: never die silently with a full queue
                    log.critical("outcome store writer failed unexpectedly; %d events lost", len(batch), exc_info=True)
                    self._count_lost_batch(batch)
                self._inflight = 0
                with self._done_cond:
                    self._done += len(batch)
                    self._done_cond.notify_all()
                self._run_jobs()
            if self._stop.is_set() and not self._pending:
                return
            with self._done_cond:  # wake any flush() waiting on an already-empty queue
                self._done_cond.notify_all()

    def _write_with_retry(self, batch: list[Record]) -> None:
        """Write `batch`, retrying a failing store with backoff; rows that poison a batch are written one by one.

        Unexpected exceptions (ours, not the engine's) propagate to `_run`, which counts the batch as lost.
        """
        delay = 0.05
        while True:
            try:
                repeats = self.backend.write(batch)
            except Exception as exc:
                failure = self.backend.classify(exc)
                if failure is None:
                    raise
                self._count_error(failure.kind)
                self._failing = {"kind": failure.kind, "error": str(exc)[:500]}
                if failure.poison:
                    log.error("outcome store rejected a batch (%s); writing its rows one by one", exc)
                    self._write_one_by_one(batch)
                    return
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    self._give_up(batch, exc)
                    return
                self._run_jobs()  # a phase waiting meanwhile gets the failing store's answer now, not after it
                log.error(
                    "outcome store write failed (%s: %s); %d events waiting, retrying in %.2fs",
                    failure.kind,
                    exc,
                    len(batch) + len(self._pending),
                    delay,
                    extra={"store_error": failure.kind},
                )
                time.sleep(delay)  # the writer thread's own backoff; the event loop is not waiting on it
                delay = min(delay * 2, self._retry_max_delay)
            else:
                self._failing = None
                self._count_written(batch, repeats)
                return

    def _write_one_by_one(self, batch: list[Record]) -> None:
        """After a row-caused failure: keep every row that fits, report each one that does not."""
        for record in batch:
            try:
                repeats = self.backend.write([record])
            except Exception as exc:
                if self.backend.classify(exc) is None:
                    raise
                with self._stats_lock:
                    self._stats.lost[record.kind] += 1
                log.error("outcome store refused a %s and it is lost: %s (%r)", record.kind, exc, record)
            else:
                self._count_written([record], repeats)

    def _count_written(self, batch: list[Record], repeats: Mapping[str, int]) -> None:
        """Count a committed batch: its rows written, less the repeats the store skipped (counted as such)."""
        with self._stats_lock:
            for record in batch:
                self._stats.written[record.kind] += 1
            for kind, skipped in repeats.items():
                self._stats.written[kind] -= skipped
                self._stats.duplicates[kind] += skipped

    def _count_lost_batch(self, batch: list[Record]) -> None:
        with self._stats_lock:
            for record in batch:
                self._stats.lost[record.kind] += 1

    def _give_up(self, batch: list[Record], exc: Exception) -> None:
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

    def _count_error(self, kind: str) -> None:
        with self._stats_lock:
            self._stats.errors[kind] = self._stats.errors.get(kind, 0) + 1

    def _count_lost(self, kind: str, what: str) -> None:
        with self._stats_lock:
            self._stats.lost[kind] += 1
            total = self._stats.lost[kind]
        now = time.monotonic()
        if now - self._last_loss_log.get(kind, -1e9) >= 1.0:
            self._last_loss_log[kind] = now
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
                "duplicates": dict(self._stats.duplicates),
                "errors": dict(self._stats.errors),
                "pending": self.pending,
                "max_pending": self.max_pending,
                "failing": self._failing,
            }


class _Job(Generic[T]):
    """A blocking call for the writer thread, which its caller may cancel until the writer has claimed it."""

    def __init__(self, action: Callable[[], T]) -> None:
        self.action = action
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._state = "queued"  # -> "running" (claimed by the writer) | "cancelled" (by the caller)
        self._result: T | None = None
        self._error: BaseException | None = None

    def claim(self) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
            return True

    def cancel(self) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "cancelled"
            return True

    def succeed(self, result: T) -> None:
        self._result = result
        self.finished.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self.finished.set()

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set by succeed() before `finished`
