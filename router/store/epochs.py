"""The store's side of adaptive traffic: weight epochs as versioned rows, and the lock one router computes under.

    latest = backend.latest_epoch(phase)                 # every router, every poll: one primary-key read
    with backend.epoch_transaction() as tx:              # the store's lock (SQLite: BEGIN IMMEDIATE)
        if tx.latest(phase) == latest and due:           # re-read under the lock: another router may have won
            tx.insert(next_epoch(tx.reward_totals(phase, variants, "feedback", "click")))
    with backend.snapshot() as snapshot:
        snapshot.epochs(phase); snapshot.adaptive_groups(phase, "feedback", "click")      # the report

The maths is router.bandit's and the choreography router.epochs'; a backend only stores, counts and locks. A
PostgreSQL backend implements `epoch_transaction` with a transaction-scoped advisory lock
(`pg_advisory_xact_lock`), so exactly one router computes each epoch whichever engine holds the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import orjson
from numpy.typing import NDArray

RewardKind = Literal["feedback", "value"]

#: (exposures, reward sum, sum of squared per-exposure rewards) of one variant.
RewardTotal = tuple[int, float, float]

#: The assignments an adaptive phase learns from and is analysed by: the assigned variant, fallbacks included
#: (intention to treat: a model whose backend fails loses reward, as it should).
LEARNED_ASSIGNMENTS = ("strategy", "fallback")


@dataclass(frozen=True)
class StoredEpoch:
    """One row of `weight_epochs`: the weights in force from `computed_at` and what they were computed from."""

    phase: int
    epoch: int
    strategy: str
    computed_at: float
    first_id: int
    variants: tuple[str, ...]
    points: tuple[int, ...]
    totals: tuple[RewardTotal, ...]
    probability_best: tuple[float, ...]
    computed_by: str

    def weights_json(self) -> str:
        return orjson.dumps(
            {
                "variants": list(self.variants),
                "points": list(self.points),
                "totals": [
                    {"exposures": n, "reward_sum": total, "reward_sum_squares": squares}
                    for n, total, squares in self.totals
                ],
                "probability_best": list(self.probability_best),
            }
        ).decode()

    def columns(self) -> tuple[Any, ...]:
        """The row in `weight_epochs`' column order."""
        return (
            self.phase,
            self.epoch,
            self.strategy,
            self.computed_at,
            self.first_id,
            self.weights_json(),
            self.computed_by,
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredEpoch:
        """From (phase, epoch, strategy, computed_at, first_id, weights_json, computed_by); ValueError if malformed."""
        phase, epoch, strategy, computed_at, first_id, text, computed_by = row
        try:
            weights = orjson.loads(text)
            totals = tuple(
                (int(t["exposures"]), float(t["reward_sum"]), float(t["reward_sum_squares"])) for t in weights["totals"]
            )
            return cls(
                phase=int(phase),
                epoch=int(epoch),
                strategy=str(strategy),
                computed_at=float(computed_at),
                first_id=int(first_id),
                variants=tuple(str(v) for v in weights["variants"]),
                points=tuple(int(p) for p in weights["points"]),
                totals=totals,
                probability_best=tuple(float(p) for p in weights["probability_best"]),
                computed_by=str(computed_by),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"weight epoch {epoch} of phase {phase} is malformed: {exc}") from exc


class EpochTransaction(Protocol):
    """What a router may do while it holds the store's epoch lock (one transaction: all or nothing)."""

    def latest(self, phase: int) -> StoredEpoch | None:
        """The phase's latest epoch, read under the lock."""

    def exposures_in(self, phase: int, epoch: StoredEpoch) -> int:
        """How many exposures were assigned under `epoch` (its `epoch` number, recorded after its `first_id`)."""

    def last_exposure_id(self) -> int:
        """The highest exposures.id so far (0 when there is none)."""

    def reward_totals(
        self, phase: int, variants: tuple[str, ...], kind: RewardKind, event: str
    ) -> tuple[RewardTotal, ...]:
        """Per variant (in the given order): its exposures in the phase (by assigned variant, LEARNED_ASSIGNMENTS,
        errors included), the sum of their rewards and of the squared rewards. A feedback reward is 1 for an
        exposure with at least one `event`, a value reward the sum of its `event` values (0 if none)."""

    def insert(self, epoch: StoredEpoch) -> None:
        """Record the epoch (it is committed when the transaction ends without an exception)."""


class EpochStore(Protocol):
    """The backend methods adaptive strategies need (part of StoreBackend)."""

    def latest_epoch(self, phase: int) -> StoredEpoch | None:
        """The phase's latest epoch, without the lock (every router reads it every poll)."""

    def epoch_exposures(self, phase: int, epoch: StoredEpoch) -> int:
        """`EpochTransaction.exposures_in` without the lock: whether the epoch may be due."""

    def epoch_transaction(self) -> AbstractContextManager[EpochTransaction]:
        """Hold the store's epoch lock for the block: one router at a time, across processes and hosts."""


@dataclass(frozen=True)
class AdaptiveGroups:
    """An adaptive phase's exposures, one entry per (user, assigned variant, epoch, propensity) group.

    `user` is a dense code per user id; `variant` indexes `variants`. `epoch` and `propensity` are -1 / NaN for
    exposures without them (not assigned by an adaptive strategy). `reward_sum` sums the group's per-exposure
    rewards, `reward_sum_squares` their squares. The report's off-policy estimates, clustered by user, need
    exactly these sums.
    """

    variants: tuple[str, ...]
    user: NDArray[np.int64]
    variant: NDArray[np.int64]
    epoch: NDArray[np.int64]
    propensity: NDArray[np.float64]
    exposures: NDArray[np.int64]
    reward_sum: NDArray[np.float64]
    reward_sum_squares: NDArray[np.float64]

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> AdaptiveGroups:
        """From (user_id, variant, epoch, propensity, exposures, reward sum, sum of squares) rows, by variant."""
        variants = tuple(dict.fromkeys(str(row[1]) for row in rows))
        users: dict[str, int] = {}
        count = len(rows)
        return cls(
            variants=variants,
            user=np.fromiter((users.setdefault(str(r[0]), len(users)) for r in rows), np.int64, count),
            variant=np.fromiter((variants.index(str(r[1])) for r in rows), np.int64, count),
            epoch=np.fromiter((-1 if r[2] is None else int(r[2]) for r in rows), np.int64, count),
            propensity=np.fromiter((np.nan if r[3] is None else float(r[3]) for r in rows), np.float64, count),
            exposures=np.fromiter((int(r[4]) for r in rows), np.int64, count),
            reward_sum=np.fromiter((float(r[5]) for r in rows), np.float64, count),
            reward_sum_squares=np.fromiter((float(r[6]) for r in rows), np.float64, count),
        )


class EpochReads(Protocol):
    """What the report may ask a snapshot about an adaptive phase."""

    def epochs(self, phase: int) -> tuple[StoredEpoch, ...]:
        """Every weight epoch of the phase, in order."""

    def adaptive_groups(self, phase: int, kind: RewardKind, event: str) -> AdaptiveGroups:
        """The phase's LEARNED_ASSIGNMENTS exposures by (user, assigned variant, epoch, propensity)."""
