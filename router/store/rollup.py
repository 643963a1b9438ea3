"""The report's rollups, kept by the writer: the statements that add a batch's rows to them, on both engines.

    with counted_in_rollups(conn, "sqlite", kinds):    # in the batch's transaction, under the write lock
        ... insert the batch ...                        # then its rows are added to every rollup

The report needs per-(user, variant) sums, latency order statistics and a timeline; reading them from every
exposure costs a pass over the phase's rows per question (170 s at 10M exposures). The four rollup tables
(router.store.schema: unit_rollup, event_rollup, latency_rollup, time_rollup) hold those sums, and every write
adds its batch to them in the transaction that stores the batch, so they are always exactly the rows' totals.

The one subtle total is `clicked`, an exposure with at least one click: a click and its exposure can arrive in
either order and in different batches (feedback sent to another replica before the exposure is flushed). A
pair (exposure, feedback) is counted by the batch that completes it: the exposure's, counting every click
already stored, or the click's, when the exposure was stored earlier and had no click yet. That needs every
batch to see all earlier ones and none concurrently: SQLite's one write lock gives it, PostgreSQL writers take
`ROLLUP_LOCK` (router.store.postgres). Rows are told apart by their ids: the batch's rows have ids above the
marks read under that lock.

Each statement must cost the batch, not the store: it starts from the batch's id range and looks rows up by
request id. SQLite's planner has no statistics on a router's store, so the statements say so themselves: a
unary plus (`+f.phase`, valid on both engines) keeps a term off an index, and a CROSS JOIN fixes SQLite's join
order (PostgreSQL plans it freely). tests/store/test_rollup.py checks SQLite's plans.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

#: Fine latency bins per unit of ln(1 + ms): 0.01% wide, so a bin holds few rows to read for an exact rank.
LATENCY_BINS_PER_LN = 10_000
#: The bin of a latency, the same expression in every statement (and the reader's exact lookups).
LATENCY_BIN = f"CAST(FLOOR(LN(1.0 + {{x}}) * {LATENCY_BINS_PER_LN}) AS BIGINT)"

_KEY = "e.phase, u.code, e.assigned_variant, e.variant, e.assignment"
_VARIANT_KEY = "e.phase, e.assigned_variant, e.variant, e.assignment"
#: The same keys to group by, in an order no index of exposures starts with: SQLite would otherwise scan one
#: for its order (every row of the store) rather than take the batch's id range and sort that.
_BY_KEY = "e.assignment, e.variant, e.assigned_variant, u.code, e.phase"
_BY_VARIANT_KEY = "e.assignment, e.variant, e.assigned_variant, e.phase"
_UNIT_CONFLICT = "phase, user_code, assigned_variant, variant, assignment"
#: Each exposure's user number (rollup_users), looked up by its unique user id.
_USER = "rollup_users AS u"
_USER_OF_E = "u.user_id = e.user_id"
_VARIANT_CONFLICT = "phase, assigned_variant, variant, assignment"
_IS_ERROR = "CASE WHEN e.error IS NOT NULL OR e.status >= 400 THEN 1 ELSE 0 END"
_SECOND = "CAST(FLOOR(e.ts) AS BIGINT)"


@dataclass(frozen=True)
class RowMarks:
    """The highest exposures.id and feedback.id before a batch: the batch's rows are the ones above them."""

    exposures: int
    feedback: int


class _Executes(Protocol):
    """A DB-API connection of either engine (sqlite3's or psycopg's `execute` returning a cursor)."""

    def execute(self, sql: str, /) -> Any: ...


def row_marks(conn: _Executes) -> RowMarks:
    """The marks before a batch, read under the write lock (each a primary key's last entry, not a scan)."""
    row = conn.execute(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM exposures), (SELECT COALESCE(MAX(id), 0) FROM feedback)"
    ).fetchone()
    return RowMarks(exposures=int(row[0]), feedback=int(row[1]))


@contextmanager
def counted_in_rollups(
    conn: _Executes, dialect: str, kinds: Iterable[str], *, lock: str | None = None
) -> Iterator[None]:
    """Around a batch's inserts, in its transaction: take `lock` (if the engine needs one to count batches one at
    a time), mark the ids, and after the block add the batch's rows to every rollup. A batch without exposures
    or feedback (variant info, shadow calls) touches no rollup and takes no lock."""
    if not any(kind in ("exposure", "feedback") for kind in kinds):
        yield
        return
    if lock is not None:
        conn.execute(lock)
    before = row_marks(conn)
    yield
    for statement in rollup_statements(dialect, before):
        conn.execute(statement)


def _clicked(marks: str = "") -> str:
    """An exposure `e` has a click attributed (among feedback rows satisfying `marks`, if given)."""
    return (
        "EXISTS (SELECT 1 FROM feedback AS f WHERE f.request_id = e.request_id AND f.event = 'click' "
        f"AND +f.phase = e.phase{marks})"
    )


def rollup_statements(dialect: str, before: RowMarks) -> tuple[str, ...]:
    """The statements that add the rows above `before` to every rollup (run in the batch's transaction)."""
    least, greatest = ("LEAST", "GREATEST") if dialect == "postgresql" else ("MIN", "MAX")
    e_new, e_old = f"e.id > {int(before.exposures)}", f"e.id <= {int(before.exposures)}"
    f_new = f"f.id > {int(before.feedback)}"
    # Clicks of this batch on exposures stored earlier that had none before it: each such exposure once.
    first_clicks = f"""
        FROM exposures AS e CROSS JOIN {_USER}
        WHERE {_USER_OF_E} AND e.id IN (SELECT o.id FROM feedback AS f CROSS JOIN exposures AS o
                       WHERE {f_new} AND f.event = 'click' AND o.request_id = f.request_id AND +o.phase = f.phase
                             AND +o.id <= {int(before.exposures)})
              AND NOT {_clicked(f" AND f.id <= {int(before.feedback)}")}"""
    bin_of = LATENCY_BIN.format(x="e.latency_ms")
    return (
        # rollup_users: a number for each new user (`|| ''` keeps SQLite off the user index's order).
        f"""INSERT INTO rollup_users (user_id)
            SELECT DISTINCT e.user_id || '' FROM exposures AS e WHERE {e_new}
            ON CONFLICT (user_id) DO NOTHING""",
        # unit_rollup: the batch's exposures (their clicks so far), then first clicks on earlier exposures.
        f"""INSERT INTO unit_rollup ({_UNIT_CONFLICT}, exposures, errors, clicked)
            SELECT {_KEY}, COUNT(*), SUM({_IS_ERROR}), SUM(CASE WHEN {_clicked()} THEN 1 ELSE 0 END)
            FROM exposures AS e CROSS JOIN {_USER} WHERE {e_new} AND {_USER_OF_E} GROUP BY {_BY_KEY}
            ON CONFLICT ({_UNIT_CONFLICT}) DO UPDATE SET exposures = unit_rollup.exposures + excluded.exposures,
                errors = unit_rollup.errors + excluded.errors, clicked = unit_rollup.clicked + excluded.clicked""",
        f"""INSERT INTO unit_rollup ({_UNIT_CONFLICT}, exposures, errors, clicked)
            SELECT {_KEY}, 0, 0, COUNT(*) {first_clicks} GROUP BY {_BY_KEY}
            ON CONFLICT ({_UNIT_CONFLICT}) DO UPDATE SET clicked = unit_rollup.clicked + excluded.clicked""",
        # event_rollup: each (exposure, feedback) pair once, by the batch that completes it.
        *(
            f"""INSERT INTO event_rollup ({_UNIT_CONFLICT}, event, events, value_sum)
                SELECT {_KEY}, f.event, COUNT(*), SUM(COALESCE(f.value, 0.0))
                FROM {tables} WHERE f.request_id = e.request_id AND +f.phase = e.phase AND {where}
                GROUP BY {_BY_KEY}, f.event
                ON CONFLICT ({_UNIT_CONFLICT}, event) DO UPDATE SET events = event_rollup.events + excluded.events,
                    value_sum = event_rollup.value_sum + excluded.value_sum"""
            for tables, where in (
                (f"exposures AS e CROSS JOIN feedback AS f CROSS JOIN {_USER}", f"{e_new} AND {_USER_OF_E}"),
                (
                    f"feedback AS f CROSS JOIN exposures AS e CROSS JOIN {_USER}",
                    f"{f_new} AND +{e_old} AND {_USER_OF_E}",
                ),
            )
        ),
        f"""INSERT INTO latency_rollup ({_VARIANT_CONFLICT}, bin, exposures, latency_min, latency_max)
            SELECT {_VARIANT_KEY}, {bin_of}, COUNT(*), MIN(e.latency_ms), MAX(e.latency_ms)
            FROM exposures AS e WHERE {e_new} GROUP BY {_BY_VARIANT_KEY}, {bin_of}
            ON CONFLICT ({_VARIANT_CONFLICT}, bin) DO UPDATE SET
                exposures = latency_rollup.exposures + excluded.exposures,
                latency_min = {least}(latency_rollup.latency_min, excluded.latency_min),
                latency_max = {greatest}(latency_rollup.latency_max, excluded.latency_max)""",
        f"""INSERT INTO time_rollup ({_VARIANT_CONFLICT}, strategy, second, exposures, clicked, first_ts, last_ts)
            SELECT {_VARIANT_KEY}, e.strategy, {_SECOND}, COUNT(*), SUM(CASE WHEN {_clicked()} THEN 1 ELSE 0 END),
                   MIN(e.ts), MAX(e.ts)
            FROM exposures AS e WHERE {e_new} GROUP BY {_BY_VARIANT_KEY}, e.strategy, {_SECOND}
            ON CONFLICT ({_VARIANT_CONFLICT}, strategy, second) DO UPDATE SET
                exposures = time_rollup.exposures + excluded.exposures,
                clicked = time_rollup.clicked + excluded.clicked,
                first_ts = {least}(time_rollup.first_ts, excluded.first_ts),
                last_ts = {greatest}(time_rollup.last_ts, excluded.last_ts)""",
        f"""INSERT INTO time_rollup ({_VARIANT_CONFLICT}, strategy, second, exposures, clicked, first_ts, last_ts)
            SELECT {_VARIANT_KEY}, e.strategy, {_SECOND}, 0, COUNT(*), MIN(e.ts), MAX(e.ts) {first_clicks}
            GROUP BY {_BY_VARIANT_KEY}, e.strategy, {_SECOND}
            ON CONFLICT ({_VARIANT_CONFLICT}, strategy, second) DO UPDATE SET
                clicked = time_rollup.clicked + excluded.clicked""",
    )


def rollup_backfill(dialect: str) -> tuple[str, ...]:
    """The statements that fill empty rollups from every row already stored (the schema migration's step)."""
    return rollup_statements(dialect, RowMarks(exposures=0, feedback=0))
