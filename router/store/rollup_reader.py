"""The report's questions answered from the rollups (router.store.rollup), the same SQL on both engines.

    class SQLiteSnapshot(RollupReads, ...):          # a backend's snapshot supplies `_query` (qmark SQL)
        def _query(self, sql, params): return self._conn.execute(sql, params).fetchall()

Counts, ranges, the timeline and the histogram's whole bins come from the rollups, which hold a row per
(variant, fine latency bin) or (variant, second), not per exposure. Order statistics stay exact, as numpy
computes them: the bins say which bin holds each wanted rank, and only that bin's rows are read, through the
`exposures_phase_latency` index (a few hundred rows, not the phase). The histogram reads the same way only the
fine bins that straddle one of its edges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router.errors import StoreFormatError
from router.store.reader import GroupBy, Timeline, UnitTotals, timelines_from_buckets
from router.store.rollup import LATENCY_BIN


def group_column(by: GroupBy) -> str:
    """The column an exposure counts for (validated: it is put into SQL text)."""
    if by not in ("variant", "assigned_variant"):
        raise ValueError(f"cannot group by {by!r}")
    return by


def selected_marks(values: Sequence[str]) -> str:
    """`?` placeholders for the IN list of selected assignments (there must be one)."""
    if not values:
        raise ValueError("no assignments selected")
    return ", ".join("?" * len(values))


def _case(column: str, n: int) -> str:
    """The code of `column`'s value among n sorted names given as parameters: 0, 1, ... (qmark SQL)."""
    return "CASE " + " ".join(f"WHEN {column} = ? THEN {i}" for i in range(n)) + " END" if n else "0"


def _F(expression: str) -> str:  # noqa: N802 - reads as a type, like the SQL it writes
    """`expression` as DOUBLE PRECISION: every numeric read is one array of float64 (exact below 2**53)."""
    return f"CAST({expression} AS DOUBLE PRECISION)"


class _Bins:
    """One variant's fine latency bins, ascending: bin number, exposures, fastest and slowest in the bin."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.number = np.array([int(r[0]) for r in rows], np.int64)
        self.count = np.array([int(r[1]) for r in rows], np.int64)
        self.low = np.array([float(r[2]) for r in rows], np.float64)
        self.high = np.array([float(r[3]) for r in rows], np.float64)
        self.ends = np.cumsum(self.count)


class RollupReads:
    """The PhaseSnapshot questions (router.store.reader) that the rollups answer, for any backend's snapshot."""

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run qmark-style `sql` in the snapshot's transaction; all rows."""
        raise NotImplementedError

    def _numbers(self, sql: str, params: Sequence[Any], width: int) -> NDArray[np.float64]:
        """Run qmark-style `sql`, whose `width` columns are all numbers (DOUBLE PRECISION), as one 2-D array."""
        raise NotImplementedError

    def unit_totals(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], slow_above_ms: float | None = None
    ) -> UnitTotals:
        """Three reads of integers, matched in numpy by (user number, variant): the pairs from unit_rollup, their
        events from event_rollup, and their slow requests from the latency index (a threshold known only now;
        latency_ms is never NULL, so slow is greater than it)."""
        column, marks = group_column(by), selected_marks(assignments)
        selected = f"phase = ? AND assignment IN ({marks})"
        variants = tuple(
            str(row[0])
            for row in self._query(
                f"SELECT DISTINCT {column} FROM latency_rollup WHERE {selected} ORDER BY 1", (phase, *assignments)
            )
        )
        events = tuple(
            str(row[0])
            for row in self._query("SELECT DISTINCT event FROM event_rollup WHERE phase = ? ORDER BY 1", (phase,))
        )
        code = _case(column, len(variants))
        # The rollup's rows as they are (a pair is several rows only after fallbacks or several assignments):
        # summed per pair in numpy, which costs less than asking SQLite to group them.
        rows = self._numbers(
            f"""SELECT {_F("user_code")}, {_F(code)}, {_F("exposures")}, {_F("errors")}, {_F("clicked")},
                       {_F("CASE WHEN assignment = 'fallback' THEN exposures ELSE 0 END")}
                FROM unit_rollup WHERE {selected}""",
            (*variants, phase, *assignments),
            6,
        )
        width = max(len(variants), 1)
        row_keys = rows[:, 0].astype(np.int64) * width + rows[:, 1].astype(np.int64)
        order = np.argsort(row_keys, kind="stable")  # already in key order for by=assigned_variant
        rows, row_keys = rows[order], row_keys[order]
        starts = np.flatnonzero(np.concatenate([[True], row_keys[1:] != row_keys[:-1]])) if row_keys.size else order
        pairs = rows[starts]
        keys = row_keys[starts]
        counts = (
            np.add.reduceat(np.rint(rows[:, 2:6]).astype(np.int64), starts, axis=0)
            if starts.size
            else np.zeros((0, 4), np.int64)
        )

        def place(rows: NDArray[np.float64]) -> NDArray[np.int64]:
            """Each row's pair (by its user number and variant code in columns 0 and 1)."""
            found = rows[:, 0].astype(np.int64) * width + rows[:, 1].astype(np.int64)
            index = np.searchsorted(keys, found)
            if found.size and (index.max() >= keys.size or not np.array_equal(keys[index], found)):
                raise StoreFormatError("the rollups count events or slow requests of a pair without exposures")
            return index

        event_counts: dict[str, NDArray[np.int64]] = {}
        event_values: dict[str, NDArray[np.float64]] = {}
        if events:
            rows = self._numbers(
                f"""SELECT {_F("user_code")}, {_F(code)}, {_F(_case("event", len(events)))}, {_F("events")},
                           {_F("value_sum")}
                    FROM event_rollup WHERE {selected}""",
                (*variants, *events, phase, *assignments),
                5,
            )
            index, which = place(rows), rows[:, 2].astype(np.int64)
            for i, event in enumerate(events):
                mine = which == i
                if mine.any():  # only events attributed to selected exposures, as every backend answers
                    event_counts[event] = np.zeros(keys.size, np.int64)
                    event_values[event] = np.zeros(keys.size, np.float64)
                    np.add.at(event_counts[event], index[mine], np.rint(rows[mine, 3]).astype(np.int64))
                    np.add.at(event_values[event], index[mine], rows[mine, 4])
        slow: NDArray[np.int64] | None = None
        if slow_above_ms is not None:
            rows = self._numbers(
                f"""SELECT {_F("u.code")}, {_F(_case("e." + column, len(variants)))}, {_F("COUNT(*)")}
                    FROM exposures AS e CROSS JOIN rollup_users AS u
                    WHERE e.phase = ? AND e.latency_ms > ? AND e.assignment IN ({marks}) AND u.user_id = e.user_id
                    GROUP BY u.code, e.{column}""",
                (*variants, phase, float(slow_above_ms), *assignments),
                3,
            )
            slow = np.zeros(keys.size, np.int64)
            np.add.at(slow, place(rows), np.rint(rows[:, 2]).astype(np.int64))
        users = pairs[:, 0].astype(np.int64)
        dense = np.cumsum(np.concatenate([[0], users[1:] != users[:-1]])) if users.size else users
        return UnitTotals(
            variants=variants,
            user=dense.astype(np.int64),
            variant=pairs[:, 1].astype(np.int64),
            exposures=counts[:, 0],
            errors=counts[:, 1],
            clicked=counts[:, 2],
            fallbacks=counts[:, 3],
            events=event_counts,
            values=event_values,
            slow=slow,
        )

    def strategies(self, phase: int) -> tuple[str, ...]:
        rows = self._query("SELECT DISTINCT strategy FROM time_rollup WHERE phase = ? ORDER BY strategy", (phase,))
        return tuple(str(row[0]) for row in rows)

    def time_range(self, phase: int) -> tuple[float, float] | None:
        ((first, last),) = self._query("SELECT MIN(first_ts), MAX(last_ts) FROM time_rollup WHERE phase = ?", (phase,))
        return None if first is None else (float(first), float(last))

    def exposures_by_assignment(self, phase: int) -> Mapping[str, int]:
        sql = (
            "SELECT assignment, CAST(SUM(exposures) AS BIGINT) FROM time_rollup WHERE phase = ? "
            "GROUP BY assignment ORDER BY assignment"
        )
        return {str(kind): int(n) for kind, n in self._query(sql, (phase,))}

    def feedback_by_assignment(self, phase: int) -> Mapping[str, int]:
        sql = (
            "SELECT assignment, CAST(SUM(events) AS BIGINT) FROM event_rollup WHERE phase = ? "
            "GROUP BY assignment ORDER BY assignment"
        )
        return {str(kind): int(n) for kind, n in self._query(sql, (phase,))}

    def users_in_several_variants(self, phase: int, *, by: GroupBy, assignments: Sequence[str]) -> int:
        ((count,),) = self._query(
            f"""SELECT COUNT(*) FROM (
                    SELECT user_code FROM unit_rollup WHERE phase = ? AND assignment IN ({selected_marks(assignments)})
                    GROUP BY user_code HAVING COUNT(DISTINCT {group_column(by)}) > 1) AS several""",
            (phase, *assignments),
        )
        return int(count)

    def latency_range(self, phase: int, *, by: GroupBy, assignments: Sequence[str]) -> tuple[float, float] | None:
        ((low, high),) = self._query(
            f"SELECT MIN(latency_min), MAX(latency_max) FROM latency_rollup WHERE phase = ? AND assignment IN "
            f"({selected_marks(assignments)})",
            (phase, *assignments),
        )
        return None if low is None else (float(low), float(high))

    def _bins(self, phase: int, by: GroupBy, assignments: Sequence[str]) -> dict[str, _Bins]:
        column = group_column(by)
        rows = self._query(
            f"""SELECT {column}, bin, CAST(SUM(exposures) AS BIGINT), MIN(latency_min), MAX(latency_max)
                FROM latency_rollup WHERE phase = ? AND assignment IN ({selected_marks(assignments)})
                GROUP BY {column}, bin ORDER BY {column}, bin""",
            (phase, *assignments),
        )
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for variant, *rest in rows:
            grouped.setdefault(str(variant), []).append(tuple(rest))
        return {name: _Bins(found) for name, found in grouped.items()}

    def _bin_values(
        self, phase: int, by: GroupBy, assignments: Sequence[str], variant: str, bins: _Bins, i: int
    ) -> NDArray[np.float64]:
        """The latencies in fine bin `i` of `variant`, ascending: a range of the phase's latency index (`|| ''`
        keeps SQLite's planner, which has no statistics, off the variant index), then the bin's own rule."""
        column = group_column(by)
        rows = self._query(
            f"""SELECT latency_ms FROM exposures WHERE phase = ? AND latency_ms >= ? AND latency_ms <= ?
                AND {column} || '' = ? AND assignment || '' IN ({selected_marks(assignments)})
                AND {LATENCY_BIN.format(x="latency_ms")} = ?""",
            (phase, float(bins.low[i]), float(bins.high[i]), variant, *assignments, int(bins.number[i])),
        )
        return np.sort(np.array([float(row[0]) for row in rows], np.float64))

    def latency_percentiles(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], quantiles: Sequence[float]
    ) -> Mapping[str, tuple[float, ...]]:
        """Exact, numpy's linear interpolation: each wanted rank is found in its bin; only such bins are read."""
        result: dict[str, tuple[float, ...]] = {}
        for name, bins in self._bins(phase, by, assignments).items():
            n = int(bins.ends[-1])
            read: dict[int, NDArray[np.float64]] = {}

            def value(rank: int, name: str = name, bins: _Bins = bins, read: dict[int, Any] = read) -> float:
                i = int(np.searchsorted(bins.ends, rank, side="right"))
                place = rank - (int(bins.ends[i - 1]) if i else 0)
                if place == 0:
                    return float(bins.low[i])
                if place == bins.count[i] - 1:
                    return float(bins.high[i])
                if i not in read:
                    read[i] = self._bin_values(phase, by, assignments, name, bins, i)
                return float(read[i][place])

            picked = []
            for q in quantiles:
                position = q * (n - 1)
                low = math.floor(position)
                lower, upper = value(low), value(min(low + 1, n - 1))
                picked.append(lower + (upper - lower) * (position - low))
            result[name] = tuple(picked)
        return result

    def latency_histogram(
        self, phase: int, *, by: GroupBy, assignments: Sequence[str], edges: NDArray[np.float64]
    ) -> Mapping[str, NDArray[np.int64]]:
        """Bin i holds edges[i] <= x < edges[i+1]; the last bin also the top edge, and values outside are clipped
        into the first or last bin (numpy's rule, then clipping). Fine bins that straddle an edge are read."""
        inner = np.asarray(edges, np.float64)[1:-1]
        result: dict[str, NDArray[np.int64]] = {}
        for name, bins in self._bins(phase, by, assignments).items():
            counts = np.zeros(len(edges) - 1, np.int64)
            first = np.searchsorted(inner, bins.low, side="right")
            last = np.searchsorted(inner, bins.high, side="right")
            whole = first == last
            np.add.at(counts, first[whole], bins.count[whole])
            for i in np.flatnonzero(~whole).tolist():
                values = self._bin_values(phase, by, assignments, name, bins, i)
                np.add.at(counts, np.searchsorted(inner, values, side="right"), 1)
            result[name] = counts
        return result

    def timeline(self, phase: int, *, by: GroupBy, assignments: Sequence[str], buckets: int) -> Mapping[str, Timeline]:
        """To the second: a bucket counts the seconds that start in it (the first second's exposures in the first)."""
        span = self.time_range(phase)
        if span is None:
            return {}
        first, last = span
        width = max((last - first) / buckets, 1e-9)
        column = group_column(by)
        bucket = "CAST(FLOOR((second - ?) / ?) AS BIGINT)"
        rows = self._query(
            f"""SELECT {column}, CASE WHEN {bucket} < 0 THEN 0 WHEN {bucket} > ? THEN ? ELSE {bucket} END AS b,
                       CAST(SUM(exposures) AS BIGINT), CAST(SUM(clicked) AS BIGINT)
                FROM time_rollup WHERE phase = ? AND assignment IN ({selected_marks(assignments)})
                GROUP BY {column}, b""",
            (first, width, first, width, buckets - 1, buckets - 1, first, width, phase, *assignments),
        )
        return timelines_from_buckets(rows, first, width, buckets)
