"""The PostgreSQL snapshot: the report's questions (`PhaseSnapshot`, router.store.reader) answered in SQL.

    with backend.snapshot() as snapshot:            # router.store.postgres: REPEATABLE READ, READ ONLY
        totals = snapshot.unit_totals(1, by="assigned_variant", assignments=("strategy", "fallback"))

The report's questions are the shared rollup reads (router.store.rollup_reader), the same SQL as SQLite's;
this module gives them PostgreSQL's way of reading many numbers: the biggest answer, one row per (user,
variant) with its sufficient statistics, comes back as a binary COPY of fixed-width numbers that numpy reads
in place (`numeric_columns`), no Python object per row. The shadow, epoch and interleaving questions are here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray

from router.errors import NoDataError, StoreFormatError
from router.store.postgres_epochs import PostgresEpochReads
from router.store.postgres_shadow import PostgresShadowReads
from router.store.reader import InterleavingTotals, PhaseRecord
from router.store.rollup_reader import RollupReads

#: The exposures of one phase with the selected assignments (`%(phase)s`, `%(assignments)s`).
_SELECTED = "e.phase = %(phase)s AND e.assignment = ANY(%(assignments)s)"
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_CHUNK_ROWS = 65_536


def numeric_columns(
    conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any] | Sequence[Any], types: Sequence[str]
) -> list[NDArray[Any]]:
    """The columns of `query` (every value a non-NULL int8 'i8' or float8 'f8', as `types` says) as numpy arrays.

    Read as a binary COPY: every row then has the same width, so whole chunks of rows become arrays at once.
    """
    row = np.dtype(
        [("count", ">i2")] + [x for i, t in enumerate(types) for x in ((f"l{i}", ">i4"), (f"v{i}", f">{t}"))]
    )
    parts: list[list[NDArray[Any]]] = [[] for _ in types]
    buffer = bytearray()
    header_done = False
    statement = f"COPY ({query}) TO STDOUT (FORMAT BINARY)"
    with conn.cursor() as cursor, cursor.copy(statement, params) as copy:
        for block in copy:
            buffer += block
            if not header_done:
                if len(buffer) < 19:
                    continue
                if bytes(buffer[:11]) != _SIGNATURE:
                    raise StoreFormatError("PostgreSQL sent a COPY stream this reader does not understand")
                extension = int.from_bytes(buffer[15:19], "big")
                del buffer[: 19 + extension]
                header_done = True
            if len(buffer) >= _CHUNK_ROWS * row.itemsize:  # the 2-byte trailer is never taken for a row
                _take(buffer, len(buffer) // row.itemsize, row, parts)
    _take(buffer, len(buffer) // row.itemsize, row, parts)
    if bytes(buffer) != b"\xff\xff":
        raise StoreFormatError("PostgreSQL's COPY stream did not end where its last row did")
    return [
        np.concatenate(chunks).astype(t) if chunks else np.zeros(0, t) for chunks, t in zip(parts, types, strict=True)
    ]


def _take(buffer: bytearray, rows: int, dtype: np.dtype[Any], parts: list[list[NDArray[Any]]]) -> None:
    if rows == 0:
        return
    size = rows * dtype.itemsize
    chunk = np.frombuffer(bytes(buffer[:size]), dtype=dtype)
    del buffer[:size]
    if (chunk["count"] != len(parts)).any():
        raise StoreFormatError("PostgreSQL's COPY stream has rows of another width")
    for i, column in enumerate(parts):
        if (chunk[f"l{i}"] != 8).any():
            raise StoreFormatError("a NULL or non-numeric value in a numeric COPY column")
        column.append(chunk[f"v{i}"].copy())


class PostgresSnapshot(RollupReads, PostgresShadowReads, PostgresEpochReads):
    """PhaseSnapshot over one REPEATABLE READ, READ ONLY transaction of a PostgreSQL store."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The connection, inside the snapshot's transaction (for ad-hoc SQL and tests)."""
        return self._conn

    def _rows(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._rows(sql.replace("?", "%s"), params)  # the shared reads' qmark SQL (no literal ? in it)

    def _numbers(self, sql: str, params: Sequence[Any], width: int) -> NDArray[np.float64]:
        columns = numeric_columns(self._conn, sql.replace("?", "%s"), params, ["f8"] * width)
        return np.column_stack(columns) if columns[0].size else np.zeros((0, width), np.float64)

    def phases(self) -> tuple[int, ...]:
        return tuple(int(row[0]) for row in self._rows("SELECT phase FROM phases ORDER BY phase"))

    def phase(self, number: int | None) -> PhaseRecord:
        phases = self.phases()
        if not phases:
            raise NoDataError("no phase recorded yet: the router has not started on this store")
        chosen = phases[-1] if number is None else number
        if chosen not in phases:
            raise NoDataError(f"phase {chosen} is not in the store (phases: {', '.join(map(str, phases))})")
        (row,) = self._rows(
            "SELECT phase, experiment, started_at, config_key, config_json FROM phases WHERE phase = %s", (chosen,)
        )
        return PhaseRecord(int(row[0]), str(row[1]), float(row[2]), str(row[3]), _json_object(row[4], "config"))

    def variant_info(self, phase: int) -> Mapping[str, Mapping[str, Any]]:
        sql = "SELECT variant, info_json FROM variant_info WHERE phase = %s ORDER BY variant"
        return {
            str(variant): _json_object(text, f"variant_info of {variant}")
            for variant, text in self._rows(sql, (phase,))
        }

    def interleaving_totals(self, phase: int, *, assignments: Sequence[str]) -> InterleavingTotals:
        params = {"phase": phase, "assignments": _selected(assignments)}
        # One row per (user, team with credited clicks); a user without a credited click gets (user, NULL, 0).
        rows = self._rows(
            f"""
            SELECT e.user_id, c.variant, COUNT(c.request_id)
            FROM exposures AS e
            LEFT JOIN (SELECT DISTINCT request_id, position, variant FROM feedback
                       WHERE phase = %(phase)s AND event = 'click' AND position IS NOT NULL) AS c
                   ON c.request_id = e.request_id
            WHERE {_SELECTED} AND e.teams IS NOT NULL AND e.failed_variant IS NULL AND e.status = 200
            GROUP BY e.user_id, c.variant
            ORDER BY e.user_id""",
            params,
        )
        user_codes: dict[str, int] = {}
        for user_id, _, _ in rows:
            user_codes.setdefault(str(user_id), len(user_codes))
        credits: dict[str, NDArray[np.int64]] = {}
        for user_id, team, clicks in rows:
            if team is not None:
                credits.setdefault(str(team), np.zeros(len(user_codes), np.int64))[user_codes[str(user_id)]] = clicks
        counts = self._rows(
            f"""SELECT e.failed_variant, e.status = 200, COUNT(*) FROM exposures AS e
                WHERE {_SELECTED} AND e.teams IS NOT NULL
                GROUP BY e.failed_variant, e.status = 200""",
            params,
        )
        degraded = {str(name): int(n) for name, answered, n in counts if name is not None and answered}
        return InterleavingTotals(
            users=len(user_codes),
            credits=credits,
            exposures=sum(int(n) for _, _, n in counts),
            degraded=dict(sorted(degraded.items())),
            failed=sum(int(n) for _, answered, n in counts if not answered),
        )


def _selected(values: Sequence[str]) -> list[str]:
    if not values:
        raise ValueError("no assignments selected")
    return [str(value) for value in values]


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreFormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
