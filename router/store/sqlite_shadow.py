"""The SQLite snapshot's answers about shadow calls (`ShadowReads`, router.store.shadow_reader), over one connection.

    class SQLiteSnapshot(SQLiteShadowReads): ...        # router.store.sqlite: the snapshot gets these methods

Every shadow call is joined to its live exposure on `request_id` (unique in `exposures`); a shadow's calls of a
phase are found, and pairs read in keyset chunks, through the `shadow_calls_phase_shadow` index (phase, shadow,
request_id), so no query holds more than one chunk of lists in memory.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence

import orjson

from router.store.shadow_reader import PairedLatency, RepeatedList, ShadowPair, ShadowTotals

#: A shadow call and the live exposure it copies, the exposure answered and selected (`{marks}`: assignments).
_MATCHED = """
    FROM shadow_calls AS s JOIN exposures AS e ON e.request_id = s.request_id
    WHERE s.phase = ? AND s.shadow = ? AND e.phase = s.phase AND e.status = 200 AND e.assignment IN ({marks})
"""


class SQLiteShadowReads:
    """`ShadowReads` for a SQLite snapshot; the class using it sets `_conn` (a connection in a read transaction)."""

    _conn: sqlite3.Connection

    def shadow_names(self, phase: int) -> tuple[str, ...]:
        sql = "SELECT DISTINCT shadow FROM shadow_calls WHERE phase = ? ORDER BY shadow"
        return tuple(str(row[0]) for row in self._conn.execute(sql, (phase,)))

    def shadow_totals(self, phase: int, shadow: str, *, assignments: Sequence[str]) -> ShadowTotals:
        matched, params = _MATCHED.format(marks=_marks(assignments)), (phase, shadow, *assignments)
        rows = self._conn.execute(
            f"SELECT s.user_id, e.variant, COUNT(*), SUM(s.status = 200) {matched} "
            "GROUP BY s.user_id, e.variant ORDER BY e.variant, s.user_id",
            params,
        ).fetchall()
        errors = self._conn.execute(
            f"SELECT e.variant, s.error, COUNT(*) {matched} AND s.error IS NOT NULL "
            "GROUP BY e.variant, s.error ORDER BY e.variant, s.error",
            params,
        ).fetchall()
        unmatched = self._conn.execute(
            f"""SELECT COUNT(*) FROM shadow_calls AS s
                WHERE s.phase = ? AND s.shadow = ? AND NOT EXISTS (
                    SELECT 1 FROM exposures AS e WHERE e.request_id = s.request_id AND e.phase = s.phase
                    AND e.status = 200 AND e.assignment IN ({_marks(assignments)}))""",
            params,
        ).fetchone()[0]
        urls = tuple(
            str(row[0])
            for row in self._conn.execute(
                "SELECT DISTINCT shadow_url FROM shadow_calls WHERE phase = ? AND shadow = ? ORDER BY shadow_url",
                (phase, shadow),
            )
        )
        return ShadowTotals.from_rows(shadow, rows, errors, urls=urls, unmatched=int(unmatched))

    def shadow_latency(
        self, phase: int, shadow: str, *, assignments: Sequence[str], quantiles: Sequence[float]
    ) -> Mapping[str, PairedLatency]:
        matched = _MATCHED.format(marks=_marks(assignments)) + " AND s.status = 200"
        params = (phase, shadow, *assignments)
        counts = self._conn.execute(
            f"SELECT e.variant, COUNT(*) {matched} GROUP BY e.variant ORDER BY e.variant", params
        ).fetchall()
        result: dict[str, PairedLatency] = {}
        for variant, n in counts:
            where = f"{matched} AND e.variant = ?"
            result[str(variant)] = PairedLatency(
                pairs=int(n),
                live=tuple(self._quantile(where, (*params, variant), "e.latency_ms", int(n), q) for q in quantiles),
                shadow=tuple(self._quantile(where, (*params, variant), "s.latency_ms", int(n), q) for q in quantiles),
            )
        return result

    def _quantile(self, where: str, params: tuple[object, ...], column: str, n: int, q: float) -> float:
        """numpy's linear quantile of `column` over `n` rows, from the two order statistics around it."""
        position = q * (n - 1)
        low = math.floor(position)
        pair = [
            float(row[0])
            for row in self._conn.execute(f"SELECT {column} {where} ORDER BY {column} LIMIT 2 OFFSET ?", (*params, low))
        ]
        upper = pair[1] if len(pair) > 1 else pair[0]
        return pair[0] + (upper - pair[0]) * (position - low)

    def shadow_pairs(
        self, phase: int, shadow: str, *, assignments: Sequence[str], after: str | None, limit: int
    ) -> tuple[ShadowPair, ...]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        matched = _MATCHED.format(marks=_marks(assignments))
        rows = self._conn.execute(
            f"""SELECT s.request_id, s.user_id, e.variant, e.items, s.items,
                       (SELECT json_group_array(item_id) FROM (
                            SELECT f.item_id FROM feedback AS f
                            WHERE f.request_id = s.request_id AND f.event = 'click' ORDER BY f.id))
                {matched} AND s.status = 200 AND s.request_id > ?
                ORDER BY s.request_id LIMIT ?""",
            (phase, shadow, *assignments, after or "", limit),
        )
        return tuple(
            ShadowPair(
                request_id=str(request_id),
                user_id=str(user_id),
                variant=str(variant),
                live=tuple(orjson.loads(live)),
                shadow=tuple(orjson.loads(shadowed)),
                clicked=tuple(orjson.loads(clicked)),
            )
            for request_id, user_id, variant, live, shadowed, clicked in rows
        )

    def repeated_lists(
        self, phase: int, variant: str, *, assignments: Sequence[str], limit: int
    ) -> tuple[RepeatedList, ...]:
        rows = self._conn.execute(
            f"""WITH ranked AS (
                    SELECT user_id, k, items, ROW_NUMBER() OVER (PARTITION BY user_id, k ORDER BY ts, id) AS n
                    FROM exposures
                    WHERE phase = ? AND variant = ? AND status = 200 AND assignment IN ({_marks(assignments)}))
                SELECT a.user_id, a.items, b.items FROM ranked AS a
                JOIN ranked AS b ON b.user_id = a.user_id AND b.k = a.k AND b.n = 2
                WHERE a.n = 1
                ORDER BY a.user_id, a.k LIMIT ?""",
            (phase, variant, *assignments, limit),
        )
        return tuple(
            RepeatedList(str(user_id), tuple(orjson.loads(first)), tuple(orjson.loads(second)))
            for user_id, first, second in rows
        )


def _marks(values: Sequence[str]) -> str:
    if not values:
        raise ValueError("no assignments selected")
    return ", ".join("?" * len(values))
