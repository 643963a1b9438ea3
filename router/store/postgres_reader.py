"""The PostgreSQL snapshot: the report's questions (`PhaseSnapshot`, router.store.reader) answered in SQL.

    with backend.snapshot() as snapshot:            # router.store.postgres: REPEATABLE READ, READ ONLY
        totals = snapshot.unit_totals(1, by="assigned_variant", assignments=("strategy", "fallback"))

Everything is counted by the server. The biggest answer, one row per (user, variant) with its sufficient
statistics, comes back as a binary COPY of fixed-width numbers that numpy reads in place (`numeric_columns`):
no Python object per row, so 1M users cost their arrays and a bounded buffer, nothing more. Percentiles are
`percentile_cont`, numpy's linear interpolation.
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
from router.store.reader import GroupBy, InterleavingTotals, PhaseRecord, Timeline, UnitTotals, timelines_from_buckets

#: The exposures of one phase with the selected assignments (`%(phase)s`, `%(assignments)s`).
_SELECTED = "e.phase = %(phase)s AND e.assignment = ANY(%(assignments)s)"
#: The request ids of the phase's exposures with at least one click: hash-joined once, not looked up per row.
_CLICKED = "(SELECT DISTINCT request_id FROM feedback WHERE phase = %(phase)s AND event = 'click')"
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_CHUNK_ROWS = 65_536


def numeric_columns(
    conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any], types: Sequence[str]
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


class PostgresSnapshot(PostgresShadowReads, PostgresEpochReads):
    """PhaseSnapshot over one REPEATABLE READ, READ ONLY transaction of a PostgreSQL store."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The connection, inside the snapshot's transaction (for ad-hoc SQL and tests)."""
        return self._conn

    def _rows(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

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

    def strategies(self, phase: int) -> tuple[str, ...]:
        sql = "SELECT DISTINCT strategy FROM exposures WHERE phase = %s ORDER BY strategy"
        return tuple(str(row[0]) for row in self._rows(sql, (phase,)))

    def time_range(self, phase: int) -> tuple[float, float] | None:
        ((first, last),) = self._rows("SELECT MIN(ts), MAX(ts) FROM exposures WHERE phase = %s", (phase,))
        return None if first is None else (float(first), float(last))

    def unit_totals(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], slow_above_ms: float | None = None
    ) -> UnitTotals:
        column = _group_column(by)
        params: dict[str, Any] = {"phase": phase, "assignments": _selected(assignments), "slow": slow_above_ms}
        variants = tuple(
            str(row[0])
            for row in self._rows(
                f"SELECT DISTINCT e.{column} FROM exposures AS e WHERE {_SELECTED} ORDER BY 1", params
            )
        )
        events = tuple(
            str(row[0])
            for row in self._rows("SELECT DISTINCT event FROM feedback WHERE phase = %s ORDER BY 1", (phase,))
        )
        params["variants"] = list(variants)
        per_event = [f"event_{i}" for i in range(len(events))]
        for name, event in zip(per_event, events, strict=True):
            params[name] = event
        # A latency that is not <= the threshold (greater, or NULL) is slow, as in router.report.guardrails.
        slow = "0" if slow_above_ms is None else "COUNT(*) FILTER (WHERE (e.latency_ms <= %(slow)s) IS NOT TRUE)"
        counts = "".join(
            f", COUNT(*) FILTER (WHERE f.event = %({name})s) AS n_{name}, "
            f"COALESCE(SUM(f.value) FILTER (WHERE f.event = %({name})s), 0) AS s_{name}"
            for name in per_event
        )
        picked = "".join(f", COALESCE(fb.n_{n}, 0)::int8, COALESCE(fb.s_{n}, 0)::float8" for n in per_event)
        joined = (
            f"""LEFT JOIN (SELECT e.user_id, e.{column} AS v {counts}
                           FROM feedback AS f JOIN exposures AS e ON e.request_id = f.request_id
                           WHERE f.phase = %(phase)s AND {_SELECTED} GROUP BY 1, 2) AS fb
                      ON fb.user_id = p.user_id AND fb.v = p.v"""
            if events
            else ""
        )
        query = f"""
            WITH p AS (
                SELECT e.user_id, e.{column} AS v, COUNT(*) AS n,
                       COUNT(*) FILTER (WHERE e.error IS NOT NULL OR e.status >= 400) AS errors,
                       COUNT(c.request_id) AS clicked,
                       COUNT(*) FILTER (WHERE e.assignment = 'fallback') AS fallbacks,
                       {slow} AS slow
                FROM exposures AS e LEFT JOIN {_CLICKED} AS c ON c.request_id = e.request_id
                WHERE {_SELECTED}
                GROUP BY e.user_id, e.{column})
            SELECT (DENSE_RANK() OVER (ORDER BY p.user_id) - 1)::int8,
                   (array_position(%(variants)s::text[], p.v) - 1)::int8,
                   p.n::int8, p.errors::int8, p.clicked::int8, p.fallbacks::int8, p.slow::int8 {picked}
            FROM p {joined}"""  # no ORDER BY: the pairs' order does not matter, a sort of all of them would
        types = ["i8"] * 7 + ["i8", "f8"] * len(events)
        arrays = numeric_columns(self._conn, query, params, types)
        user, variant, exposures, errors, clicked, fallbacks, slow_counts = arrays[:7]
        event_counts: dict[str, NDArray[np.int64]] = {}
        event_values: dict[str, NDArray[np.float64]] = {}
        for i, event in enumerate(events):
            n, total = arrays[7 + 2 * i], arrays[8 + 2 * i]
            if n.any():  # only events attributed to selected exposures, as the other backends answer
                event_counts[event], event_values[event] = n, total
        return UnitTotals(
            variants=variants,
            user=user,
            variant=variant,
            exposures=exposures,
            errors=errors,
            clicked=clicked,
            fallbacks=fallbacks,
            events=event_counts,
            values=event_values,
            slow=None if slow_above_ms is None else slow_counts,
        )

    def exposures_by_assignment(self, phase: int) -> Mapping[str, int]:
        sql = "SELECT assignment, COUNT(*) FROM exposures WHERE phase = %s GROUP BY assignment ORDER BY assignment"
        return {str(kind): int(n) for kind, n in self._rows(sql, (phase,))}

    def feedback_by_assignment(self, phase: int) -> Mapping[str, int]:
        sql = "SELECT assignment, COUNT(*) FROM feedback WHERE phase = %s GROUP BY assignment ORDER BY assignment"
        return {str(kind): int(n) for kind, n in self._rows(sql, (phase,))}

    def users_in_several_variants(self, phase: int, *, by: GroupBy, assignments: Sequence[str]) -> int:
        column = _group_column(by)
        ((n,),) = self._rows(
            f"""SELECT COUNT(*) FROM (SELECT e.user_id FROM exposures AS e WHERE {_SELECTED}
                                      GROUP BY e.user_id HAVING COUNT(DISTINCT e.{column}) > 1) AS several""",
            {"phase": phase, "assignments": _selected(assignments)},
        )
        return int(n)

    def latency_percentiles(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], quantiles: Sequence[float]
    ) -> Mapping[str, tuple[float, ...]]:
        column = _group_column(by)
        rows = self._rows(
            f"""SELECT e.{column}, percentile_cont(%(q)s::float8[]) WITHIN GROUP (ORDER BY e.latency_ms)
                FROM exposures AS e WHERE {_SELECTED} GROUP BY e.{column}""",
            {"phase": phase, "assignments": _selected(assignments), "q": [float(q) for q in quantiles]},
        )
        return {str(variant): tuple(float(x) for x in values) for variant, values in rows}

    def latency_range(self, phase: int, *, by: GroupBy, assignments: Sequence[str]) -> tuple[float, float] | None:
        ((low, high),) = self._rows(
            f"SELECT MIN(e.latency_ms), MAX(e.latency_ms) FROM exposures AS e WHERE {_SELECTED}",
            {"phase": phase, "assignments": _selected(assignments)},
        )
        return None if low is None else (float(low), float(high))

    def latency_histogram(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], edges: NDArray[np.float64]
    ) -> Mapping[str, NDArray[np.int64]]:
        column = _group_column(by)
        inner = [float(edge) for edge in edges[1:-1]] or [float("inf")]
        # Bin i holds edges[i] <= x < edges[i+1]; the last bin also holds the top edge (numpy's rule), and
        # values outside the range are clipped into the first or last bin.
        bins = "width_bucket(e.latency_ms, %(inner)s::float8[])"  # how many inner edges are <= the latency
        rows = self._rows(
            f"""SELECT e.{column}, {bins} AS bin, COUNT(*) FROM exposures AS e WHERE {_SELECTED}
                GROUP BY e.{column}, bin""",
            {"phase": phase, "assignments": _selected(assignments), "inner": inner},
        )
        result: dict[str, NDArray[np.int64]] = {}
        for variant, bin_index, n in rows:
            counts = result.setdefault(str(variant), np.zeros(len(edges) - 1, np.int64))
            counts[int(bin_index)] += int(n)
        return result

    def timeline(self, phase: int, *, by: GroupBy, assignments: Sequence[str], buckets: int) -> Mapping[str, Timeline]:
        span = self.time_range(phase)
        if span is None:
            return {}
        first, last = span
        width = max((last - first) / buckets, 1e-9)
        column = _group_column(by)
        rows = self._rows(
            f"""SELECT e.{column}, LEAST(FLOOR((e.ts - %(first)s) / %(width)s), %(top)s)::int8 AS bucket,
                       COUNT(*), COUNT(c.request_id)
                FROM exposures AS e LEFT JOIN {_CLICKED} AS c ON c.request_id = e.request_id
                WHERE {_SELECTED}
                GROUP BY e.{column}, bucket""",
            {
                "phase": phase,
                "assignments": _selected(assignments),
                "first": first,
                "width": width,
                "top": buckets - 1,
            },
        )
        return timelines_from_buckets(rows, first, width, buckets)

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


def _group_column(by: GroupBy) -> str:
    if by not in ("variant", "assigned_variant"):
        raise ValueError(f"cannot group exposures by {by!r}")
    return by


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
