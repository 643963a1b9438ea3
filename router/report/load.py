"""Read one phase of the outcome store with a read-only SQLite connection.

The store is in WAL mode, so a reader never blocks the router's writer (and vice versa); all queries run
in one read transaction, so the counts of every table come from the same snapshot.

    data = read_phase(Path("results/outcomes.sqlite3"), phase=None)   # the latest phase
    data.exposures.groupby("variant").size()
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from router.report.errors import NoDataError, StoreFormatError

EXPOSURES_SQL = """
SELECT e.id, e.ts, e.user_id, e.variant, e.assignment, e.latency_ms,
       (e.error IS NOT NULL OR e.status >= 400) AS failed,
       EXISTS (
           SELECT 1 FROM feedback AS f
           WHERE f.request_id = e.request_id AND f.phase = e.phase AND f.event = 'click'
       ) AS clicked
FROM exposures AS e
WHERE e.phase = ?
"""

FEEDBACK_SQL = """
SELECT variant, assignment, event, COUNT(*) AS events
FROM feedback
WHERE phase = ?
GROUP BY variant, assignment, event
ORDER BY variant, assignment, event
"""


@dataclass(frozen=True)
class PhaseRow:
    """One row of the ``phases`` table, with its configuration parsed."""

    phase: int
    experiment: str
    started_at: float
    config_key: str
    config: dict[str, Any]


@dataclass(frozen=True)
class PhaseData:
    """Everything the report needs from one phase; no row of another phase is in here."""

    phase: PhaseRow
    phases: tuple[int, ...]
    exposures: pd.DataFrame
    """One row per exposure of the phase (all assignments, in no particular order): ``id``, ``ts``, ``user``
    (an integer code per user id), ``variant`` and ``assignment`` (categories), ``latency_ms``, ``failed``
    (1 for an error status or kind) and ``clicked`` (1 if at least one click event is attributed to it)."""
    strategies: tuple[str, ...]
    """The distinct ``strategy`` values the phase's exposures were logged with."""
    feedback: pd.DataFrame
    """Feedback event counts by variant, assignment and event."""
    variant_info: dict[str, dict[str, Any]]
    """Each variant's ``GET /info`` for the phase."""


@contextmanager
def connect_read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection (``file:...?mode=ro``) that never creates the database and never writes to it.

    In WAL mode SQLite may still create the ``-wal``/``-shm`` companions if they are missing (a reader needs
    the shared-memory index); the database file itself is untouched.
    """
    path = Path(db_path)
    if not path.is_file():
        raise NoDataError(f"no outcome store at {path}")
    uri = path.resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)) as connection:
        yield connection


def read_phase(db_path: Path, phase: int | None = None) -> PhaseData:
    """Load one phase (the latest by default); NoDataError if the store, the phase or its exposures are missing."""
    with connect_read_only(db_path) as connection:
        connection.execute("BEGIN")  # one snapshot for every query below
        try:
            return _read_phase(connection, Path(db_path), phase)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise NoDataError(f"{db_path} is not an outcome store yet ({exc})") from exc
            raise
        finally:
            connection.execute("ROLLBACK")


def _read_phase(connection: sqlite3.Connection, db_path: Path, phase: int | None) -> PhaseData:
    phases = tuple(int(row[0]) for row in connection.execute("SELECT phase FROM phases ORDER BY phase"))
    if not phases:
        raise NoDataError(f"no phase recorded in {db_path} yet")
    chosen = phases[-1] if phase is None else phase
    if chosen not in phases:
        listed = ", ".join(str(p) for p in phases)
        raise NoDataError(f"phase {chosen} is not in {db_path} (phases: {listed})")
    row = connection.execute(
        "SELECT phase, experiment, started_at, config_key, config_json FROM phases WHERE phase = ?", (chosen,)
    ).fetchone()
    phase_row = PhaseRow(int(row[0]), str(row[1]), float(row[2]), str(row[3]), _parse_json(row[4], "config"))
    exposures = pd.read_sql_query(EXPOSURES_SQL, connection, params=(chosen,))
    if exposures.empty:
        raise NoDataError(f"phase {chosen} has no exposures yet")
    # Integer user codes and categories: grouping half a million rows by them is fast, by strings is not.
    exposures["user"] = pd.factorize(exposures.pop("user_id"))[0]
    exposures = exposures.astype(
        {"variant": "category", "assignment": "category", "failed": "int64", "clicked": "int64"}
    )
    strategies = tuple(
        str(row[0]) for row in connection.execute("SELECT DISTINCT strategy FROM exposures WHERE phase = ?", (chosen,))
    )
    feedback = pd.read_sql_query(FEEDBACK_SQL, connection, params=(chosen,))
    variant_info = {
        str(variant): _parse_json(info_json, f"variant_info of {variant}")
        for variant, info_json in connection.execute(
            "SELECT variant, info_json FROM variant_info WHERE phase = ? ORDER BY variant", (chosen,)
        )
    }
    return PhaseData(phase_row, phases, exposures, strategies, feedback, variant_info)


def _parse_json(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreFormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
