"""PostgreSQL's answers for adaptive traffic (router.store.epochs): the epoch rows, the lock, the reward totals.

The same questions as router.store.sqlite_epochs, in PostgreSQL's SQL. The lock is a transaction-scoped
advisory lock (`pg_advisory_xact_lock(EPOCH_LOCK)`): a second router, on this host or another, waits for it,
then re-reads the latest epoch, sees the new one, and computes nothing. It is released by COMMIT or ROLLBACK.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from router.store.epochs import LEARNED_ASSIGNMENTS, AdaptiveGroups, RewardKind, RewardTotal, StoredEpoch
from router.store.schema import WEIGHT_EPOCHS

#: The advisory lock key of weight epochs ("abte" + 3; router.store.postgres has 1 for schema, 2 for phases).
EPOCH_LOCK = 0x61627465_00000003

_COLUMNS = ", ".join(WEIGHT_EPOCHS.column_names)
_LATEST = f"SELECT {_COLUMNS} FROM weight_epochs WHERE phase = %s ORDER BY epoch DESC LIMIT 1"
_ALL = f"SELECT {_COLUMNS} FROM weight_epochs WHERE phase = %s ORDER BY epoch"
_INSERT = f"INSERT INTO weight_epochs ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(WEIGHT_EPOCHS.column_names))})"
_LEARNED = list(LEARNED_ASSIGNMENTS)


def _reward_expression(kind: RewardKind) -> str:
    """The per-exposure reward of exposure `e` (the event name is the first parameter)."""
    if kind == "feedback":
        return (
            "CAST(EXISTS (SELECT 1 FROM feedback AS f WHERE f.request_id = e.request_id AND f.event = %s "
            "AND f.phase = e.phase) AS INTEGER)"
        )
    if kind == "value":
        return (
            "(SELECT COALESCE(SUM(f.value), 0.0) FROM feedback AS f WHERE f.request_id = e.request_id "
            "AND f.event = %s AND f.phase = e.phase)"
        )
    raise ValueError(f"unknown reward kind {kind!r}")


def latest_epoch(conn: psycopg.Connection[Any], phase: int) -> StoredEpoch | None:
    row = conn.execute(_LATEST, (phase,)).fetchone()
    return None if row is None else StoredEpoch.from_row(tuple(row))


def exposures_in(conn: psycopg.Connection[Any], phase: int, epoch: StoredEpoch) -> int:
    """Exposures `epoch` assigned: all have ids above its `first_id` (a sequence value taken after it was read)."""
    sql = "SELECT COUNT(*) FROM exposures WHERE id > %s AND phase = %s AND epoch = %s"
    row = conn.execute(sql, (epoch.first_id, phase, epoch.epoch)).fetchone()
    return 0 if row is None else int(row[0])


class PostgresEpochTransaction:
    """EpochTransaction over a connection inside a transaction that holds EPOCH_LOCK."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def latest(self, phase: int) -> StoredEpoch | None:
        return latest_epoch(self._conn, phase)

    def exposures_in(self, phase: int, epoch: StoredEpoch) -> int:
        return exposures_in(self._conn, phase, epoch)

    def last_exposure_id(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM exposures").fetchone()
        return 0 if row is None else int(row[0])

    def reward_totals(
        self, phase: int, variants: tuple[str, ...], kind: RewardKind, event: str
    ) -> tuple[RewardTotal, ...]:
        rows = self._conn.execute(
            f"""SELECT v, COUNT(*), COALESCE(SUM(r), 0), COALESCE(SUM(r * r), 0) FROM (
                    SELECT e.assigned_variant AS v, {_reward_expression(kind)} AS r FROM exposures AS e
                    WHERE e.phase = %s AND e.assignment = ANY(%s)) AS rewards GROUP BY v""",
            (event, phase, _LEARNED),
        ).fetchall()
        found = {str(v): (int(n), float(total), float(squares)) for v, n, total, squares in rows}
        return tuple(found.get(name, (0, 0.0, 0.0)) for name in variants)

    def insert(self, epoch: StoredEpoch) -> None:
        self._conn.execute(_INSERT, epoch.columns())


@contextmanager
def epoch_transaction(conn: psycopg.Connection[Any]) -> Iterator[PostgresEpochTransaction]:
    """One transaction holding EPOCH_LOCK (committed unless the block raises); the caller owns `conn`."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EPOCH_LOCK,))
        yield PostgresEpochTransaction(conn)


class PostgresEpochReads:
    """`EpochReads` for a PostgreSQL snapshot; the class using it sets `_conn` (in a read transaction)."""

    _conn: psycopg.Connection[Any]

    def epochs(self, phase: int) -> tuple[StoredEpoch, ...]:
        return tuple(StoredEpoch.from_row(tuple(row)) for row in self._conn.execute(_ALL, (phase,)).fetchall())

    def adaptive_groups(self, phase: int, kind: RewardKind, event: str) -> AdaptiveGroups:
        rows = self._conn.execute(
            f"""SELECT user_id, v, epoch, propensity, COUNT(*), COALESCE(SUM(r), 0), COALESCE(SUM(r * r), 0)
                FROM (
                    SELECT e.user_id, e.assigned_variant AS v, e.epoch, e.propensity, {_reward_expression(kind)} AS r
                    FROM exposures AS e WHERE e.phase = %s AND e.assignment = ANY(%s)) AS rewards
                GROUP BY user_id, v, epoch, propensity ORDER BY v, user_id""",
            (event, phase, _LEARNED),
        ).fetchall()
        return AdaptiveGroups.from_rows(rows)
