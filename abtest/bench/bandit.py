"""`abtest bench bandit`: Thompson sampling and epsilon-greedy against a fixed 50/50 split, on ground truth.

The default population (the synthetic data set, 1,000 simulated users drawn as `abtest.simulator` draws
them) visits 20,000 times. Each model's top-10 list for each user comes from the trained models; whether
the user clicks comes from `recsys.clicks.ClickModel` over the user's *true* affinities, so each model's
true CTR (share of exposures with at least one click) is known exactly. All strategies see the same
traffic: the same visits in the same order and the same random number per visit deciding the click.

Regret is the expected clicks lost against always serving the true best model:
sum over visits of P(click | user, best) - P(click | user, served). Issue 15's target: Thompson's regret
<= 1/3 of the 50/50 split's. Replication 0 is "the default simulation"; the others (new traffic, new salt)
show the spread.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.clicks import ClickModel
from recsys.data import Dataset, LatentTruth, load_dataset
from recsys.recommender import FactorModel, top_k_rows
from recsys.training import MODEL_NAMES, load_or_train, trainer
from router.bandit import (
    DEFAULT_NODES,
    EpsilonGreedySettings,
    ThompsonSettings,
    UpdateInterval,
    assign_points,
    epoch_point,
    traffic_points,
)
from router.report.ope import PolicyValue, fixed_policy_values
from router.strategies import POINTS

Policy = ThompsonSettings | EpsilonGreedySettings | tuple[int, ...]  # a tuple: fixed points per variant


@dataclass(frozen=True)
class SimulatedRuns:
    """Logged exposures of several independent runs, arrays of shape (runs, exposures).

    `unit` is the visiting user; `expected` the click probability of the served variant for that user
    (ground truth); `points` the weights each epoch used, shape (runs, epochs, variants).
    """

    unit: NDArray[np.intp]
    variant: NDArray[np.intp]
    propensity: NDArray[np.float64]
    reward: NDArray[np.float64]
    expected: NDArray[np.float64]
    epoch: NDArray[np.int64]
    points: NDArray[np.int64]


def simulate_policy(
    policy: Policy,
    success: NDArray[np.float64],
    visits: NDArray[np.intp],
    uniforms: NDArray[np.float64],
    unit_points: NDArray[np.int64],
    *,
    epoch_exposures: int,
    nodes: int = DEFAULT_NODES,
) -> SimulatedRuns:
    """Run `policy` over the given traffic, all runs at once, one epoch (`epoch_exposures` visits) at a time.

    success: (users, variants) click probability; visits: (runs, exposures) the visiting user; uniforms:
    (runs, exposures) the draw that decides the click (clicked = uniform < success); unit_points: each
    user's integer hash point, (runs, epochs, users) as `router.bandit.epoch_point` draws them, or (runs,
    users) for one point in all epochs. `success` may also be (runs, users, variants): a population per run.
    Weights for epoch e come from the outcomes of epochs < e.
    """
    runs, exposures = visits.shape
    count = success.shape[-1]
    variant = np.zeros((runs, exposures), np.intp)
    propensity = np.zeros((runs, exposures))
    reward = np.zeros((runs, exposures))
    expected = np.zeros((runs, exposures))
    epoch = np.zeros((runs, exposures), np.int64)
    served = np.zeros((runs, count))
    earned = np.zeros((runs, count))
    history = []
    for number, start in enumerate(range(0, exposures, epoch_exposures)):
        window = slice(start, start + epoch_exposures)
        if isinstance(policy, tuple):
            points = np.broadcast_to(np.asarray(policy, np.int64), (runs, count))
        else:
            points = traffic_points(policy, served, earned, nodes=nodes)
        history.append(points)
        users = visits[:, window]
        hashed = unit_points[:, number] if unit_points.ndim == 3 else unit_points
        chosen = assign_points(points, np.take_along_axis(hashed, users, axis=1))
        per_run = success[np.arange(runs)[:, None], users] if success.ndim == 3 else success[users]
        probability = np.take_along_axis(per_run, chosen[..., None], axis=-1)[..., 0]
        clicked = uniforms[:, window] < probability
        variant[:, window], epoch[:, window] = chosen, number
        propensity[:, window] = np.take_along_axis(points, chosen, axis=1) / POINTS
        reward[:, window], expected[:, window] = clicked, probability
        one_hot = chosen[..., None] == np.arange(count)
        served += one_hot.sum(axis=1)
        earned += (one_hot & clicked[..., None]).sum(axis=1)
    return SimulatedRuns(visits, variant, propensity, reward, expected, epoch, np.stack(history, axis=1))


@dataclass(frozen=True)
class Population:
    """The simulated users and, for each, the true probability that each model's list gets a click."""

    user_ids: list[str]
    visit_probability: NDArray[np.float64]
    success: NDArray[np.float64]  # (users, models): P(at least one click on the model's top-k)

    def true_ctr(self) -> NDArray[np.float64]:
        """Each model's CTR per exposure over the visit distribution: what "always serve it" earns."""
        return np.asarray(self.visit_probability @ self.success, dtype=np.float64)


def ground_truth_population(
    data: Dataset, models: list[FactorModel], *, users: int = 1000, seed: int = 7, k: int = 10
) -> Population:
    """Users drawn as `abtest.simulator` draws them (same seed, same order of draws), with true click odds."""
    if not isinstance(data.truth, LatentTruth):
        raise ValueError("the bandit benchmark needs the synthetic data set's latent ground truth")
    click_model = ClickModel()
    rng = np.random.default_rng(seed)
    count = min(users, data.n_users)
    rows = np.sort(rng.choice(data.n_users, size=count, replace=False))
    activity = rng.lognormal(0.0, 1.0, count)
    click_propensity = click_model.draw_propensities(rng, count)
    affinity = data.truth.all_affinities()[rows]
    success = np.empty((count, len(models)))
    for column, model in enumerate(models):
        scores = model.score_matrix(rows).astype(np.float64)
        seen = model.seen[rows].nonzero()
        scores[seen] = -np.inf
        top = top_k_rows(scores, k)
        shown = np.take_along_axis(affinity, top, axis=1)
        for index in range(count):
            p = click_model.click_probabilities(shown[index], float(click_propensity[index]))
            success[index, column] = 1.0 - np.prod(1.0 - p)
    return Population([str(u) for u in data.user_ids[rows]], activity / activity.sum(), success)


def _traffic(
    population: Population, requests: int, seed: int, replications: int, epochs: int
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.int64]]:
    """Visits, click draws, and every user's real hash point per epoch (the router's `epoch_point`)."""
    visits = np.empty((replications, requests), np.intp)
    uniforms = np.empty((replications, requests))
    points = np.empty((replications, epochs, len(population.user_ids)), np.int64)
    for run in range(replications):
        rng = np.random.default_rng((seed, run))
        visits[run] = rng.choice(len(population.user_ids), size=requests, p=population.visit_probability)
        uniforms[run] = rng.random(requests)
        for epoch in range(epochs):
            points[run, epoch] = [epoch_point(f"bench-bandit-{run}", epoch, user) for user in population.user_ids]
    return visits, uniforms, points


def _interval(value: PolicyValue, name: str) -> dict[str, float] | None:
    estimate = getattr(value, name)
    if estimate is None:
        return None
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high}


def ope_coverage(design: str, min_share: float, *, runs: int = 600, seed: int = 1) -> dict[str, Any]:
    """How often the 95% CIs of "always X" cover the truth over `runs` Thompson runs of 20,000 exposures.

    design "independent": CTR 0.10 vs 0.13, every exposure a new user. "returning_users": each run draws
    1,000 users (lognormal visit rates, click propensities logit-normal around 0.10 / 0.13), hashed afresh
    per epoch, CIs clustered by user; the truth is the population CTR (Gauss-Hermite).
    """
    exposures, epoch_exposures = 20_000, 1000
    base = np.log(np.array([0.10, 0.13]) / (1 - np.array([0.10, 0.13])))
    rng = np.random.default_rng(seed)
    if design == "independent":
        truth = 1 / (1 + np.exp(-base))
        success = np.broadcast_to(truth, (exposures, 2)).copy()
        visits = np.broadcast_to(np.arange(exposures), (runs, exposures)).copy()
        unit_points = rng.integers(0, POINTS, (runs, exposures))
    elif design == "returning_users":
        users = 1000
        rates = rng.lognormal(0.0, 1.0, (runs, users))
        success = 1 / (1 + np.exp(-(base + rng.normal(0.0, 1.0, (runs, users, 1)))))
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)
        truth = (weights[:, None] / (1 + np.exp(-(base + nodes[:, None])))).sum(axis=0) / weights.sum()
        visits = np.stack([rng.choice(users, exposures, p=r / r.sum()) for r in rates])
        unit_points = rng.integers(0, POINTS, (runs, exposures // epoch_exposures, users))
    else:
        raise ValueError(f"unknown design {design!r}")
    sim = simulate_policy(
        ThompsonSettings(min_share=min_share),
        success,
        visits,
        rng.random((runs, exposures)),
        unit_points,
        epoch_exposures=epoch_exposures,
        nodes=32,
    )
    hits = {name: np.zeros(2) for name in ("ips", "snips", "dr")}
    for run_index in range(runs):
        values = fixed_policy_values(
            ("worse", "better"),
            sim.variant[run_index],
            sim.propensity[run_index],
            sim.reward[run_index],
            epoch=sim.epoch[run_index],
            unit=sim.unit[run_index] if design == "returning_users" else None,
        )
        for x, value in enumerate(values):
            for name in hits:
                estimate = getattr(value, name)
                hits[name][x] += estimate is not None and estimate.low <= truth[x] <= estimate.high
    regret = ((truth[1] - truth[0]) * (sim.variant == 0)).sum(axis=1)
    return {
        "design": design,
        "min_share": min_share,
        "runs": runs,
        "coverage_worse_better": {name: (h / runs).round(3).tolist() for name, h in hits.items()},
        "regret_over_50_50": float(regret.mean() / ((truth[1] - truth[0]) * exposures / 2)),
        "binomial_99_band": round(2.576 * float(np.sqrt(0.95 * 0.05 / runs)), 3),
    }


def run(
    results_dir: Path,
    *,
    models_dir: Path | None = None,
    requests: int = 20_000,
    users: int = 1000,
    seed: int = 7,
    replications: int = 20,
    epoch_exposures: int = 1000,
    min_share: float = 0.05,
    epsilon: float = 0.1,
    coverage_runs: int = 1000,
) -> dict[str, Any]:
    """Simulate the three strategies over the same traffic, print a table, write results_dir/bench-bandit.json."""
    started = time.perf_counter()
    data = load_dataset("synthetic")
    with tempfile.TemporaryDirectory() as folder:
        directory = models_dir or Path(folder)
        models = [load_or_train(trainer(name), directory, data_spec="synthetic") for name in MODEL_NAMES]
    population = ground_truth_population(data, models, users=users, seed=seed)
    truth = population.true_ctr()
    best = int(np.argmax(truth))
    visits, uniforms, points = _traffic(population, requests, seed, replications, -(-requests // epoch_exposures))
    update = UpdateInterval(exposures=epoch_exposures)
    policies: dict[str, Policy] = {
        "thompson": ThompsonSettings(update=update, min_share=min_share),
        "epsilon_greedy": EpsilonGreedySettings(update=update, min_share=min_share, epsilon=epsilon),
        "fixed_50_50": (POINTS // 2, POINTS - POINTS // 2),
    }
    best_expected = population.success[visits, best].sum(axis=1)
    best_clicks = (uniforms < population.success[visits, best]).sum(axis=1)
    rows: dict[str, dict[str, Any]] = {}
    logs: dict[str, SimulatedRuns] = {}
    for name, policy in policies.items():
        sim = simulate_policy(policy, population.success, visits, uniforms, points, epoch_exposures=epoch_exposures)
        logs[name] = sim
        regret = best_expected - sim.expected.sum(axis=1)
        rows[name] = {
            "clicked_exposures": int(sim.reward[0].sum()),
            "expected_clicked_exposures": float(sim.expected[0].sum()),
            "regret": float(regret[0]),
            "realised_regret": int(best_clicks[0] - sim.reward[0].sum()),
            "share_best_model": float((sim.variant[0] == best).mean()),
            "regret_all_replications": regret.tolist(),
            "final_weights": (sim.points[0, -1] / POINTS).tolist(),
        }
    ratios = np.asarray(rows["thompson"]["regret_all_replications"]) / np.asarray(
        rows["fixed_50_50"]["regret_all_replications"]
    )
    ope = {name: _ope(logs[name], population, truth) for name in ("thompson", "epsilon_greedy")}
    coverage = [
        ope_coverage(design, floor, runs=coverage_runs)
        for design in ("independent", "returning_users")
        for floor in (0.01, 0.05)
        if coverage_runs > 0
    ]
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "requests": requests,
            "users": users,
            "seed": seed,
            "replications": replications,
            "epoch_exposures": epoch_exposures,
            "min_share": min_share,
            "epsilon": epsilon,
        },
        "models": list(MODEL_NAMES),
        "true_ctr": truth.tolist(),
        "true_best": MODEL_NAMES[best],
        "strategies": rows,
        "thompson_over_50_50_regret": {
            "default_simulation": float(ratios[0]),
            "median": float(np.median(ratios)),
            "max": float(np.max(ratios)),
            "target": 1 / 3,
        },
        "ope": ope,
        "ope_coverage": coverage,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(format_table(result))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-bandit.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return result


def _ope(sim: SimulatedRuns, population: Population, truth: NDArray[np.float64]) -> dict[str, Any]:
    """OPE of "always X" on replication 0 (clustered by user), and how often the CIs cover across replications."""
    runs = sim.variant.shape[0]
    covered = {name: np.zeros(len(MODEL_NAMES), np.int64) for name in ("ips", "snips", "dr")}
    first: tuple[PolicyValue, ...] = ()
    for run_index in range(runs):
        values = fixed_policy_values(
            MODEL_NAMES,
            sim.variant[run_index],
            sim.propensity[run_index],
            sim.reward[run_index],
            epoch=sim.epoch[run_index],
            unit=sim.unit[run_index],
        )
        if run_index == 0:
            first = values
        for x, value in enumerate(values):
            for name in covered:
                estimate = getattr(value, name)
                covered[name][x] += estimate is not None and estimate.low <= truth[x] <= estimate.high
    return {
        "replication_0": [
            {
                "model": value.variant,
                "true_ctr": float(truth[x]),
                "exposures": value.exposures,
                "naive_mean": value.naive_mean,
                **{name: _interval(value, name) for name in ("ips", "snips", "dr")},
            }
            for x, value in enumerate(first)
        ],
        "coverage_over_replications": {name: (hits / runs).tolist() for name, hits in covered.items()},
    }


def format_table(result: dict[str, Any]) -> str:
    truth = result["true_ctr"]
    header = f"{'strategy':15} {'clicked exp.':>12} {'expected':>10} {'regret':>8} {'realised':>9} {'best share':>11}"
    lines = [
        "true CTR: " + ", ".join(f"{m} {c:.4f}" for m, c in zip(result["models"], truth, strict=True)),
        header,
        "-" * len(header),
    ]
    for name, row in result["strategies"].items():
        lines.append(
            f"{name:15} {row['clicked_exposures']:>12} {row['expected_clicked_exposures']:>10.1f} "
            f"{row['regret']:>8.1f} {row['realised_regret']:>9} {row['share_best_model']:>11.3f}"
        )
    ratio = result["thompson_over_50_50_regret"]
    lines.append(
        f"Thompson regret / 50-50 regret: {ratio['default_simulation']:.3f} (default simulation), "
        f"median {ratio['median']:.3f}, max {ratio['max']:.3f} over {result['settings']['replications']} "
        f"replications; target <= 0.333"
    )
    for strategy, ope in result["ope"].items():
        lines.append(f"OPE on the {strategy} logs (95% CIs clustered by user) vs ground truth:")
        for row in ope["replication_0"]:
            cells = []
            for name in ("ips", "snips", "dr"):
                est = row[name]
                cells.append(
                    f"{name} " + ("-" if est is None else f"{est['value']:.4f} [{est['low']:.4f}, {est['high']:.4f}]")
                )
            lines.append(
                f"  {row['model']}: true {row['true_ctr']:.4f}, naive {row['naive_mean'] or 0:.4f}; " + "; ".join(cells)
            )
        coverage = ope["coverage_over_replications"]
        lines.append("  CI coverage over replications: " + ", ".join(f"{k} {v}" for k, v in coverage.items()))
    lines.append("OPE CI coverage over simulated Thompson runs (20,000 exposures; CTR 0.10 vs 0.13), worse/better:")
    for study in result["ope_coverage"]:
        shares = ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in study["coverage_worse_better"].items())
        lines.append(
            f"  {study['design']:15} floor {study['min_share']:.0%}: {shares} over {study['runs']} runs "
            f"(95% +- {study['binomial_99_band']}); regret / 50-50 {study['regret_over_50_50']:.3f}"
        )
    return "\n".join(lines)
