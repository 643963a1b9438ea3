"""Interleaving through the whole product on loopback: real model servers, the real router switched from its
A/B phase to `interleave` by a reload (SIGHUP), the simulator's clicks, and the report's verdict, which must name
the model the simulated ground truth prefers (recsys.truth)."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import yaml

from abtest.processes import free_port
from abtest.simulator import SimulationConfig, SimulationSummary, run_simulation
from abtest.stack import DEFAULT_CONFIG, StackConfig, running_stack
from recsys.data import load_dataset
from recsys.recommender import FactorModel
from recsys.training import MODEL_NAMES, load_or_train, trainer
from recsys.truth import TruthPreference, ground_truth_preference
from router.report import Report
from tests.report.store import report_of, write_reports_in

USERS = 400
INTERLEAVED_REQUESTS = 8000  # request ids (which seed the merge) are random: enough for a decisive run


@pytest.fixture(scope="module")
def stack_config(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    folder = tmp_path_factory.mktemp("interleaving")
    config = folder / "experiment.yaml"
    config.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8"), encoding="utf-8")  # the shipped A/B config
    return StackConfig(
        config=config,
        router_port=free_port(),
        model_ports={"model_a": free_port(), "model_b": free_port()},
        results_dir=folder / "results",
        models_dir=models_dir,
    )


def _wait_for_strategy(url: str, strategy: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/config", timeout=5).json()["strategy"] != strategy:
        if time.monotonic() > deadline:
            raise AssertionError(f"the router did not switch to {strategy} within {timeout:.0f}s")
        time.sleep(0.05)  # a poll with a deadline, not a synchronisation sleep


@pytest.fixture(scope="module")
def simulated(stack_config: StackConfig) -> tuple[SimulationSummary, SimulationSummary]:
    """300 A/B visits, then the config switched to interleave and reloaded (SIGHUP), then interleaved visits."""
    with running_stack(stack_config, out=io.StringIO()) as stack:
        url = stack_config.router_url
        ab = run_simulation(SimulationConfig(url=url, users=USERS, requests=300, concurrency=8, seed=3))
        raw = yaml.safe_load(stack_config.config.read_text(encoding="utf-8"))
        raw["strategy"] = "interleave"
        stack_config.config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        stack.processes["router"].send_signal(signal.SIGHUP)
        _wait_for_strategy(url, "interleave")
        interleaved = run_simulation(
            SimulationConfig(url=url, users=USERS, requests=INTERLEAVED_REQUESTS, concurrency=8, seed=11)
        )
    return ab, interleaved


@pytest.fixture(scope="module")
def truth(stack_config: StackConfig) -> TruthPreference:
    """The ground truth's preference between the two models the stack served, on the simulated population."""
    models: dict[str, FactorModel] = {
        name: load_or_train(trainer(name), stack_config.models_dir, data_spec="synthetic") for name in MODEL_NAMES
    }
    return ground_truth_preference(models, load_dataset())


@pytest.fixture(scope="module")
def report(simulated: tuple[SimulationSummary, SimulationSummary], stack_config: StackConfig) -> Report:
    return report_of(stack_config.results_dir / "outcomes.sqlite3", phase=2)


def test_the_reload_started_an_interleaving_phase_and_every_answer_was_interleaved(
    simulated: tuple[SimulationSummary, SimulationSummary], stack_config: StackConfig
) -> None:
    ab, interleaved = simulated
    assert set(ab.exposures_by_variant) <= {"model_a", "model_b"}
    assert interleaved.statuses == {200: INTERLEAVED_REQUESTS}
    assert dict(interleaved.exposures_by_variant) == {"interleaved": INTERLEAVED_REQUESTS}
    assert interleaved.clicks_sent == interleaved.clicks_accepted > 0
    with sqlite3.connect(stack_config.results_dir / "outcomes.sqlite3") as db:
        phases = db.execute("SELECT phase, strategy, COUNT(*) FROM exposures GROUP BY phase, strategy").fetchall()
        merged = db.execute("SELECT items, teams, failed_variant FROM exposures WHERE phase = 2").fetchall()
        credited = dict(db.execute("SELECT variant, COUNT(*) FROM feedback WHERE phase = 2 GROUP BY variant"))
    assert phases == [(1, "hash", ab.exposures), (2, "interleave", INTERLEAVED_REQUESTS)]
    for items, teams, failed in merged:
        assert len(json.loads(items)) == len(json.loads(teams)) == 10 and failed is None
        assert set(json.loads(teams)) == {"model_a", "model_b"}  # with k = 10 both teams place items
    assert set(credited) == {"model_a", "model_b"}  # every click is on a shown item: credited to a team
    assert sum(credited.values()) == interleaved.clicks_accepted


def test_the_interleaving_verdict_names_the_model_the_ground_truth_prefers(
    report: Report, truth: TruthPreference
) -> None:
    assert truth.preferred is not None
    other = next(name for name in MODEL_NAMES if name != truth.preferred)
    assert report.interleaving is not None
    preference = report.interleaving.preference
    assert preference.users_with_click > 100 and preference.degraded.degraded == 0
    assert preference.significant, preference.verdict
    assert preference.verdict.startswith(f"users prefer {truth.preferred}'s recommendations: Δ = ")
    assert report.interleaving.verdict.startswith(f"users prefer {truth.preferred}'s recommendations at any")
    assert other not in report.interleaving.verdict.split(":")[0]


def test_the_report_files_of_the_interleaving_phase(
    simulated: tuple[SimulationSummary, SimulationSummary], stack_config: StackConfig
) -> None:
    write_reports_in(stack_config.results_dir, phase=2)
    markdown = (stack_config.results_dir / "report.md").read_text(encoding="utf-8")
    data = json.loads((stack_config.results_dir / "report.json").read_text(encoding="utf-8"))
    assert markdown.startswith("# Interleaving results: rec-ab, phase 2")
    assert data["strategy"] == "interleave" and data["interleaving"]["verdict"] in markdown
    assert data["variants"][0]["exposures"] == INTERLEAVED_REQUESTS
