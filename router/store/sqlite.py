"""The embedded outcome store: one SQLite file in WAL mode (`sqlite:///results/outcomes.sqlite3`).

    backend = SQLiteBackend(Path("results/outcomes.sqlite3"))
    backend.open()                                  # schema, WAL, migration of an older version
    backend.write([exposure, feedback])             # one transaction (from OutcomeStore's writer thread)
    with backend.snapshot() as snapshot: ...        # a read-only connection in one read transaction

WAL mode lets the report read while the router writes, and vice versa. Before each batch the writer checks that
the file at the path is still the one it opened, and that its `-wal` and `-shm` companions are still the ones its
connection uses: a deleted or replaced store would otherwise swallow writes that nobody can ever read, and a
deleted `-wal` holds every transaction since the last checkpoint (readers got "disk I/O error" while the writer
counted its batches as written; a kill then lost them). On a companion's loss the writer first checkpoints what
its connection still holds into the main file, then refuses to write on (kind `moved`, sticky until a restart).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from router.errors import NoDataError, StoreError, StoreFormatError
from router.store.backend import Failure
from router.store.epochs import StoredEpoch
from router.store.phases import RECENT_PHASES, PhaseRow, phase_to_continue, stops_recorded
from router.store.reader import InterleavingTotals, PhaseRecord
from router.store.records import Exposure, Record
from router.store.rollup import counted_in_rollups
from router.store.rollup_reader import RollupReads, selected_marks
from router.store.schema import EXPOSURES, META, SCHEMA_VERSION, ddl, migrations_from
from router.store.sqlite_epochs import SQLiteEpochReads, SQLiteEpochTransaction, epoch_transaction, latest_epoch
from router.store.sqlite_shadow import SQLiteShadowReads

log = logging.getLogger(__name__)

_EXPOSURE_SELECT = f"SELECT {', '.join(EXPOSURES.insert_columns)} FROM exposures"
_BY_REQUEST = f"{_EXPOSURE_SELECT} WHERE request_id = ?"
#: Rows fetched at once where a read streams many (the per-pair totals).
_CHUNK_ROWS = 65_536
#: "Latest" is defined once (router.store.outcomes): the latest to arrive, in any phase; ties by request id.
_LATEST_FOR_USER = f"{_EXPOSURE_SELECT} WHERE user_id = ? AND status = 200 ORDER BY ts DESC, request_id DESC LIMIT 1"

#: Failures caused by a row, not by the store: retrying the batch cannot help.
_POISON = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    TypeError,
    ValueError,
)


class StoreFileMovedError(sqlite3.OperationalError):
    """The store file was deleted or replaced after open(): writing on would go into a file nobody can see."""


def _insert_sql(record_type: type[Record]) -> str:
    """The INSERT of one record type; tables keyed by their content (variant_info) keep the latest row."""
    table = record_type.table
    verb = "INSERT OR REPLACE" if table.primary_key else "INSERT OR IGNORE" if table.ignore_duplicates else "INSERT"
    columns = table.insert_columns
    return f"{verb} INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


class SQLiteBackend:
    """StoreBackend over one SQLite file (see the module docstring)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 1_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._file_id: tuple[int, int] | None = None
        # The -wal and -shm files the writer's connection opened (they live as long as some connection is open).
        self._companions: dict[str, tuple[int, int] | None] = {}
        self._moved: str | None = None  # set once a file was found deleted or replaced: no more writing

    @property
    def description(self) -> str:
        return f"sqlite:///{self.path}"

    # -- lifecycle ---------------------------------------------------------------------------------

    def probe(self) -> None:
        """Nothing to reach: open() creates the file, and says what is wrong if it cannot."""

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self.connect()) as conn:
                self._create_or_migrate(conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the outcome store {self.path}: {exc}") from exc
        self._file_id = _file_identity(self.path)

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            found = None
            if has_meta:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                found = None if row is None else int(row[0])
            if found is None:
                for statement in ddl("sqlite").split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {META.name} (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif found > SCHEMA_VERSION:
                raise StoreError(
                    f"outcome store {self.path} has schema version {found}, newer than this router's "
                    f"{SCHEMA_VERSION}: run a newer router, or move the file aside"
                )
            elif found < SCHEMA_VERSION:
                for target, statements in migrations_from(found, "sqlite"):
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
                    log.info("outcome store migrated", extra={"path": str(self.path), "schema_version": target})
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    log.warning("closing an outcome store connection failed", exc_info=True)
        self._writer = self._reader = None

    # -- phases ------------------------------------------------------------------------------------

    def start_phase(
        self, experiment: str, config_key: str, design: Mapping[str, Any], *, current: int | None = None
    ) -> tuple[int, bool]:
        with closing(self.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                recent = [
                    PhaseRow(int(row[0]), str(row[1]), str(row[2]), float(row[3]), stops_recorded(row[4]))
                    for row in conn.execute(
                        "SELECT phase, experiment, config_key, started_at, config_json FROM phases "
                        "ORDER BY phase DESC LIMIT ?",
                        (RECENT_PHASES,),
                    )
                ]
                continued = phase_to_continue(recent, experiment, config_key, current=current, now=time.time())
                if continued is not None:
                    conn.execute("COMMIT")
                    return continued, False
                phase = 1 if not recent else recent[0].phase + 1
                conn.execute(
                    "INSERT INTO phases (phase, experiment, started_at, config_key, config_json) VALUES (?,?,?,?,?)",
                    (phase, experiment, time.time(), config_key, orjson.dumps(dict(design)).decode()),
                )
                conn.execute("COMMIT")
                return phase, True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # -- weight epochs (adaptive strategies: router.store.epochs) -----------------------------------

    def latest_epoch(self, phase: int) -> StoredEpoch | None:
        with self._read_lock:
            return latest_epoch(self._read_connection(), phase)

    def epoch_exposures(self, phase: int, epoch: StoredEpoch) -> int:
        with self._read_lock:
            return SQLiteEpochTransaction(self._read_connection()).exposures_in(phase, epoch)

    def _read_connection(self) -> sqlite3.Connection:
        """The shared lookup connection (call holding `_read_lock`)."""
        if self._reader is None:
            self._reader = self.connect(check_same_thread=False)
            self._reader.row_factory = sqlite3.Row
        return self._reader

    @contextmanager
    def epoch_transaction(self) -> Iterator[SQLiteEpochTransaction]:
        """The epoch lock: a fresh connection in `BEGIN IMMEDIATE` (SQLite's one write lock) for the block."""
        with closing(self.connect()) as conn, epoch_transaction(conn) as tx:
            yield tx

    # -- writing (the writer thread) ---------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> Mapping[str, int]:
        self._check_file()
        if self._writer is None:
            # Used by the writer thread only; closed by close() once that thread has stopped (another thread).
            self._writer = self.connect(check_same_thread=False)
            self._companions = {suffix: _identity_or_none(self._companion(suffix)) for suffix in _COMPANIONS}
        else:
            self._check_companions(self._writer)
        conn = self._writer
        grouped: dict[type[Record], list[tuple[Any, ...]]] = {}
        for record in batch:
            grouped.setdefault(type(record), []).append(tuple(record.columns().values()))
        try:
            conn.execute("BEGIN IMMEDIATE")
            repeats: dict[str, int] = {}
            with counted_in_rollups(conn, "sqlite", (t.kind for t in grouped)):  # SQLite's one writer: no lock
                for record_type, rows in grouped.items():
                    inserted = conn.executemany(_insert_sql(record_type), rows).rowcount
                    if record_type.table.ignore_duplicates and inserted < len(rows):
                        repeats[record_type.kind] = len(rows) - inserted
            conn.execute("COMMIT")
            return repeats
        except BaseException as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if not isinstance(exc, _POISON):
                self._discard_writer()  # a failing store: reconnect on the next attempt
            raise

    def _discard_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except sqlite3.Error:
                log.warning("closing a failed outcome store connection failed too", exc_info=True)
            self._writer = None

    def _check_file(self) -> None:
        if self._moved is None and _identity_or_none(self.path) != self._file_id:
            self._moved = (
                f"the outcome store file {self.path} was deleted or replaced while the router ran; "
                "restart the router to open it anew"
            )
        if self._moved is not None:
            raise StoreFileMovedError(self._moved)

    def _companion(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _check_companions(self, conn: sqlite3.Connection) -> None:
        """Raise StoreFileMovedError if the -wal or -shm file is not the one `conn` opened (after a rescue)."""
        for suffix, opened in self._companions.items():
            path = self._companion(suffix)
            found = _identity_or_none(path)
            if found == opened:
                continue
            # The connection still holds the old files: copy every committed transaction into the main file.
            try:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
                rescued = f"checkpointed {copied} of {frames} WAL frames into the main file" + (
                    " (busy)" if busy else ""
                )
            except sqlite3.Error as exc:
                rescued = f"could not checkpoint the WAL into the main file ({exc})"
            self._moved = (
                f"the outcome store's {suffix} file {path} was {'deleted' if found is None else 'replaced'} while the "
                f"router ran ({rescued}); restart the router to open the store anew"
            )
            log.error(self._moved, extra={"path": str(path)})
            raise StoreFileMovedError(self._moved)

    # -- lookups (worker threads) ------------------------------------------------------------------

    def find_exposure(self, request_id: str) -> Exposure | None:
        return self._select_one(_BY_REQUEST, (request_id,))

    def latest_exposure(self, user_id: str) -> Exposure | None:
        return self._select_one(_LATEST_FOR_USER, (user_id,))

    def shared_secret(self, name: str, candidate: str) -> str:
        with closing(self.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (name, candidate))
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return str(row[0])

    def _select_one(self, sql: str, params: tuple[Any, ...]) -> Exposure | None:
        with self._read_lock:
            if self._reader is None:
                self._reader = self.connect(check_same_thread=False)
                self._reader.row_factory = sqlite3.Row
            row = self._reader.execute(sql, params).fetchone()
        return None if row is None else Exposure.from_columns(row)

    # -- errors ------------------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, _POISON):
            return Failure("constraint", poison=True)
        if isinstance(exc, sqlite3.Error | OSError):
            return Failure(error_kind(exc))
        return None

    # -- reading (the report) ----------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[SQLiteSnapshot]:
        """A read-only connection (`mode=ro`: never creates or writes the file) in one read transaction."""
        if not self.path.is_file():
            raise NoDataError("no outcome store yet: nothing has been recorded")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outcome store: {exc}") from exc
        with closing(conn):
            try:
                conn.execute("BEGIN")
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # fails here if it is not SQLite
            except sqlite3.DatabaseError as exc:
                raise StoreFormatError(f"the outcome store is not a SQLite database ({exc})") from exc
            try:
                yield SQLiteSnapshot(conn)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) or "no such column" in str(exc):
                    raise NoDataError(f"the file is not an outcome store (yet): {exc}") from exc
                raise StoreError(f"cannot read the outcome store: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreFormatError(f"the outcome store cannot be read: {exc}") from exc
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    # -- helpers -----------------------------------------------------------------------------------

    def connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        """A new connection to the store file with the store's settings (WAL, synchronous=NORMAL, busy timeout)."""
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


class SQLiteSnapshot(RollupReads, SQLiteShadowReads, SQLiteEpochReads):
    """PhaseSnapshot over one read transaction of a SQLite store (see router.store.reader; the shadow reads are
    router.store.sqlite_shadow's, the adaptive phases' router.store.sqlite_epochs')."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def connection(self) -> sqlite3.Connection:
        """The read-only connection, inside the snapshot's transaction (for ad-hoc SQL and tests)."""
        return self._conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _numbers(self, sql: str, params: Sequence[Any], width: int) -> NDArray[np.float64]:
        cursor = self._conn.execute(sql, params)
        parts = []
        while chunk := cursor.fetchmany(_CHUNK_ROWS):  # no Python object outlives its chunk but the arrays
            flat = np.fromiter(itertools.chain.from_iterable(chunk), np.float64, count=len(chunk) * width)
            parts.append(flat.reshape(len(chunk), width))
        return np.concatenate(parts) if parts else np.zeros((0, width), np.float64)

    def phases(self) -> tuple[int, ...]:
        return tuple(int(row[0]) for row in self._conn.execute("SELECT phase FROM phases ORDER BY phase"))

    def phase(self, number: int | None) -> PhaseRecord:
        phases = self.phases()
        if not phases:
            raise NoDataError("no phase recorded yet: the router has not started on this store")
        chosen = phases[-1] if number is None else number
        if chosen not in phases:
            raise NoDataError(f"phase {chosen} is not in the store (phases: {', '.join(map(str, phases))})")
        row = self._conn.execute(
            "SELECT phase, experiment, started_at, config_key, config_json FROM phases WHERE phase = ?", (chosen,)
        ).fetchone()
        return PhaseRecord(int(row[0]), str(row[1]), float(row[2]), str(row[3]), _json_object(row[4], "config"))

    def variant_info(self, phase: int) -> Mapping[str, Mapping[str, Any]]:
        sql = "SELECT variant, info_json FROM variant_info WHERE phase = ? ORDER BY variant"
        return {
            str(variant): _json_object(text, f"variant_info of {variant}")
            for variant, text in self._conn.execute(sql, (phase,))
        }

    def interleaving_totals(self, phase: int, *, assignments: Sequence[str]) -> InterleavingTotals:
        marks = selected_marks(assignments)
        # One row per (user, team with credited clicks); a user without a credited click gets (user, NULL, 0).
        rows = self._conn.execute(
            f"""
            SELECT e.user_id, c.variant, COUNT(c.request_id)
            FROM exposures AS e
            LEFT JOIN (SELECT DISTINCT request_id, position, variant FROM feedback
                       WHERE phase = ? AND event = 'click' AND position IS NOT NULL) AS c
                   ON c.request_id = e.request_id
            WHERE e.phase = ? AND e.teams IS NOT NULL AND e.failed_variant IS NULL AND e.status = 200
                  AND e.assignment IN ({marks})
            GROUP BY e.user_id, c.variant
            ORDER BY e.user_id
            """,
            (phase, phase, *assignments),
        ).fetchall()
        user_codes: dict[str, int] = {}
        for user_id, _, _ in rows:
            user_codes.setdefault(str(user_id), len(user_codes))
        credits: dict[str, NDArray[np.int64]] = {}
        for user_id, team, clicks in rows:
            if team is not None:
                credits.setdefault(str(team), np.zeros(len(user_codes), np.int64))[user_codes[str(user_id)]] = clicks
        counts = self._conn.execute(
            f"""SELECT failed_variant, status = 200, COUNT(*) FROM exposures
                WHERE phase = ? AND teams IS NOT NULL AND assignment IN ({marks})
                GROUP BY failed_variant, status = 200""",
            (phase, *assignments),
        ).fetchall()
        degraded = {str(name): int(n) for name, answered, n in counts if name is not None and answered}
        return InterleavingTotals(
            users=len(user_codes),
            credits=credits,
            exposures=sum(int(n) for _, _, n in counts),
            degraded=dict(sorted(degraded.items())),
            failed=sum(int(n) for _, answered, n in counts if not answered),
        )


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreFormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _file_identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _identity_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return _file_identity(path)
    except FileNotFoundError:
        return None


#: The files SQLite keeps next to a WAL-mode database while a connection is open.
_COMPANIONS = ("-wal", "-shm")


def error_kind(exc: BaseException) -> str:
    """A short label for a SQLite failure: locked, readonly, full, io, corrupt, moved or other."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if isinstance(exc, StoreFileMovedError):
        return "moved"
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
