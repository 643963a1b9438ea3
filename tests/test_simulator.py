"""The traffic simulator: reproducible, bounded, honest about errors, and clicking by ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from abtest.simulator import SimulationConfig, run_simulation
from recsys.clicks import ClickModel
from recsys.data import load_dataset
from tests.router.conftest import RunningRouter, running_router, settings_for
from tests.support.fake_model import FakeModelControl, serve_fake_model


@pytest.fixture
def controls() -> dict[str, FakeModelControl]:
    return {"model_a": FakeModelControl(), "model_b": FakeModelControl()}


@pytest.fixture
def router(tmp_path: Path, controls: dict[str, FakeModelControl]) -> Iterator[RunningRouter]:
    """The real router (hash, 50/50) in front of two stand-in model servers."""
    with (
        serve_fake_model("model_a", controls["model_a"]) as url_a,
        serve_fake_model("model_b", controls["model_b"]) as url_b,
    ):
        raw = {
            "experiment": "sim",
            "strategy": "hash",
            "salt": "sim-1",
            "variants": [
                {"name": "model_a", "url": url_a, "weight": 1},
                {"name": "model_b", "url": url_b, "weight": 1},
            ],
            "timeouts": {"connect": 0.5, "read": 0.5, "pool": 0.5},
        }
        with running_router(settings_for(tmp_path, raw)) as running:
            yield running


def test_simulation_is_reproducible_whatever_the_concurrency(router: RunningRouter) -> None:
    data = load_dataset("synthetic")
    one = run_simulation(SimulationConfig(url=router.url, users=200, requests=400, concurrency=1, seed=3), data)
    many = run_simulation(SimulationConfig(url=router.url, users=200, requests=400, concurrency=8, seed=3), data)
    other = run_simulation(SimulationConfig(url=router.url, users=200, requests=400, concurrency=8, seed=4), data)
    assert one.exposures == many.exposures == 400
    assert one.exposures_by_variant == many.exposures_by_variant
    assert one.clicks_by_variant == many.clicks_by_variant
    assert one.users == many.users
    assert (other.users, other.clicks_by_variant) != (one.users, one.clicks_by_variant)
    assert one.clicks_sent == one.clicks_accepted > 0


def test_simulation_counts_match_what_the_router_stored(router: RunningRouter) -> None:
    summary = run_simulation(SimulationConfig(url=router.url, users=100, requests=300, concurrency=4, seed=5))
    stored = dict(router.rows("SELECT variant, COUNT(*) FROM exposures GROUP BY variant"))
    clicks = dict(router.rows("SELECT variant, COUNT(*) FROM feedback WHERE event = 'click' GROUP BY variant"))
    assert stored == dict(summary.exposures_by_variant)
    assert clicks == dict(summary.clicks_by_variant)


def test_simulation_stops_at_its_deadline(router: RunningRouter, controls: dict[str, FakeModelControl]) -> None:
    for control in controls.values():
        control.delay = 0.2
    summary = run_simulation(
        SimulationConfig(url=router.url, users=50, requests=100_000, concurrency=2, seed=1, max_seconds=1.0)
    )
    assert summary.stopped_by == "deadline"
    assert 0 < summary.requests_sent < 50
    assert summary.elapsed_seconds < 3.0


def test_simulation_counts_errors_and_sends_no_clicks_for_them(
    router: RunningRouter, controls: dict[str, FakeModelControl]
) -> None:
    controls["model_b"].status = 500
    summary = run_simulation(SimulationConfig(url=router.url, users=100, requests=200, concurrency=4, seed=2))
    assert set(summary.statuses) == {200, 502}
    assert summary.exposures == 200
    assert "model_b" not in summary.clicks_by_variant
    assert summary.clicks_by_variant["model_a"] > 0


def test_click_model_rewards_affinity_and_the_top_of_the_list() -> None:
    model = ClickModel()
    liked, disliked = np.full(10, 2.0), np.full(10, -2.0)
    assert (model.click_probabilities(liked, 0.0) > model.click_probabilities(disliked, 0.0)).all()
    by_position = model.click_probabilities(liked, 0.0)
    assert (np.diff(by_position) < 0).all()
    # a click-happy user clicks more on the same list: the source of within-user correlation
    assert (model.click_probabilities(liked, 1.0) > by_position).all()


def test_click_rate_tracks_true_affinity_in_the_synthetic_data() -> None:
    data = load_dataset("synthetic")
    assert data.truth is not None
    model, rng = ClickModel(), np.random.default_rng(0)
    affinity = data.truth.affinity(0, np.arange(data.n_items))
    best, worst = np.argsort(-affinity)[:10], np.argsort(affinity)[:10]
    clicks_best = sum(model.sample_clicks(rng, affinity[best], 0.0).sum() for _ in range(2000))
    clicks_worst = sum(model.sample_clicks(rng, affinity[worst], 0.0).sum() for _ in range(2000))
    assert clicks_best > 10 * max(1, clicks_worst)
