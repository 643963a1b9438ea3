"""Shadow traffic end to end: the real model servers, a third one as the shadow, the router, the simulator, and
`abtest report --truth`; the report's shadow section must agree with the ground truth.

model_c is model_a's code (`python -m recsys.server --model model_a`) on its own port, so against live model_a
its lists must be identical, and against live model_b its lists must be worse by the ground truth exactly as
much as the truth says model_a's lists are worse than model_b's for those users. model_b_self points at
model_b's own URL: against live model_b it is the self-comparison that measures model_b's noise floor
(deterministic: 0); against live model_a it is model_b judged on model_a's users, the mirror image.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from abtest.cli import main as abtest
from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from abtest.simulator import SimulationConfig, SimulationSummary, run_simulation
from abtest.stack import StackConfig, running_stack
from recsys.data import load_dataset
from recsys.recommender import FactorModel
from recsys.truth import ListAffinity, ground_truth_preference

K = 10


@pytest.fixture(scope="module")
def shadowed_run(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2,000 simulated visits through the stack with both shadows at fraction 1.0; then `abtest report --truth`."""
    folder = tmp_path_factory.mktemp("shadow-e2e")
    shadow_port = free_port()
    shadow = start_service(
        python_module("recsys.server", "--model", "model_a", "--port", str(shadow_port)),
        env={"MODELS_DIR": str(models_dir)},
        log=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{shadow_port}", shadow, timeout=60)
        stack_config = StackConfig(
            config=folder / "experiment.yaml",
            router_port=free_port(),
            model_ports={"model_a": free_port(), "model_b": free_port()},
            results_dir=folder / "results",
            models_dir=models_dir,
        )
        raw = {
            "experiment": "rec-ab",
            "strategy": "hash",
            "salt": "shadow-e2e",
            "variants": [{"name": n, "url": f"http://{n}:8000", "weight": 50} for n in ("model_a", "model_b")],
            "shadow": [
                {"name": "model_c", "url": f"http://127.0.0.1:{shadow_port}", "fraction": 1.0},
                {"name": "model_b_self", "url": stack_config.model_url("model_b"), "fraction": 1.0},
            ],
        }
        stack_config.config.write_text(yaml.safe_dump(raw, sort_keys=False))
        with running_stack(stack_config, out=io.StringIO()):
            summary = run_simulation(
                SimulationConfig(url=stack_config.router_url, users=300, requests=2000, concurrency=8, seed=5)
            )
    finally:
        stop_service(shadow)
    assert abtest(["report", "--results-dir", str(stack_config.results_dir), "--truth", "", "--quiet"]) == 0
    report = json.loads((stack_config.results_dir / "report.json").read_text())
    return {"summary": summary, "report": report, "results": stack_config.results_dir}


def comparison(report: dict[str, Any], shadow: str, variant: str) -> dict[str, Any]:
    summary = next(s for s in report["shadow"]["shadows"] if s["shadow"] == shadow)
    return dict(next(c for c in summary["comparisons"] if c["variant"] == variant))


def test_every_served_request_was_copied_to_both_shadows_and_stored(shadowed_run: dict[str, Any]) -> None:
    summary: SimulationSummary = shadowed_run["summary"]
    assert summary.statuses == {200: 2000}
    with sqlite3.connect(shadowed_run["results"] / "outcomes.sqlite3") as db:
        calls = dict(db.execute("SELECT shadow, COUNT(*) FROM shadow_calls GROUP BY shadow").fetchall())
        orphans = db.execute(
            "SELECT COUNT(*) FROM shadow_calls s LEFT JOIN exposures e USING (request_id) WHERE e.id IS NULL"
        ).fetchone()[0]
    # Off the user's path, a burst may fill a shadow's queue (dropped, counted); at concurrency 8 none should.
    assert calls == {"model_c": 2000, "model_b_self": 2000}
    assert orphans == 0
    report = shadowed_run["report"]
    assert [s["shadow"] for s in report["shadow"]["shadows"]] == ["model_b_self", "model_c"]
    for shadow in report["shadow"]["shadows"]:
        assert shadow["sample_rate"] == 1.0 and shadow["unmatched"] == 0
        for c in shadow["comparisons"]:
            assert c["availability"]["value"] == 1.0 and c["errors"] == {}


def test_the_same_model_as_a_shadow_gives_identical_lists(shadowed_run: dict[str, Any]) -> None:
    same = comparison(shadowed_run["report"], "model_c", "model_a")
    lists = same["lists"]
    assert lists["identical"] == lists["requests"] == shadowed_run["summary"].exposures_by_variant["model_a"]
    for name in ("jaccard", "rbo", "kendall_tau"):
        assert lists[name]["value"] == pytest.approx(1.0), name
    assert lists["click_coverage"]["value"] == 1.0  # every clicked live item is in the identical shadow list
    assert same["affinity"]["difference"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert not same["self_comparison"]  # another URL: the report cannot know it is the same model


def test_the_shadow_section_agrees_with_the_ground_truth(shadowed_run: dict[str, Any], models_dir: Path) -> None:
    data = load_dataset(None)
    models = {name: FactorModel.load(models_dir / name) for name in ("model_a", "model_b")}
    truth = ListAffinity(data)
    # The truth's verdict, independently of the router: model_a's lists vs model_b's for model_b's users.
    with sqlite3.connect(shadowed_run["results"] / "outcomes.sqlite3") as db:
        served = db.execute("SELECT user_id FROM exposures WHERE variant = 'model_b' AND status = 200").fetchall()
    per_request = [
        (truth(user, models["model_a"].recommend(user, K).items) or 0.0)
        - (truth(user, models["model_b"].recommend(user, K).items) or 0.0)
        for (user,) in served
    ]
    expected = float(np.mean(per_request))
    preferred = ground_truth_preference(models, data, k=K).preferred

    against_b = comparison(shadowed_run["report"], "model_c", "model_b")
    difference = against_b["affinity"]["difference"]
    assert difference["value"] == pytest.approx(expected, rel=1e-9)  # the same number, measured through the router
    assert preferred == "model_b" and expected < 0  # the truth prefers model_b, and its lists score higher
    assert difference["high"] < 0, "the report's interval does not show model_c's lists as worse"
    assert against_b["lists"]["identical"] < against_b["lists"]["requests"]
    assert against_b["lists"]["jaccard"]["value"] < 1.0
    assert against_b["lists"]["click_coverage"]["value"] < 1.0  # model_b's clicked items model_a did not rank
    mirror = comparison(shadowed_run["report"], "model_b_self", "model_a")["affinity"]["difference"]
    assert mirror["low"] > 0, "model_b's lists, shadowed on model_a's users, should score higher"


def test_the_noise_floor_is_measured_and_both_models_are_deterministic(shadowed_run: dict[str, Any]) -> None:
    floors = {f["variant"]: f for f in shadowed_run["report"]["shadow"]["noise_floors"]}
    assert floors["model_b"]["floor"]["deterministic"] is True and "model_b_self" in floors["model_b"]["source"]
    assert comparison(shadowed_run["report"], "model_b_self", "model_b")["self_comparison"] is True
    assert floors["model_a"]["floor"]["deterministic"] is True and "repeated requests" in floors["model_a"]["source"]
    markdown = (shadowed_run["results"] / "report.md").read_text()
    assert "deterministic: noise floor 0" in markdown and "Shadow traffic: the ground truth" in markdown
