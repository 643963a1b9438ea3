"""Weight epochs in the store (every backend): versioned rows, the lock, the reward totals the next epoch uses."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

from router.bandit import ThompsonSettings, UpdateInterval, ValueReward
from router.epochs import EpochPlan, next_epoch
from router.store import SQLiteBackend
from router.store.epochs import StoredEpoch
from router.store.records import Exposure
from router.store.schema import SCHEMA_VERSION, WEIGHT_EPOCHS
from tests.store.conftest import BackendFactory, exposure, feedback_for

V2_SCHEMA = Path(__file__).with_name("schema_v2.sql")

VARIANTS = ("model_a", "model_b")


def plan(exposures: int = 4, **settings: object) -> EpochPlan:
    return EpochPlan(
        1, "thompson", VARIANTS, ThompsonSettings(update=UpdateInterval(exposures=exposures), **settings), 1.0, "s"
    )


def adaptive(n: int, variant: str, epoch: int, propensity: float = 0.5, *, user: str | None = None) -> Exposure:
    return replace(exposure(n, variant=variant, user=user), strategy="thompson", epoch=epoch, propensity=propensity)


def test_epochs_are_versioned_rows_created_under_the_lock_only_when_due(new_backend: BackendFactory) -> None:
    backend = new_backend()
    backend.open()
    assert backend.latest_epoch(1) is None
    with backend.epoch_transaction() as tx:
        first = next_epoch(plan(), tx, identity="r1", now=100.0)
    assert first is not None and (first.epoch, first.points, first.totals) == (0, (5000, 5000), ((0, 0, 0), (0, 0, 0)))
    assert backend.latest_epoch(1) == first and backend.latest_epoch(2) is None
    served = [adaptive(n, VARIANTS[n % 2], 0) for n in range(1, 4)]
    backend.write([*served, feedback_for(served[0], served[0].items[0])])
    with backend.epoch_transaction() as tx:  # 3 of 4 exposures: not due yet
        assert tx.exposures_in(1, first) == 3 and next_epoch(plan(), tx, identity="r2", now=101.0) is None
    backend.write([adaptive(4, "model_b", 0)])
    assert backend.epoch_exposures(1, first) == 4
    with backend.epoch_transaction() as tx:
        second = next_epoch(plan(), tx, identity="r2", now=102.0)
    assert second is not None and second.epoch == 1 and second.computed_by == "r2"
    # model_a served exposure 2; model_b 1, 3 and 4, and exposure 1's click is the phase's one reward
    assert second.totals == ((1, 0.0, 0.0), (3, 1.0, 1.0))  # exposure 1 (model_b) got the one click
    assert second.first_id >= 4 and backend.latest_epoch(1) == second
    with backend.snapshot() as snapshot:
        assert snapshot.epochs(1) == (first, second)


def test_a_failed_computation_inserts_nothing(new_backend: BackendFactory) -> None:
    backend = new_backend()
    backend.open()
    try:
        with backend.epoch_transaction() as tx:
            next_epoch(plan(), tx, identity="r1", now=1.0)
            raise RuntimeError("crashed after inserting, before commit")
    except RuntimeError:
        pass
    assert backend.latest_epoch(1) is None


def test_value_rewards_are_summed_per_exposure_and_squared(new_backend: BackendFactory) -> None:
    backend = new_backend()
    backend.open()
    a, b, c = adaptive(1, "model_a", 0), adaptive(2, "model_a", 0), adaptive(3, "model_b", 0)
    rating = [
        feedback_for(a, a.items[0], event="rating", value=4.0),
        feedback_for(a, a.items[1], event="rating", value=1.5),  # exposure a's reward: 5.5
        feedback_for(b, b.items[0], event="rating", value=2.0),
        feedback_for(c, c.items[0], event="click"),  # another event: no reward
    ]
    backend.write([a, b, c, *rating])
    with backend.epoch_transaction() as tx:
        totals = tx.reward_totals(1, ("model_b", "model_a", "model_c"), "value", "rating")
    assert totals == ((1, 0.0, 0.0), (2, 7.5, 5.5**2 + 4.0), (0, 0.0, 0.0))
    with backend.snapshot() as snapshot:
        groups = snapshot.adaptive_groups(1, "value", "rating")
    assert sorted(groups.reward_sum.tolist()) == [0.0, 2.0, 5.5] and set(groups.epoch.tolist()) == {0}
    settings = plan(reward=ValueReward(event="rating")).settings
    assert settings.resolved_prior.kind == "normal_gamma"


def test_two_routers_racing_for_the_lock_create_each_epoch_once(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    SQLiteBackend(path).open()
    created: list[StoredEpoch | None] = []
    barrier = threading.Barrier(6)

    def race(name: str) -> None:
        backend = SQLiteBackend(path, busy_timeout_ms=10_000)
        backend.open()
        barrier.wait()
        with backend.epoch_transaction() as tx:
            created.append(next_epoch(plan(), tx, identity=name, now=1.0))
        backend.close()

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(row is not None for row in created) == 1  # one created epoch 0; the others found it under the lock
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM weight_epochs").fetchone()[0] == 1


def test_a_version_2_store_gains_the_epoch_column_and_table(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(V2_SCHEMA.read_text(encoding="utf-8"))
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    backend = SQLiteBackend(path)
    backend.open()
    backend.close()
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        exposure_columns = [row[1] for row in conn.execute("PRAGMA table_info(exposures)")]
        epoch_columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(weight_epochs)"))
    assert version == str(SCHEMA_VERSION)
    assert exposure_columns[-1] == "epoch" and epoch_columns == WEIGHT_EPOCHS.column_names
