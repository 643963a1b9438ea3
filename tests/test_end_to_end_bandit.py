"""A bandit phase through the real stack: real model servers, the real router under Thompson sampling, the
simulator clicking by the ground truth, the report. Traffic must move toward the model the ground truth prefers."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import yaml

from abtest.bench.bandit import ground_truth_population
from abtest.processes import free_port
from abtest.simulator import SimulationConfig, run_simulation
from abtest.stack import DEFAULT_CONFIG, StackConfig, running_stack
from recsys.data import load_dataset
from recsys.training import MODEL_NAMES, load_or_train, trainer
from router.report import build_report
from router.store import SQLiteBackend


def test_thompson_through_the_real_stack_moves_traffic_to_the_truly_better_model(
    models_dir: Path, tmp_path: Path
) -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["bandit"] = {"update_exposures": 300, "poll_seconds": 0.2}
    config_path = tmp_path / "bandit.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stack_config = StackConfig(
        config=config_path,
        router_port=free_port(),
        model_ports={"model_a": free_port(), "model_b": free_port()},
        results_dir=tmp_path / "results",
        models_dir=models_dir,
        strategy="thompson",
    )
    with running_stack(stack_config, out=io.StringIO()):
        summary = run_simulation(
            SimulationConfig(url=stack_config.router_url, users=400, requests=4000, concurrency=4, seed=15)
        )
    assert summary.statuses == {200: 4000}
    # The ground truth: each model's CTR over the simulated population, whoever was served what.
    data = load_dataset("synthetic")
    models = [load_or_train(trainer(name), models_dir, data_spec="synthetic") for name in MODEL_NAMES]
    truth = ground_truth_population(data, models, users=400, seed=15).true_ctr()
    better = MODEL_NAMES[int(truth.argmax())]
    assert abs(truth[0] - truth[1]) > 0.02, f"the ground truth barely separates the models: {truth}"
    path = stack_config.results_dir / "outcomes.sqlite3"
    with sqlite3.connect(path) as conn:
        shares = conn.execute(
            "SELECT epoch, AVG(assigned_variant = ?), COUNT(*) FROM exposures GROUP BY epoch ORDER BY epoch", (better,)
        ).fetchall()
        last_weights = conn.execute("SELECT weights_json FROM weight_epochs ORDER BY epoch DESC LIMIT 1").fetchone()
    assert len(shares) >= 5 and shares[0][0] == 0
    assert abs(shares[0][1] - 0.5) < 0.15  # epoch 0: an even split
    assert shares[-2][1] > 0.75 and shares[-1][1] > 0.75  # the last epochs serve mostly the better model
    assert summary.exposures_by_variant[better] > 0.6 * 4000
    tenths = summary.shares_by_tenth(better)  # what the simulator itself saw: the share grows over the run
    assert tenths[0] is not None and tenths[-1] is not None and tenths[-1] > tenths[0] + 0.2
    weights = yaml.safe_load(last_weights[0])
    assert weights["points"][weights["variants"].index(better)] >= 7500
    report = build_report(SQLiteBackend(path))
    assert report.adaptive is not None and report.adaptive.summary is not None
    best = report.adaptive.summary.probability_best
    assert best is not None and best[report.adaptive.variants.index(better)] > 0.95
    assert report.adaptive.summary.rewards.best_variant == better
