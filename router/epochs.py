"""The epoch keeper: every router serves the store's current weight epoch; one computes the next, under a lock.

    keeper = EpochKeeper(store, identity="host:1234")
    source = await keeper.enter(config, phase, moved={})   # reads (or creates) the phase's epoch; polls from now
    strategy = build_strategy(config.strategy, SplitInputs(..., epochs=source))   # reads source.current()
    keeper.health()                                          # for GET /health: epoch, weights, current or stale
    await keeper.stop()

Every `bandit.poll_seconds` each router reads the phase's latest epoch (one primary-key read) and counts the
exposures assigned under it. When the epoch is due (`update_exposures` exposures or `update_seconds` seconds,
whichever first), it takes the store's epoch lock, re-reads the latest epoch and its count under it - another
router may have just computed the next - and only if it is still due computes the next epoch from the phase's
outcome totals (router.bandit.compute_epoch) and inserts it, in the same transaction. So every epoch is
computed exactly once, by whichever router got there first, and every router serves it from its next poll.

A router that cannot reach the store keeps serving the last weights it read, and /health says so ("stale",
with the error and since when); it catches up on the first poll that succeeds. The request path reads one
attribute (`PhaseEpochs.current`); all I/O happens in the poll task, through worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router.bandit import BanditError, EpsilonGreedySettings, ThompsonSettings, VariantTotals, compute_epoch
from router.config import ExperimentConfig
from router.errors import StoreError
from router.store import OutcomeStore
from router.store.epochs import EpochTransaction, StoredEpoch
from router.strategies import EpochTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochPlan:
    """What one adaptive phase's epochs are computed with (fixed for the phase: its key includes them)."""

    phase: int
    strategy: str
    variants: tuple[str, ...]
    settings: ThompsonSettings | EpsilonGreedySettings
    poll_seconds: float
    salt: str

    @classmethod
    def of(cls, config: ExperimentConfig, phase: int) -> EpochPlan:
        return cls(
            phase,
            config.strategy,
            tuple(v.name for v in config.variants),
            config.bandit_settings,
            config.bandit.poll_seconds,
            config.salt,
        )

    def due(self, epoch: StoredEpoch, exposures: int, now: float) -> bool:
        """Whether `epoch`, having assigned `exposures`, is over (a time-based end needs one exposure at least)."""
        update = self.settings.update
        by_count = update.exposures is not None and exposures >= update.exposures
        by_time = update.seconds is not None and exposures > 0 and now - epoch.computed_at >= update.seconds
        return by_count or by_time


def next_epoch(
    plan: EpochPlan, tx: EpochTransaction, *, identity: str, now: float, force_first: bool = False
) -> StoredEpoch | None:
    """Under the lock: insert the phase's next epoch if there is none yet or the latest is due; the new row or None.

    The weights come from the outcome totals of everything the phase has logged so far (none for epoch 0: an
    even split). `force_first` only creates epoch 0 when missing, never a later one.
    """
    latest = tx.latest(plan.phase)
    if latest is not None and (force_first or not plan.due(latest, tx.exposures_in(plan.phase, latest), now)):
        return None
    number = 0 if latest is None else latest.epoch + 1
    totals = tx.reward_totals(plan.phase, plan.variants, plan.settings.reward.kind, plan.settings.reward.event)
    weights = compute_epoch(
        plan.settings,
        number,
        plan.variants,
        [VariantTotals(n, total, squares) for n, total, squares in totals],
        computed_at=datetime.fromtimestamp(now, UTC),
    )
    row = StoredEpoch(
        phase=plan.phase,
        epoch=number,
        strategy=plan.strategy,
        computed_at=now,
        first_id=tx.last_exposure_id(),
        variants=weights.variants,
        points=weights.points,
        totals=totals,
        probability_best=weights.probability_best,
        computed_by=identity,
    )
    tx.insert(row)
    return row


class PhaseEpochs:
    """One adaptive phase's current epoch as an EpochSource, and what /health says about it."""

    def __init__(self, plan: EpochPlan, stored: StoredEpoch, moved: Mapping[str, str]) -> None:
        self.plan = plan
        self.moved = dict(moved)
        self.stored = stored
        self.table = _table(plan, stored, self.moved)
        self.stale_since: float | None = None
        self.error: str | None = None
        self.last_read_at = time.time()

    def current(self) -> EpochTable:
        """The table in force (the hot path: one attribute read)."""
        return self.table

    def publish(self, stored: StoredEpoch) -> None:
        if stored.epoch != self.stored.epoch:
            self.stored, self.table = stored, _table(self.plan, stored, self.moved)
            log.info(
                "weight epoch",
                extra={
                    "phase": stored.phase,
                    "epoch": stored.epoch,
                    "weights": dict(zip(stored.variants, [p / 10_000 for p in stored.points], strict=True)),
                    "computed_by": stored.computed_by,
                },
            )
        self.last_read_at = time.time()
        if self.stale_since is not None:
            log.warning("weight epochs readable again", extra={"phase": stored.phase, "epoch": stored.epoch})
        self.stale_since, self.error = None, None

    def mark_stale(self, error: str) -> None:
        if self.stale_since is None:
            self.stale_since = time.time()
            log.error(
                "cannot read the weight epochs; serving the last weights",
                extra={"phase": self.plan.phase, "epoch": self.stored.epoch, "error": error},
            )
        self.error = error

    def health(self) -> dict[str, Any]:
        stored = self.stored
        return {
            "status": "stale" if self.stale_since is not None else "current",
            "strategy": self.plan.strategy,
            "epoch": stored.epoch,
            "weights": {name: self.table.propensity(name) for name in dict.fromkeys(self.table.variants)},
            "computed_at": stored.computed_at,
            "computed_by": stored.computed_by,
            "last_read_at": self.last_read_at,
            "stale_since": self.stale_since,
            "error": self.error,
        }


def _table(plan: EpochPlan, stored: StoredEpoch, moved: Mapping[str, str]) -> EpochTable:
    return EpochTable(stored.epoch, stored.variants, stored.points, plan.salt, moved)


class EpochKeeper:
    """Per router process: the live adaptive phase's PhaseEpochs and the task that polls the store for it."""

    def __init__(self, store: OutcomeStore, *, identity: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.identity = identity
        self._clock = clock
        self._phase: PhaseEpochs | None = None
        self._task: asyncio.Task[None] | None = None
        self.computed = 0  # epochs this process computed (tests, logs)

    @property
    def phase(self) -> PhaseEpochs | None:
        return self._phase

    async def enter(self, config: ExperimentConfig, phase: int, moved: Mapping[str, str]) -> PhaseEpochs:
        """Serve `phase`'s epochs from now: read its latest (creating epoch 0 under the lock if there is none).

        Raises StoreError when the store cannot be read: a router must not start an adaptive phase blind.
        """
        plan = EpochPlan.of(config, phase)
        stored = await asyncio.to_thread(self._first, plan)
        epochs = PhaseEpochs(plan, stored, moved)
        await self.leave()
        self._phase = epochs
        self._task = asyncio.create_task(self._poll(epochs), name=f"epoch-keeper-{phase}")
        return epochs

    async def leave(self) -> None:
        """Stop polling (the live phase is not adaptive any more, or the router stops)."""
        task, self._task, self._phase = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        await self.leave()

    def health(self) -> dict[str, Any] | None:
        """The live adaptive phase's epoch for /health, None when the live phase is not adaptive."""
        return None if self._phase is None else self._phase.health()

    def _first(self, plan: EpochPlan) -> StoredEpoch:
        stored = self.store.latest_epoch(plan.phase)
        if stored is None:
            created = self.store.in_epoch_lock(
                lambda tx: next_epoch(plan, tx, identity=self.identity, now=self._clock(), force_first=True)
            )
            self.computed += created is not None
            stored = self.store.latest_epoch(plan.phase)
        if stored is None:  # pragma: no cover - inserted above under the lock
            raise StoreError(f"phase {plan.phase} has no weight epoch after creating one")
        if stored.variants != plan.variants:
            raise StoreError(
                f"phase {plan.phase}'s weight epochs are for variants {list(stored.variants)}, "
                f"not {list(plan.variants)}: the store does not belong to this config"
            )
        return stored

    async def _poll(self, epochs: PhaseEpochs) -> None:
        while True:
            await asyncio.sleep(epochs.plan.poll_seconds)
            try:
                stored = await asyncio.to_thread(self.tick, epochs.plan, epochs.stored)
            except StoreError as exc:
                if self._locked(exc):
                    continue  # another router holds the lock for a while: it is computing; read it next time
                epochs.mark_stale(str(exc))
                continue
            except BanditError as exc:  # totals no reward could produce: keep the weights, say why
                epochs.mark_stale(f"cannot compute the next epoch: {exc}")
                continue
            except Exception:  # a bug: keep serving the last weights, loudly
                log.exception("epoch keeper failed; serving the last weights")
                epochs.mark_stale("internal error in the epoch keeper (see the log)")
                continue
            epochs.publish(stored)

    def tick(self, plan: EpochPlan, known: StoredEpoch) -> StoredEpoch:
        """One poll (blocking): the latest epoch, after computing the next one when it is due."""
        latest = self.store.latest_epoch(plan.phase) or known
        now = self._clock()
        if plan.due(latest, self.store.epoch_exposures(plan.phase, latest), now):
            created = self.store.in_epoch_lock(lambda tx: next_epoch(plan, tx, identity=self.identity, now=now))
            if created is not None:
                self.computed += 1
                return created
            latest = self.store.latest_epoch(plan.phase) or latest
        return latest

    def _locked(self, exc: StoreError) -> bool:
        cause = exc.__cause__
        failure = None if cause is None else self.store.backend.classify(cause)
        return failure is not None and failure.kind == "locked"
