"""The epoch keeper across real processes: two routers on one SQLite store compute each epoch once, both serve it.

Also over the same real run: every logged propensity is the probability recomputed from the logged epoch's
weights, the propensities of an epoch sum to 1, a user keeps one variant per epoch whichever router answers,
and traffic moves toward the variant that earns more clicks. In process: a router that cannot read the store
keeps its weights and says so in /health.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from abtest.processes import free_port
from router.app import create_app
from router.config import RouterSettings
from router.store import OutcomeStore, SQLiteBackend
from router.store.epochs import StoredEpoch
from tests.reliability.services import Service, router_service, store_path
from tests.router.conftest import wait_until, write_config
from tests.support.fake_model import serve_fake_model
from tests.support.servers import serve

INTERVAL = 60  # exposures per epoch
CTR = {"model_a": 0.1, "model_b": 0.6}  # the test's ground truth: model_b's lists get clicked far more


def thompson(urls: dict[str, str], **bandit: Any) -> dict[str, Any]:
    return {
        "experiment": "rec-bandit",
        "strategy": "thompson",
        "salt": "bandit-salt",
        "variants": [{"name": name, "url": url, "weight": 1} for name, url in urls.items()],
        "timeouts": {"connect": 0.5, "read": 2.0, "pool": 0.5},
        "bandit": {"update_exposures": INTERVAL, "poll_seconds": 0.1, **bandit},
    }


@pytest.fixture
def fakes() -> Iterator[dict[str, str]]:
    with serve_fake_model("model_a") as url_a, serve_fake_model("model_b") as url_b:
        yield {"model_a": url_a, "model_b": url_b}


@pytest.fixture
def two_routers(tmp_path: Path, fakes: dict[str, str]) -> Iterator[tuple[Service, Service]]:
    config = thompson(fakes)
    routers = [router_service(tmp_path, free_port(), config, name=f"router-{i}") for i in range(2)]
    try:
        for router in routers:
            router.start(timeout=60)
        yield routers[0], routers[1]
    finally:
        for router in routers:
            router.stop()


def visit(client: httpx.Client, url: str, user: str, rng: random.Random) -> dict[str, Any]:
    answer = client.get(f"{url}/recommend/{user}", params={"k": 3})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    if rng.random() < CTR[body["variant"]]:
        event = {"request_id": body["request_id"], "user_id": user, "item_id": body["items"][0], "event": "click"}
        assert client.post(f"{url}/feedback", json=event).status_code == 202
    return body


def bandit_health(client: httpx.Client, router: Service) -> dict[str, Any]:
    return bandit_health_of(client, router.url)


def test_two_routers_on_one_store_compute_each_epoch_once_and_both_serve_it(
    two_routers: tuple[Service, Service],
) -> None:
    rng = random.Random(15)
    server_of: dict[str, int] = {}  # request id -> which router answered it
    with httpx.Client(timeout=10.0) as client:
        for i in range(900):
            router = two_routers[i % 2]
            server_of[visit(client, router.url, f"user-{rng.randrange(300)}", rng)["request_id"]] = i % 2
        path = store_path(two_routers[0])
        with sqlite3.connect(path) as conn:
            latest = conn.execute("SELECT MAX(epoch) FROM weight_epochs").fetchone()[0]
        for router in two_routers:  # both serve the latest epoch from their next poll

            def on_latest(router: Service = router) -> bool:
                return bool(bandit_health(client, router)["epoch"] >= latest)

            wait_until(on_latest, what="both routers on the latest epoch")
            assert bandit_health(client, router)["status"] == "current"
    for router in two_routers:
        router.stop()  # flushes every queued exposure
    with sqlite3.connect(path) as conn:
        epochs = {
            row[1]: StoredEpoch.from_row(row)
            for row in conn.execute("SELECT * FROM weight_epochs WHERE phase = 1 ORDER BY epoch")
        }
        exposures = conn.execute(
            "SELECT request_id, user_id, assigned_variant, propensity, epoch FROM exposures WHERE phase = 1"
        ).fetchall()
    assert len(exposures) == 900
    # Versioned rows 0..n, each computed once (the primary key), by one of the two processes.
    assert list(epochs) == list(range(len(epochs))) and len(epochs) >= 4
    assert {e.computed_by.rsplit(":", 1)[1] for e in epochs.values()} <= {str(r.pid) for r in two_routers}
    per_epoch: dict[int, int] = defaultdict(int)
    for _, _, _, _, epoch in exposures:
        per_epoch[epoch] += 1
    # One epoch per interval: an epoch ends only once it has served INTERVAL exposures (late polls add a few more).
    assert all(per_epoch[e] >= INTERVAL for e in epochs if e < max(epochs))
    assert len(epochs) <= 900 // INTERVAL + 1
    # Both processes served from the shared epochs.
    served_by: dict[int, set[int]] = defaultdict(set)
    for request_id, _, _, _, epoch in exposures:
        served_by[server_of[request_id]].add(epoch)
    assert len(served_by) == 2 and all(len(seen) >= len(epochs) - 1 for seen in served_by.values())
    # Every logged propensity is the probability recomputed from the logged epoch's weights; they sum to 1.
    for _, _, variant, propensity, epoch in exposures:
        row = epochs[epoch]
        assert propensity == row.points[row.variants.index(variant)] / 10_000
    assert all(sum(row.points) == 10_000 and min(row.points) >= 500 for row in epochs.values())
    # Sticky per user within an epoch, whichever router answered.
    variants_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    for _, user, variant, _, epoch in exposures:
        variants_of[(user, epoch)].add(variant)
    assert all(len(seen) == 1 for seen in variants_of.values())
    # The bandit moved traffic toward the variant that earns more.
    last = epochs[max(epochs)]
    assert last.points[last.variants.index("model_b")] >= 9000


class UnreadableEpochs(SQLiteBackend):
    """A SQLite backend whose epoch reads fail with the engine's own I/O error while `failing` is set."""

    failing = False

    def latest_epoch(self, phase: int) -> StoredEpoch | None:
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        return super().latest_epoch(phase)


def test_a_router_that_cannot_read_the_epochs_keeps_its_weights_and_says_so(
    tmp_path: Path, fakes: dict[str, str]
) -> None:
    config_path = write_config(tmp_path / "experiment.yaml", thompson(fakes, update_exposures=5))
    backend = UnreadableEpochs(tmp_path / "outcomes.sqlite3")
    settings = RouterSettings(config_path=config_path, results_dir=tmp_path, health_interval=0.1)
    with serve(create_app(settings, store=OutcomeStore(backend))) as url, httpx.Client(timeout=10.0) as client:
        before = client.get(f"{url}/recommend/u1").json()
        assert bandit_health_of(client, url)["status"] == "current"
        backend.failing = True
        wait_until(lambda: bandit_health_of(client, url)["status"] == "stale", what="the keeper to notice")
        health = client.get(f"{url}/health").json()
        assert health["status"] == "degraded" and "disk I/O error" in health["bandit"]["error"]
        assert health["bandit"]["epoch"] == 0 and health["bandit"]["weights"] == {"model_a": 0.5, "model_b": 0.5}
        again = client.get(f"{url}/recommend/u1")
        assert again.status_code == 200 and again.json()["variant"] == before["variant"]  # same weights, same user
        backend.failing = False
        wait_until(lambda: bandit_health_of(client, url)["status"] == "current", what="the keeper to recover")
        assert client.get(f"{url}/health").json()["bandit"]["stale_since"] is None


def bandit_health_of(client: httpx.Client, url: str) -> dict[str, Any]:
    bandit = json.loads(client.get(f"{url}/health").content)["bandit"]
    assert isinstance(bandit, dict)
    return bandit
