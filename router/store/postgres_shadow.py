"""The PostgreSQL snapshot's answers about shadow calls (`ShadowReads`, router.store.shadow_reader).

    class PostgresSnapshot(PostgresShadowReads): ...    # router.store.postgres_reader gets these methods

The same questions as router.store.sqlite_shadow, in PostgreSQL's SQL: calls joined to their live exposure on
`request_id`, quantiles by `percentile_cont` (numpy's linear interpolation), pairs in keyset chunks through the
`shadow_calls_phase_shadow` index, so no query holds more than one chunk of lists in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import psycopg

from router.store.shadow_reader import PairedLatency, RepeatedList, ShadowPair, ShadowTotals

#: A shadow call and the live exposure it copies, the exposure answered and selected.
_MATCHED = """
    FROM shadow_calls AS s JOIN exposures AS e ON e.request_id = s.request_id
    WHERE s.phase = %(phase)s AND s.shadow = %(shadow)s AND e.phase = s.phase AND e.status = 200
          AND e.assignment = ANY(%(assignments)s)
"""


class PostgresShadowReads:
    """`ShadowReads` for a PostgreSQL snapshot; the class using it sets `_conn` (in a read transaction)."""

    _conn: psycopg.Connection[Any]

    def _fetch(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def shadow_names(self, phase: int) -> tuple[str, ...]:
        sql = "SELECT DISTINCT shadow FROM shadow_calls WHERE phase = %(phase)s ORDER BY shadow"
        return tuple(str(row[0]) for row in self._fetch(sql, {"phase": phase}))

    def shadow_totals(self, phase: int, shadow: str, *, assignments: Sequence[str]) -> ShadowTotals:
        params = _params(phase, shadow, assignments)
        rows = self._fetch(
            f"""SELECT s.user_id, e.variant, COUNT(*), COUNT(*) FILTER (WHERE s.status = 200) {_MATCHED}
                GROUP BY s.user_id, e.variant ORDER BY e.variant, s.user_id""",
            params,
        )
        errors = self._fetch(
            f"""SELECT e.variant, s.error, COUNT(*) {_MATCHED} AND s.error IS NOT NULL
                GROUP BY e.variant, s.error ORDER BY e.variant, s.error""",
            params,
        )
        ((unmatched,),) = self._fetch(
            """SELECT COUNT(*) FROM shadow_calls AS s
               WHERE s.phase = %(phase)s AND s.shadow = %(shadow)s AND NOT EXISTS (
                   SELECT 1 FROM exposures AS e WHERE e.request_id = s.request_id AND e.phase = s.phase
                   AND e.status = 200 AND e.assignment = ANY(%(assignments)s))""",
            params,
        )
        urls = tuple(
            str(row[0])
            for row in self._fetch(
                """SELECT DISTINCT shadow_url FROM shadow_calls WHERE phase = %(phase)s AND shadow = %(shadow)s
                   ORDER BY shadow_url""",
                params,
            )
        )
        return ShadowTotals.from_rows(shadow, rows, errors, urls=urls, unmatched=int(unmatched))

    def shadow_latency(
        self, phase: int, shadow: str, *, assignments: Sequence[str], quantiles: Sequence[float]
    ) -> Mapping[str, PairedLatency]:
        params = {**_params(phase, shadow, assignments), "q": [float(q) for q in quantiles]}
        rows = self._fetch(
            f"""SELECT e.variant, COUNT(*),
                       percentile_cont(%(q)s::float8[]) WITHIN GROUP (ORDER BY e.latency_ms),
                       percentile_cont(%(q)s::float8[]) WITHIN GROUP (ORDER BY s.latency_ms)
                {_MATCHED} AND s.status = 200 GROUP BY e.variant ORDER BY e.variant""",
            params,
        )
        return {
            str(variant): PairedLatency(int(n), tuple(map(float, live)), tuple(map(float, shadowed)))
            for variant, n, live, shadowed in rows
        }

    def shadow_pairs(
        self, phase: int, shadow: str, *, assignments: Sequence[str], after: str | None, limit: int
    ) -> tuple[ShadowPair, ...]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        rows = self._fetch(
            f"""SELECT s.request_id, s.user_id, e.variant, e.items, s.items,
                       ARRAY(SELECT f.item_id FROM feedback AS f
                             WHERE f.request_id = s.request_id AND f.event = 'click' ORDER BY f.id)
                {_MATCHED} AND s.status = 200 AND s.request_id > %(after)s
                ORDER BY s.request_id LIMIT %(limit)s""",
            {**_params(phase, shadow, assignments), "after": after or "", "limit": limit},
        )
        return tuple(
            ShadowPair(
                request_id=str(request_id),
                user_id=str(user_id),
                variant=str(variant),
                live=tuple(orjson.loads(live)),
                shadow=tuple(orjson.loads(shadowed)),
                clicked=tuple(int(item) for item in clicked),
            )
            for request_id, user_id, variant, live, shadowed, clicked in rows
        )

    def repeated_lists(
        self, phase: int, variant: str, *, assignments: Sequence[str], limit: int
    ) -> tuple[RepeatedList, ...]:
        rows = self._fetch(
            """WITH ranked AS (
                   SELECT user_id, k, items, ROW_NUMBER() OVER (PARTITION BY user_id, k ORDER BY ts, id) AS n
                   FROM exposures
                   WHERE phase = %(phase)s AND variant = %(variant)s AND status = 200
                         AND assignment = ANY(%(assignments)s))
               SELECT a.user_id, a.items, b.items FROM ranked AS a
               JOIN ranked AS b ON b.user_id = a.user_id AND b.k = a.k AND b.n = 2
               WHERE a.n = 1
               ORDER BY a.user_id, a.k LIMIT %(limit)s""",
            {"phase": phase, "variant": variant, "assignments": _selected(assignments), "limit": limit},
        )
        return tuple(
            RepeatedList(str(user_id), tuple(orjson.loads(first)), tuple(orjson.loads(second)))
            for user_id, first, second in rows
        )


def _params(phase: int, shadow: str, assignments: Sequence[str]) -> dict[str, Any]:
    return {"phase": phase, "shadow": shadow, "assignments": _selected(assignments)}


def _selected(values: Sequence[str]) -> list[str]:
    if not values:
        raise ValueError("no assignments selected")
    return [str(value) for value in values]
