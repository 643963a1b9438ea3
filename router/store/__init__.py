"""The outcome store: what the router records, behind one interface whatever the database.

    store = OutcomeStore(backend_for("sqlite:///results/outcomes.sqlite3"))    # STORE_URL picks the backend
    store.open()
    store.record_exposure(Exposure(...))
    with store.snapshot() as snapshot: ...                                     # what the report reads

Modules: ``schema`` (the tables, once), ``records`` (one frozen record per row), ``backend`` (the StoreBackend
Protocol every engine implements), ``sqlite`` (the embedded default), ``outcomes`` (OutcomeStore: the queue, the
writer thread, retries, loss counting, the recent index), ``reader`` (the read side the report uses), with
``shadow_reader`` (its shadow-call questions) and ``sqlite_shadow`` (SQLite's answers to them); ``postgres``
(the shared store), with ``postgres_reader`` and ``postgres_shadow`` (its answers to the same questions).

Store URLs follow SQLAlchemy's spelling: `sqlite:///relative/path.sqlite3`, `sqlite:////absolute/path.sqlite3`,
and libpq's: `postgresql://user:password@host:5432/database` (`postgres://` too; any libpq parameter as a query).
"""

from __future__ import annotations

from pathlib import Path

from router.errors import ConfigError
from router.store.backend import Failure, StoreBackend
from router.store.outcomes import OutcomeStore, StoreStats
from router.store.postgres import PostgresBackend, describe_url
from router.store.reader import InterleavingTotals, PhaseRecord, PhaseSnapshot, Timeline, UnitTotals
from router.store.records import Exposure, Feedback, Record, ShadowCall, VariantInfo
from router.store.shadow_reader import PairedLatency, RepeatedList, ShadowPair, ShadowTotals
from router.store.sqlite import SQLiteBackend

#: The SQLite store's file name inside RESULTS_DIR when STORE_URL is not set.
STORE_FILE = "outcomes.sqlite3"

__all__ = [
    "STORE_FILE",
    "Exposure",
    "Failure",
    "Feedback",
    "InterleavingTotals",
    "OutcomeStore",
    "PairedLatency",
    "PhaseRecord",
    "PhaseSnapshot",
    "PostgresBackend",
    "Record",
    "RepeatedList",
    "SQLiteBackend",
    "ShadowCall",
    "ShadowPair",
    "ShadowTotals",
    "StoreBackend",
    "StoreStats",
    "Timeline",
    "UnitTotals",
    "VariantInfo",
    "backend_for",
    "default_store_url",
    "describe_url",
]


def default_store_url(results_dir: Path) -> str:
    """The embedded default: `outcomes.sqlite3` inside the results folder.

    >>> default_store_url(Path("results"))
    'sqlite:///results/outcomes.sqlite3'
    """
    return f"sqlite:///{Path(results_dir) / STORE_FILE}"


def backend_for(url: str) -> StoreBackend:
    """The backend a store URL names. Raises ConfigError for a URL no backend understands.

    >>> backend_for("sqlite:////tmp/x.sqlite3").description
    'sqlite:////tmp/x.sqlite3'
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ConfigError(
                f"STORE_URL {describe_url(url)!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path"
            )
        return SQLiteBackend(Path(url[len(prefix) :]))
    if scheme in ("postgresql", "postgres"):
        if not url.lower().startswith(f"{scheme}://"):
            raise ConfigError(f"STORE_URL {describe_url(url)!r}: a PostgreSQL URL is postgresql://user@host:5432/db")
        return PostgresBackend(url)
    raise ConfigError(
        f"STORE_URL {describe_url(url)!r}: unknown store; use sqlite:///path or postgresql://user@host:5432/database"
    )
