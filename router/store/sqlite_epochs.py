"""SQLite's answers for adaptive traffic (router.store.epochs): the epoch rows, the lock, the reward totals.

The lock is `BEGIN IMMEDIATE`: SQLite's write lock, taken at the start of the transaction, so a second router
waits (up to the busy timeout) and then re-reads the latest epoch, sees the new one, and computes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from router.store.epochs import LEARNED_ASSIGNMENTS, AdaptiveGroups, RewardKind, RewardTotal, StoredEpoch
from router.store.schema import WEIGHT_EPOCHS

_COLUMNS = ", ".join(WEIGHT_EPOCHS.column_names)
_LATEST = f"SELECT {_COLUMNS} FROM weight_epochs WHERE phase = ? ORDER BY epoch DESC LIMIT 1"
_ALL = f"SELECT {_COLUMNS} FROM weight_epochs WHERE phase = ? ORDER BY epoch"
_INSERT = f"INSERT INTO weight_epochs ({_COLUMNS}) VALUES ({', '.join('?' * len(WEIGHT_EPOCHS.column_names))})"
_MARKS = ", ".join(f"'{a}'" for a in LEARNED_ASSIGNMENTS)


def _reward_expression(kind: RewardKind) -> str:
    """The per-exposure reward of exposure `e` (the event name is the first parameter)."""
    if kind == "feedback":
        return (
            "CAST(EXISTS (SELECT 1 FROM feedback AS f WHERE f.request_id = e.request_id AND f.event = ? "
            "AND f.phase = e.phase) AS INTEGER)"
        )
    if kind == "value":
        return (
            "(SELECT TOTAL(f.value) FROM feedback AS f WHERE f.request_id = e.request_id AND f.event = ? "
            "AND f.phase = e.phase)"
        )
    raise ValueError(f"unknown reward kind {kind!r}")


def latest_epoch(conn: sqlite3.Connection, phase: int) -> StoredEpoch | None:
    row = conn.execute(_LATEST, (phase,)).fetchone()
    return None if row is None else StoredEpoch.from_row(tuple(row))


class SQLiteEpochTransaction:
    """EpochTransaction over a connection inside `BEGIN IMMEDIATE`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def latest(self, phase: int) -> StoredEpoch | None:
        return latest_epoch(self._conn, phase)

    def exposures_in(self, phase: int, epoch: StoredEpoch) -> int:
        sql = "SELECT COUNT(*) FROM exposures WHERE id > ? AND phase = ? AND epoch = ?"  # an id range scan
        return int(self._conn.execute(sql, (epoch.first_id, phase, epoch.epoch)).fetchone()[0])

    def last_exposure_id(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM exposures").fetchone()[0])

    def reward_totals(
        self, phase: int, variants: tuple[str, ...], kind: RewardKind, event: str
    ) -> tuple[RewardTotal, ...]:
        rows = self._conn.execute(
            f"""SELECT v, COUNT(*), TOTAL(r), TOTAL(r * r) FROM (
                    SELECT e.assigned_variant AS v, {_reward_expression(kind)} AS r FROM exposures AS e
                    WHERE e.phase = ? AND e.assignment IN ({_MARKS})) GROUP BY v""",
            (event, phase),
        ).fetchall()
        found = {str(v): (int(n), float(total), float(squares)) for v, n, total, squares in rows}
        return tuple(found.get(name, (0, 0.0, 0.0)) for name in variants)

    def insert(self, epoch: StoredEpoch) -> None:
        self._conn.execute(_INSERT, epoch.columns())


@contextmanager
def epoch_transaction(conn: sqlite3.Connection) -> Iterator[SQLiteEpochTransaction]:
    """`BEGIN IMMEDIATE` ... COMMIT (ROLLBACK on any exception); the caller owns and closes `conn`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield SQLiteEpochTransaction(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class SQLiteEpochReads:
    """`EpochReads` for a SQLite snapshot; the class using it sets `_conn` (a connection in a read transaction)."""

    _conn: sqlite3.Connection

    def epochs(self, phase: int) -> tuple[StoredEpoch, ...]:
        return tuple(StoredEpoch.from_row(tuple(row)) for row in self._conn.execute(_ALL, (phase,)))

    def adaptive_groups(self, phase: int, kind: RewardKind, event: str) -> AdaptiveGroups:
        rows = self._conn.execute(
            f"""SELECT user_id, v, epoch, propensity, COUNT(*), TOTAL(r), TOTAL(r * r) FROM (
                    SELECT e.user_id, e.assigned_variant AS v, e.epoch, e.propensity, {_reward_expression(kind)} AS r
                    FROM exposures AS e WHERE e.phase = ? AND e.assignment IN ({_MARKS}))
                GROUP BY user_id, v, epoch, propensity ORDER BY v, user_id""",
            (event, phase),
        ).fetchall()
        return AdaptiveGroups.from_rows(rows)
