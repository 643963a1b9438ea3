"""The seam between the generic outcome store and a database engine: what every backend must do.

    OutcomeStore (router.store.outcomes)      bounded queue, writer thread, retries, loss counting, recent index
        └── StoreBackend (this Protocol)      one engine: open/migrate, phases, write a batch, look up exposures
              ├── SQLiteBackend               router.store.sqlite (the embedded default)
              └── ...                         e.g. a PostgreSQL backend, selected by STORE_URL

Like httpx's transports under its client: the backend does one engine's I/O and nothing else; everything that is
the same for every engine lives once above it. `tests/store/test_contract.py` states what every backend must do.

All methods block. OutcomeStore calls `write` from its one writer thread and the lookups from worker threads
(several at once), so a backend keeps one connection for writing and guards what it shares for reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from router.store.epochs import EpochTransaction, StoredEpoch
from router.store.reader import PhaseSnapshot
from router.store.records import Exposure, Record


@dataclass(frozen=True)
class Failure:
    """What a backend says about an exception raised by its engine.

    `kind` labels it for metrics and logs (locked, readonly, full, io, corrupt, moved, unavailable, constraint,
    other). `poison` means a row caused it, not the store: retrying the batch cannot help, so the rows are
    written one by one and the ones that still fail are counted as lost.
    """

    kind: str
    poison: bool = False


class StoreBackend(Protocol):
    """One database engine under OutcomeStore."""

    @property
    def description(self) -> str:
        """Where the store is, for messages and logs (never with a password)."""

    def probe(self) -> None:
        """Before serving: raise ConfigError if the store cannot be reached at all (nothing listens at the URL,
        an unknown host, refused credentials), which no retry would mend. A file store has nothing to reach."""

    def open(self) -> None:
        """Create the schema, or migrate an older one; raise StoreError saying what is wrong and where."""

    def close(self) -> None:
        """Close every connection (after the writer thread has stopped)."""

    def start_phase(
        self, experiment: str, config_key: str, design: Mapping[str, Any], *, current: int | None = None
    ) -> tuple[int, bool]:
        """Continue the phase `router.store.phases.phase_to_continue` picks, else record the next: (phase, is_new).

        `current` is the caller's phase now (None at start-up); a backend hands it to `phase_to_continue`.

        Atomic across processes sharing the store, so concurrent routers agree on one phase; replicas on one
        configuration share its phase even while a reload reaches them one after another.
        """

    def write(self, batch: Sequence[Record]) -> Mapping[str, int]:
        """Write the records in one transaction: all or none. Raises the engine's error (see `classify`).

        A row of a table with `ignore_duplicates` (feedback) that repeats its unique key is skipped, not an error;
        returns how many were skipped, by record kind (`{}` when none).
        """

    def find_exposure(self, request_id: str) -> Exposure | None:
        """The exposure with this request id, or None."""

    def latest_exposure(self, user_id: str) -> Exposure | None:
        """The user's latest successful exposure, in any phase: the greatest (ts, request_id), or None."""

    def shared_secret(self, name: str, candidate: str) -> str:
        """The value kept under `name` in the store's meta table, keeping `candidate` first if there is none.

        Atomic across processes: every replica of one store gets the first value kept (request ids' secret).
        """

    def latest_epoch(self, phase: int) -> StoredEpoch | None:
        """The phase's latest weight epoch (adaptive strategies), without the lock; None before the first."""

    def epoch_exposures(self, phase: int, epoch: StoredEpoch) -> int:
        """How many exposures `epoch` has assigned so far, without the lock (router.store.epochs)."""

    def epoch_transaction(self) -> AbstractContextManager[EpochTransaction]:
        """Hold the store's epoch lock for the block, in one transaction (committed unless the block raises).

        Exactly one router at a time, across processes and hosts: SQLite takes `BEGIN IMMEDIATE`, PostgreSQL a
        transaction-scoped advisory lock (`pg_advisory_xact_lock`). See router.store.epochs.
        """

    def classify(self, exc: BaseException) -> Failure | None:
        """A Failure if `exc` came from the engine (the store is failing), None if it is a bug of ours."""

    def snapshot(self) -> AbstractContextManager[PhaseSnapshot]:
        """A read-only, consistent view of the store for the report (see router.store.reader)."""
