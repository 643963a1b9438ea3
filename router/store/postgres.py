"""The shared outcome store: PostgreSQL through psycopg 3 (`STORE_URL=postgresql://user:pass@host:5432/db`).

    backend = PostgresBackend("postgresql://router@db:5432/outcomes")
    backend.open()                                  # schema or migration, under an advisory lock
    backend.write([exposure, feedback])             # one transaction, rows streamed with COPY
    with backend.snapshot() as snapshot: ...        # one REPEATABLE READ, READ ONLY transaction

Several routers may share one database: creating or migrating the schema and starting a phase take a
transaction-scoped advisory lock (where SQLite takes BEGIN IMMEDIATE), so they agree on one phase. The writer
thread has its own connection, the lookups a small pool; a connection that failed is dropped and made anew on
the next attempt, so a database restart costs retries, never rows. Failures are classified by SQLSTATE
(`error_kind`): a row's fault (classes 22, 23) is poison, everything else is the store failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from router.errors import ConfigError, NoDataError, StoreError
from router.store.backend import Failure
from router.store.epochs import StoredEpoch
from router.store.phases import RECENT_PHASES, PhaseRow, phase_to_continue, stops_recorded
from router.store.postgres_epochs import PostgresEpochTransaction, epoch_transaction, exposures_in, latest_epoch
from router.store.postgres_reader import PostgresSnapshot
from router.store.records import Exposure, Record
from router.store.rollup import counted_in_rollups
from router.store.schema import EXPOSURES, META, SCHEMA_VERSION, ddl, migrations_from

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock keys ("abtest" schema / phase), the same in every router sharing the database.
SCHEMA_LOCK = 0x61627465_00000001
PHASE_LOCK = 0x61627465_00000002
#: Held by each write of exposures or feedback for its transaction: the rollups count batches one at a time.
ROLLUP_LOCK = 0x61627465_00000004
_ROLLUP_LOCKED = f"SELECT pg_advisory_xact_lock({ROLLUP_LOCK})"

_EXPOSURE_SELECT = f"SELECT {', '.join(EXPOSURES.insert_columns)} FROM exposures"
_BY_REQUEST = f"{_EXPOSURE_SELECT} WHERE request_id = %s"
#: "Latest" is defined once (router.store.outcomes): the latest to arrive, in any phase; ties by request id.
_LATEST_FOR_USER = f"{_EXPOSURE_SELECT} WHERE user_id = %s AND status = 200 ORDER BY ts DESC, request_id DESC LIMIT 1"

#: SQLSTATE classes caused by a row (bad data, a broken constraint): retrying the batch cannot help.
_POISON_CLASSES = ("22", "23")
_POISON_PYTHON = (OverflowError, TypeError, ValueError, UnicodeEncodeError)
#: SQLSTATE (exact, then by class) -> the Failure kind shared with the other backends (router.store.backend).
_KINDS = {
    "53100": "full",  # disk_full
    "53200": "full",  # out_of_memory
    "53300": "unavailable",  # too_many_connections
    "25006": "readonly",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "57P01": "unavailable",  # admin_shutdown (a restart, pg_terminate_backend)
    "57P02": "unavailable",  # crash_shutdown
    "57P03": "unavailable",  # cannot_connect_now (starting up, recovering)
    "57014": "locked",  # query_canceled (statement_timeout, lock_timeout)
    "55P03": "locked",  # lock_not_available
    "40001": "locked",  # serialization_failure
    "40P01": "locked",  # deadlock_detected
    "58030": "io",  # io_error
    "XX001": "corrupt",  # data_corrupted
    "XX002": "corrupt",  # index_corrupted
}
_CLASS_KINDS = {"08": "unavailable", "53": "full", "58": "io", "XX": "corrupt", "40": "locked", "57": "unavailable"}


def describe_url(url: str) -> str:
    """The URL with any password replaced by '***', for messages and logs.

    >>> describe_url("postgresql://app:s3cret@db:5432/outcomes")
    'postgresql://app:***@db:5432/outcomes'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def error_kind(exc: BaseException) -> str:
    """A short label for a PostgreSQL failure, from its SQLSTATE: full, unavailable, readonly, locked, io, ...

    A connection that broke without an answer (the server went away) has no SQLSTATE: it is `unavailable`.
    """
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError):
        return "unavailable"
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return "unavailable" if isinstance(exc, psycopg.OperationalError) else "other"
    if state[:2] in _POISON_CLASSES:
        return "constraint"
    return _KINDS.get(state) or _CLASS_KINDS.get(state[:2], "other")


class PostgresBackend:
    """StoreBackend over one PostgreSQL database (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 30_000,
        report_timeout_ms: int = 600_000,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._report_timeout_ms = report_timeout_ms  # a report's query may take long, never forever
        self._pool_size = pool_size
        self._writer: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()

    @property
    def description(self) -> str:
        return describe_url(self.url)

    # -- lifecycle ---------------------------------------------------------------------------------

    def probe(self) -> None:
        """Connect once: a server that refuses, an unknown host or refused credentials is the URL's fault."""
        try:
            with self.connect():
                pass
        except psycopg.OperationalError as exc:
            raise ConfigError(
                f"STORE_URL {self.description}: cannot connect to PostgreSQL ({_first_line(exc)}); "
                "is the database running, and are the host, port, database and credentials right?"
            ) from exc

    def open(self) -> None:
        try:
            with self.connect() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._create_or_migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the outcome store {self.description}: {_first_line(exc)}") from exc

    def _create_or_migrate(self, conn: psycopg.Connection[Any]) -> None:
        found = None
        if conn.execute("SELECT to_regclass('meta')").fetchone() != (None,):
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = None if row is None else int(row[0])
        if found is None:
            for statement in ddl("postgresql").split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"INSERT INTO {META.name} (key, value) VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
        elif found > SCHEMA_VERSION:
            raise StoreError(
                f"outcome store {self.description} has schema version {found}, newer than this router's "
                f"{SCHEMA_VERSION}: run a newer router, or use another database"
            )
        elif found < SCHEMA_VERSION:
            for target, statements in migrations_from(found, "postgresql"):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(target),))
                log.info("outcome store migrated", extra={"store": self.description, "schema_version": target})

    def close(self) -> None:
        self._discard_writer()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- phases ------------------------------------------------------------------------------------

    def start_phase(
        self, experiment: str, config_key: str, design: Mapping[str, Any], *, current: int | None = None
    ) -> tuple[int, bool]:
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PHASE_LOCK,))
            recent = [
                PhaseRow(int(row[0]), str(row[1]), str(row[2]), float(row[3]), stops_recorded(row[4]))
                for row in conn.execute(
                    "SELECT phase, experiment, config_key, started_at, config_json FROM phases "
                    "ORDER BY phase DESC LIMIT %s",
                    (RECENT_PHASES,),
                )
            ]
            continued = phase_to_continue(recent, experiment, config_key, current=current, now=time.time())
            if continued is not None:
                return continued, False
            phase = 1 if not recent else recent[0].phase + 1
            conn.execute(
                "INSERT INTO phases (phase, experiment, started_at, config_key, config_json) VALUES (%s,%s,%s,%s,%s)",
                (phase, experiment, time.time(), config_key, orjson.dumps(dict(design)).decode()),
            )
            return phase, True

    def shared_secret(self, name: str, candidate: str) -> str:
        with self.connect() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (name, candidate)
            )
            row = conn.execute("SELECT value FROM meta WHERE key = %s", (name,)).fetchone()
        if row is None:  # inserted or kept above, in this transaction
            raise StoreError(f"the store's meta lost {name!r} inside one transaction")
        return str(row[0])

    # -- weight epochs (adaptive strategies: router.store.epochs) -----------------------------------

    def latest_epoch(self, phase: int) -> StoredEpoch | None:
        with self._lookups().connection(timeout=self._connect_timeout) as conn:
            return latest_epoch(conn, phase)

    def epoch_exposures(self, phase: int, epoch: StoredEpoch) -> int:
        with self._lookups().connection(timeout=self._connect_timeout) as conn:
            return exposures_in(conn, phase, epoch)

    @contextmanager
    def epoch_transaction(self) -> Iterator[PostgresEpochTransaction]:
        """The epoch lock: a fresh connection, one transaction holding `pg_advisory_xact_lock` for the block."""
        with self.connect() as conn, epoch_transaction(conn) as tx:
            yield tx

    # -- writing (the writer thread) ---------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> Mapping[str, int]:
        repeats: dict[str, int] = {}
        grouped: dict[type[Record], list[tuple[Any, ...]]] = {}
        for record in batch:
            grouped.setdefault(type(record), []).append(tuple(record.columns().values()))
        try:
            if self._writer is None:
                self._writer = self.connect()
            conn = self._writer
            kinds = [t.kind for t in grouped]
            # Writers of outcomes take turns (ROLLUP_LOCK): the rollups need each batch to see every earlier one.
            with (
                conn.transaction(),
                conn.cursor() as cursor,
                counted_in_rollups(cursor, "postgresql", kinds, lock=_ROLLUP_LOCKED),
            ):
                for record_type, rows in grouped.items():
                    table = record_type.table
                    columns = ", ".join(table.insert_columns)
                    if table.primary_key:  # keyed by content (variant_info): the latest row wins
                        updates = ", ".join(
                            f"{c} = EXCLUDED.{c}" for c in table.insert_columns if c not in table.primary_key
                        )
                        marks = ", ".join(["%s"] * len(table.insert_columns))
                        cursor.executemany(
                            f"INSERT INTO {table.name} ({columns}) VALUES ({marks}) "
                            f"ON CONFLICT ({', '.join(table.primary_key)}) DO UPDATE SET {updates}",
                            rows,
                        )
                    elif table.ignore_duplicates:  # (feedback) COPY into a scratch table, then skip repeated keys
                        scratch = f"incoming_{table.name}"
                        cursor.execute(
                            f"CREATE TEMP TABLE IF NOT EXISTS {scratch} ON COMMIT DELETE ROWS AS "
                            f"SELECT {columns} FROM {table.name} WITH NO DATA"
                        )
                        with cursor.copy(f"COPY {scratch} ({columns}) FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                        cursor.execute(
                            f"INSERT INTO {table.name} ({columns}) "
                            f"SELECT {columns} FROM {scratch} ON CONFLICT DO NOTHING"
                        )
                        if cursor.rowcount < len(rows):
                            repeats[record_type.kind] = len(rows) - cursor.rowcount
                    else:
                        with cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
        except BaseException as exc:
            failure = self.classify(exc)
            if failure is None or not failure.poison:
                self._discard_writer()  # a failing store (or a broken connection): reconnect on the next attempt
            raise
        return repeats

    def _discard_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with suppress(psycopg.Error):
                writer.close()

    # -- lookups (worker threads) ------------------------------------------------------------------

    def find_exposure(self, request_id: str) -> Exposure | None:
        return self._select_one(_BY_REQUEST, (request_id,))

    def latest_exposure(self, user_id: str) -> Exposure | None:
        return self._select_one(_LATEST_FOR_USER, (user_id,))

    def _select_one(self, sql: str, params: tuple[Any, ...]) -> Exposure | None:
        with self._lookups().connection(timeout=self._connect_timeout) as conn:
            row = conn.cursor(row_factory=dict_row).execute(sql, params).fetchone()
        return None if row is None else Exposure.from_columns(row)

    def _lookups(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    kwargs=self._connect_kwargs(),
                    check=ConnectionPool.check_connection,  # a restarted server broke them: test before use
                    open=True,
                    name="outcome-store-lookups",
                )
            return self._pool

    # -- errors ------------------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> Failure | None:
        if isinstance(exc, _POISON_PYTHON):
            return Failure("constraint", poison=True)
        if isinstance(exc, psycopg.Error | PoolTimeout):
            kind = error_kind(exc)
            return Failure(kind, poison=kind == "constraint")
        return None

    # -- reading (the report) ----------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[PostgresSnapshot]:
        """A new connection in one REPEATABLE READ, READ ONLY transaction: every read sees the same moment."""
        try:
            conn = self.connect(statement_timeout_ms=self._report_timeout_ms)
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the outcome store {self.description}: {_first_line(exc)}") from exc
        with conn:
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                if conn.execute("SELECT to_regclass('phases')").fetchone() == (None,):
                    raise NoDataError("no outcome store yet: nothing has been recorded")
                yield PostgresSnapshot(conn)
            except pg_errors.UndefinedTable as exc:
                raise NoDataError(f"the database is not an outcome store (yet): {_first_line(exc)}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"cannot read the outcome store: {_first_line(exc)}") from exc
            finally:
                with suppress(psycopg.Error):
                    conn.rollback()

    # -- helpers -----------------------------------------------------------------------------------

    def connect(self, *, statement_timeout_ms: int | None = None) -> psycopg.Connection[Any]:
        """A new autocommit connection with the store's settings (connect and statement timeouts)."""
        return psycopg.connect(self.url, **self._connect_kwargs(statement_timeout_ms))

    def _connect_kwargs(self, statement_timeout_ms: int | None = None) -> dict[str, Any]:
        timeout = self._statement_timeout_ms if statement_timeout_ms is None else statement_timeout_ms
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self._connect_timeout)),
            "application_name": "ab-router",
            "options": f"-c statement_timeout={int(timeout)}",
        }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
