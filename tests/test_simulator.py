"""The traffic simulator: reproducible, bounded, honest about errors, and clicking by ground truth."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request, Response
from httpx_aiohttp import AiohttpTransport

from abtest.cli import main
from abtest.processes import free_port
from abtest.simulator import (
    RouterUnreachableError,
    SimulationConfig,
    check_url,
    run_simulation,
    transport_error_kind,
)
from recsys.clicks import ClickModel
from recsys.data import load_dataset
from tests.router.conftest import RunningRouter, running_router, settings_for
from tests.support.fake_model import FakeModelControl, serve_fake_model
from tests.support.servers import serve


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
            # Generous: these tests count answers, and a loaded 2-core machine must not turn one into a 504.
            "timeouts": {"connect": 5.0, "read": 5.0, "pool": 5.0},
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
    config = SimulationConfig(url=router.url, users=50, requests=100_000, concurrency=2, seed=1, max_seconds=1.0)
    summary = run_simulation(config)
    assert summary.stopped_by == "deadline"
    # Each worker's requests take >= 0.2 s one after the other (a load can only slow them), so within the
    # 1 s deadline each starts at most 1 / 0.2 + 1 of them: the count proves the deadline stopped it.
    assert 0 < summary.requests_sent <= config.concurrency * (int(config.max_seconds / 0.2) + 1)
    # It returns once the requests in flight at the deadline end: each is bounded by the client timeout.
    assert config.max_seconds <= summary.elapsed_seconds < config.max_seconds + config.timeout


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


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does) but never answers: every request times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
def test_transport_errors_are_named_by_their_cause(transport: str, silent_port: int) -> None:
    """httpx-aiohttp calls a refused connection ConnectTimeout; the cause, not the class, names the error."""

    def kind_of(url: str) -> str:
        async def fetch() -> str:
            wire = AiohttpTransport(trust_env=False) if transport == "aiohttp" else None
            async with httpx.AsyncClient(transport=wire, timeout=0.5) as client:
                try:
                    await client.get(url)
                except httpx.TransportError as exc:
                    return transport_error_kind(exc)
            return "answered"

        return asyncio.run(fetch())

    assert kind_of(f"http://127.0.0.1:{free_port()}/health") == "connection refused"
    assert kind_of("http://abtest-no-such-host.invalid/health") == "name not resolved"
    assert kind_of(f"http://127.0.0.1:{silent_port}/health") == "timed out"


def test_unreachable_router_fails_at_once_naming_why(silent_port: int) -> None:
    cases = {
        f"http://127.0.0.1:{free_port()}": "connection refused",
        "http://abtest-no-such-host.invalid:8080": "name not resolved",
        f"http://127.0.0.1:{silent_port}": "timed out",
    }
    for url, reason in cases.items():
        with pytest.raises(RouterUnreachableError) as caught:
            run_simulation(SimulationConfig(url=url, requests=20_000, timeout=0.5))
        assert str(caught.value) == f"router unreachable at {url} ({reason})"


def test_a_server_that_is_not_the_router_gets_one_probe_and_nothing_else() -> None:
    seen: list[str] = []
    other = FastAPI()

    @other.get("/{path:path}")
    async def anything(request: Request, path: str) -> Response:
        seen.append(request.url.path)
        return Response(b'{"detail": "Not Found"}', status_code=404, media_type="application/json")

    with serve(other) as url, pytest.raises(RouterUnreachableError, match=r"GET /health answered HTTP 404"):
        run_simulation(SimulationConfig(url=url, requests=1000))
    assert seen == ["/health"]


def test_simulate_command_refuses_a_url_without_scheme_and_an_unreachable_router(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["simulate", "--url", "localhost:8080"])
    assert usage.value.code == 2
    assert "not an http:// or https:// URL (try http://localhost:8080)" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["simulate", "--url", url, "--quiet"]) == 2
    assert f"router unreachable at {url} (connection refused); nothing was sent" in capsys.readouterr().err
    assert check_url("https://router.example/") == "https://router.example"


def test_summary_names_ctr_as_the_report_does_and_says_who_visited(router: RunningRouter) -> None:
    summary = run_simulation(SimulationConfig(url=router.url, users=300, requests=600, concurrency=4, seed=5))
    # The report's CTR: exposures with at least one click / exposures, per variant, from the store.
    stored = router.rows(
        "SELECT e.variant, COUNT(*), SUM(EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = e.request_id "
        "AND f.event = 'click')) FROM exposures e GROUP BY e.variant"
    )
    assert stored and {variant: clicked / shown for variant, shown, clicked in stored} == {
        variant: summary.ctr(variant) for variant in summary.exposures_by_variant
    }
    for variant in summary.exposures_by_variant:
        ctr, per_exposure = summary.ctr(variant), summary.clicks_per_exposure(variant)
        assert ctr is not None and per_exposure is not None and ctr <= per_exposure  # a list can get 2 clicks
        assert (
            f"  {variant}: {summary.exposures_by_variant[variant]} exposures, CTR {100 * ctr:.1f}% (exposures with "
            f"at least one click), {per_exposure:.3f} clicks per exposure" in summary.text()
        )
    assert f"{len(summary.users)} of the 300 simulated users visited" in summary.text()
    assert len(summary.users) < 300  # visits follow activity: some users never come, and the line says so
    assert summary.as_dict()["population"] == 300
    assert not re.search(r"\d\.\d{6,}", str(summary.as_dict())), summary.as_dict()  # no float noise


def test_identical_models_are_not_called_truly_different(router: RunningRouter) -> None:
    """Both stand-ins serve the same list to a user: the ground truth must not prefer either."""
    summary = run_simulation(SimulationConfig(url=router.url, users=300, requests=1500, concurrency=4, seed=8))
    assert summary.ground_truth_prefers() is None
    assert "the lists served were not truly different beyond chance (99%)" in summary.text()
