"""`abtest bench sensitivity`: how many users an A/B test on CTR and an interleaving test need to find the better model.

On the default synthetic population with the two default trained models, for each number of users per arm
in a grid, many experiments are simulated in-process (no HTTP) and each is analysed with the report's own
test: the A/B with `router.report.stats.compare_ctr` (user units, delta method), interleaving with
`router.report.interleaving.compare_interleaved` (exact sign test on per-user votes). The figure is the
fraction of experiments that name the ground truth's better model (`recsys.truth`) at alpha = 0.05.

Both designs get the same users: the A/B splits 2n users into two arms of n, interleaving shows all 2n
merged lists. A/A runs (the same model twice) give each test's false-positive rate.

Simulated users, as `abtest.simulator` makes them: each has a taste (a user of the data set, drawn
uniformly), a click propensity ~ Normal(0, 1), and 1 + Poisson((mean - 1) * activity / E[activity])
requests, activity ~ LogNormal(0, 1) (the simulator's 20,000 requests over 1,000 users: mean 20). The
models are deterministic, so a user gets the same list on every A/B request; an interleaved request gets
the merge of that user's two lists under a uniformly random coin pattern (the request-id hash's coins are
uniform), precomputed with `router.interleaving.merge` for every pattern. Clicks follow `recsys.clicks.ClickModel`
(position-based: examination 1/log2(p + 2) times a sigmoid of base + propensity + true affinity).
Target (issue 14): interleaving needs <= 1/10 of the users for 80 % power.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special
from scipy import stats as scipy_stats

from recsys.clicks import ClickModel
from recsys.data import LatentTruth, load_dataset
from recsys.recommender import FactorModel
from recsys.training import MODEL_NAMES, load_or_train, trainer
from recsys.truth import expected_outcomes, served_rows
from router.interleaving import merge
from router.report.interleaving import UserCredits, compare_interleaved
from router.report.stats import ALPHA, POWER, UnitCounts, compare_ctr

DEFAULT_GRID = (10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280)
K = 10
MAX_REQUESTS_PER_CHUNK = 400_000  # interleaved requests simulated at once (bounds memory: ~k floats each)


@dataclass(frozen=True)
class Arms:
    """What two models show each taste: their lists' true affinities, and every interleave of the two.

    `served[m, t]` is the affinity row of model m's list for taste t (-inf pads a short list); for coin
    pattern j (bit r = the coin of round r, 1: the first model picks first), `interleaved[t, j]` holds the
    merged list's affinities and `teams[t, j]` who placed each position (0, 1; -1 for an empty position).
    """

    names: tuple[str, str]
    served: NDArray[np.float64]
    interleaved: NDArray[np.float64]
    teams: NDArray[np.int8]

    @property
    def tastes(self) -> int:
        return int(self.served.shape[1])


@dataclass(frozen=True)
class Users:
    """How simulated users are drawn (see the module docstring)."""

    click_model: ClickModel = field(default_factory=ClickModel)
    mean_requests: float = 20.0
    activity_spread: float = 1.0

    def draw(
        self, rng: np.random.Generator, count: int, tastes: int
    ) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.int64]]:
        """`count` users: their taste rows, click propensities and request counts."""
        rows = rng.integers(0, tastes, count)
        propensity = self.click_model.draw_propensities(rng, count)
        activity = rng.lognormal(0.0, self.activity_spread, count) / math.exp(self.activity_spread**2 / 2)
        requests = 1 + rng.poisson((self.mean_requests - 1.0) * activity)
        return rows, propensity, requests.astype(np.int64)


def build_arms(names: tuple[str, str], lists: Sequence[NDArray[np.intp]], affinity: NDArray[np.float64]) -> Arms:
    """Precompute `Arms` from each model's item rows per taste (tastes x k, -1 pads) and the true affinity matrix."""
    first, second = (np.asarray(ranking, dtype=np.intp) for ranking in lists)
    tastes, k = first.shape
    rounds = (k + 1) // 2  # a coin is drawn only at equal team sizes, and each round places two items
    patterns = 1 << rounds
    served = np.stack([_affinities(affinity, first), _affinities(affinity, second)])
    interleaved = np.full((tastes, patterns, k), -np.inf)
    teams = np.full((tastes, patterns, k), -1, dtype=np.int8)
    for taste in range(tastes):
        lists_of_taste = ([int(i) for i in first[taste] if i >= 0], [int(i) for i in second[taste] if i >= 0])
        for pattern in range(patterns):
            coins = iter([bool((pattern >> r) & 1) for r in range(rounds)])
            merged = merge(("0", "1"), (lists_of_taste[0], lists_of_taste[1]), k, coins)
            count = len(merged.items)
            interleaved[taste, pattern, :count] = affinity[taste, list(merged.items)]
            teams[taste, pattern, :count] = [int(team) for team in merged.teams]
    return Arms(names, served, interleaved, teams)


def _affinities(affinity: NDArray[np.float64], rows: NDArray[np.intp]) -> NDArray[np.float64]:
    taste = np.arange(rows.shape[0])[:, None]
    return np.where(rows >= 0, affinity[taste, np.maximum(rows, 0)], -np.inf)


@dataclass(frozen=True)
class Rates:
    """Of `experiments`, how many named the first model better, how many the second (both at p < alpha)."""

    experiments: int
    first: int
    second: int

    def named(self, better: int | None) -> float:
        """Share naming model `better` (0 or 1); with None (A/A), the false-positive rate: any winner named."""
        if better is None:
            return (self.first + self.second) / self.experiments
        return (self.first if better == 0 else self.second) / self.experiments


def ab_rates(
    rng: np.random.Generator, arms: Arms, users: Users, users_per_arm: int, experiments: int, alpha: float = ALPHA
) -> Rates:
    """Simulate A/B experiments (n users per arm, each sees their arm's model) and run the report's CTR test.

    Each A/B request of a user shows the same list, so its clicked-or-not is Bernoulli(q) with q = P(>= 1
    click) of that list at the user's propensity: a user's clicked exposures are Binomial(requests, q) exactly.
    """
    count = 2 * users_per_arm * experiments
    rows, propensity, requests = users.draw(rng, count, arms.tastes)
    arm = (np.arange(count) // users_per_arm) % 2
    probabilities = users.click_model.click_probability_rows(arms.served[arm, rows], propensity)
    clicked = rng.binomial(requests, 1.0 - np.prod(1.0 - probabilities, axis=1))
    first = second = 0
    for e in range(experiments):
        base = 2 * users_per_arm * e
        control = UnitCounts.of(requests[base : base + users_per_arm], clicked[base : base + users_per_arm])
        treated = slice(base + users_per_arm, base + 2 * users_per_arm)
        treatment = UnitCounts.of(requests[treated], clicked[treated])
        difference = compare_ctr(control, treatment, "user", alpha)
        if difference.p_value is not None and difference.p_value < alpha and difference.absolute is not None:
            first += int(difference.absolute.value < 0)
            second += int(difference.absolute.value > 0)
    return Rates(experiments, first, second)


@dataclass(frozen=True)
class InterleavedRates:
    """`Rates` of the fixed-horizon sign test and of the always-valid confidence sequence.

    `attainable_size` is the sign test's exact false-positive rate under no preference, averaged over the
    experiments' numbers of voting users: what an A/A run should measure (below alpha by discreteness).
    """

    fixed: Rates
    sequential: Rates
    attainable_size: float


def interleaving_rates(
    rng: np.random.Generator, arms: Arms, users: Users, users_per_arm: int, experiments: int, alpha: float = ALPHA
) -> InterleavedRates:
    """Simulate interleaving experiments (2n users, every request interleaved) and run the report's analysis."""
    per_experiment = 2 * users_per_arm
    batch = max(1, int(MAX_REQUESTS_PER_CHUNK // (per_experiment * users.mean_requests)))
    fixed, sequential = [0, 0], [0, 0]
    sizes = []
    for start in range(0, experiments, batch):
        chunk = min(batch, experiments - start)
        control, treatment = _interleaved_credits(rng, arms, users, per_experiment * chunk)
        for e in range(chunk):
            users_of_e = slice(e * per_experiment, (e + 1) * per_experiment)
            credits = UserCredits.of(control[users_of_e], treatment[users_of_e])
            result = compare_interleaved(arms.names[0], arms.names[1], credits, alpha=alpha)
            sizes.append(sign_test_size(result.wins + result.losses, alpha))
            if result.significant and result.delta is not None:
                fixed[int(result.delta.value > 0)] += 1
            if result.sequential is not None and result.sequential.p_value < alpha:
                sequential[int(result.sequential.interval.value > 0)] += 1
    return InterleavedRates(Rates(experiments, *fixed), Rates(experiments, *sequential), float(np.mean(sizes)))


@functools.cache
def sign_test_size(voting: int, alpha: float = ALPHA) -> float:
    """P(the exact two-sided sign test rejects at `alpha`) with `voting` users and no preference.

    >>> round(sign_test_size(20), 4)  # rejects at <= 5 or >= 15 wins of 20
    0.0414
    """
    if voting == 0:
        return 0.0
    wins = np.arange(voting + 1)
    p_values = np.minimum(1.0, 2.0 * special.bdtr(np.minimum(wins, voting - wins), voting, 0.5))
    return float(scipy_stats.binom.pmf(wins, voting, 0.5)[p_values < alpha].sum())


def _interleaved_credits(
    rng: np.random.Generator, arms: Arms, users: Users, count: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per simulated user: clicks credited to the first and the second team over all their requests."""
    rows, propensity, requests = users.draw(rng, count, arms.tastes)
    owner = np.repeat(np.arange(count), requests)
    pattern = rng.integers(0, arms.interleaved.shape[1], owner.size)
    probabilities = users.click_model.click_probability_rows(arms.interleaved[rows[owner], pattern], propensity[owner])
    clicks = rng.random(probabilities.shape) < probabilities
    teams = arms.teams[rows[owner], pattern]
    first = np.bincount(owner, weights=(clicks & (teams == 0)).sum(axis=1), minlength=count)
    second = np.bincount(owner, weights=(clicks & (teams == 1)).sum(axis=1), minlength=count)
    return first.astype(np.int64), second.astype(np.int64)


def users_for_power(grid: Sequence[int], power: Sequence[float], target: float = POWER) -> float | None:
    """Users per arm where the power curve first reaches `target` (linear in log users); None if it never does.

    >>> round(users_for_power([10, 20, 40], [0.5, 0.7, 0.9]))
    28
    """
    for index, value in enumerate(power):
        if value >= target:
            if index == 0:
                return float(grid[0]) if value == target else None
            low, high = power[index - 1], value
            share = (target - low) / (high - low)
            return float(
                math.exp(math.log(grid[index - 1]) + share * (math.log(grid[index]) - math.log(grid[index - 1])))
            )
    return None


def binomial_band(experiments: int, alpha: float = ALPHA, level: float = 0.99) -> tuple[float, float]:
    """The central `level` range of the false-positive rate over `experiments` A/A runs of a calibrated test."""
    low = scipy_stats.binom.ppf((1 - level) / 2, experiments, alpha) / experiments
    high = scipy_stats.binom.ppf(1 - (1 - level) / 2, experiments, alpha) / experiments
    return float(low), float(high)


def default_arms(models_dir: Path | None = None) -> tuple[Arms, Arms, dict[str, Any]]:
    """The two default models on the default population (trained if `models_dir` lacks them), the A/A arms
    (the control twice) and the ground truth's expected figures."""
    data = load_dataset("synthetic")
    if not isinstance(data.truth, LatentTruth):
        raise TypeError("the default synthetic data set should carry a LatentTruth")
    affinity = data.truth.all_affinities()
    with tempfile.TemporaryDirectory() as folder:
        where = models_dir or Path(folder)
        models: dict[str, FactorModel] = {
            name: load_or_train(trainer(name), where, data_spec="synthetic") for name in MODEL_NAMES
        }
    lists = {name: served_rows(model, data, K) for name, model in models.items()}
    first, second = MODEL_NAMES
    arms = build_arms((first, second), (lists[first], lists[second]), affinity)
    same = build_arms((first, first), (lists[first], lists[first]), affinity)
    click_model = ClickModel()
    truth: dict[str, Any] = {}
    for index, name in enumerate(MODEL_NAMES):
        ctr, clicks = expected_outcomes(arms.served[index], click_model)
        truth[name] = {"expected_ctr": ctr, "expected_clicks_per_exposure": clicks}
    truth["preferred"] = max(MODEL_NAMES, key=lambda name: truth[name]["expected_ctr"])
    truth["interleaved_expected_credit"] = _expected_credit(arms, click_model)
    truth["overlap_per_list"] = float(
        np.mean([len(set(lists[first][t]) & set(lists[second][t])) for t in range(data.n_users)])
    )
    return arms, same, truth


def _expected_credit(arms: Arms, click_model: ClickModel) -> dict[str, float]:
    """Expected clicks credited to each team per interleaved request (over tastes, coins and propensity)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    weights = weights / weights.sum()
    credit = [0.0, 0.0]
    for node, weight in zip(nodes * click_model.user_spread, weights, strict=True):
        tastes, patterns, k = arms.interleaved.shape
        flat = arms.interleaved.reshape(-1, k)
        p = click_model.click_probability_rows(flat, np.full(flat.shape[0], node)).reshape(tastes, patterns, k)
        for team in (0, 1):
            credit[team] += weight * float(np.where(arms.teams == team, p, 0.0).sum(axis=2).mean())
    return {arms.names[0]: credit[0], arms.names[1]: credit[1]}


def run(
    results_dir: Path,
    *,
    grid: Sequence[int] = DEFAULT_GRID,
    experiments: int = 400,
    aa_experiments: int = 1000,
    aa_users_per_arm: Sequence[int] = (20, 160),
    models_dir: Path | None = None,
    seed: int = 14,
    users: Users | None = None,
) -> dict[str, Any]:
    """Both power curves, the users each needs for 80 % power and their ratio, and A/A false-positive rates;
    prints a table and writes results_dir/bench-sensitivity.json."""
    started = time.perf_counter()
    users = users or Users()
    arms, same, truth = default_arms(models_dir)
    better = arms.names.index(truth["preferred"])
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    saturated = 0  # consecutive grid points where interleaving named the better model in every experiment
    for n in grid:
        ab = ab_rates(rng, arms, users, n, experiments)
        row: dict[str, Any] = {
            "users_per_arm": n,
            "total_users": 2 * n,
            "ab_power": ab.named(better),
            "ab_wrong_winner": ab.named(1 - better),
            "interleaving_power": None,
            "interleaving_sequential_power": None,
            "interleaving_wrong_winner": None,
        }
        if saturated < 2:  # past two perfect points more users cannot do better: not simulated (None)
            interleaved = interleaving_rates(rng, arms, users, n, experiments)
            row["interleaving_power"] = interleaved.fixed.named(better)
            row["interleaving_sequential_power"] = interleaved.sequential.named(better)
            row["interleaving_wrong_winner"] = interleaved.fixed.named(1 - better)
            saturated = saturated + 1 if interleaved.fixed.named(better) == 1.0 else 0
        rows.append(row)
    ab_needed = users_for_power(grid, [row["ab_power"] for row in rows])
    interleaving_needed = users_for_power(
        grid, [1.0 if row["interleaving_power"] is None else row["interleaving_power"] for row in rows]
    )
    aa_rows = []
    band = binomial_band(aa_experiments)
    for n in aa_users_per_arm:
        aa_ab = ab_rates(rng, same, users, n, aa_experiments)
        aa_interleaving = interleaving_rates(rng, same, users, n, aa_experiments)
        aa_rows.append(
            {
                "users_per_arm": n,
                "ab_false_positive_rate": aa_ab.named(None),
                "interleaving_false_positive_rate": aa_interleaving.fixed.named(None),
                "interleaving_sequential_false_positive_rate": aa_interleaving.sequential.named(None),
                "interleaving_exact_size": aa_interleaving.attainable_size,
            }
        )
    figures: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "click_model": {
            "kind": "position-based",
            "examination": "1 / log2(position + 2), position from 0",
            "base": users.click_model.base,
            "affinity_weight": users.click_model.affinity_weight,
            "user_spread": users.click_model.user_spread,
        },
        "users": {"mean_requests": users.mean_requests, "activity_spread": users.activity_spread, "k": K},
        "alpha": ALPHA,
        "experiments_per_point": experiments,
        "ground_truth": truth,
        "curves": rows,
        "users_per_arm_for_80_power": {"ab": ab_needed, "interleaving": interleaving_needed},
        "ratio_ab_over_interleaving": ab_needed / interleaving_needed if ab_needed and interleaving_needed else None,
        "aa": {"experiments": aa_experiments, "binomial_99_band": band, "rows": aa_rows},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(_table(figures))
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / "bench-sensitivity.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return figures


def _table(figures: dict[str, Any]) -> str:
    truth = figures["ground_truth"]
    names = [name for name in truth if isinstance(truth[name], dict) and "expected_ctr" in truth[name]]
    lines = [
        "ground truth: "
        + ", ".join(f"{name} expected CTR {truth[name]['expected_ctr']:.4f}" for name in names)
        + f" -> {truth['preferred']} is better",
        f"{figures['experiments_per_point']} simulated experiments per point, alpha = {figures['alpha']}",
        "",
        f"{'users/arm':>9} {'total':>6} {'A/B CTR':>8} {'interleave':>10} {'(always valid)':>14}",
    ]
    for row in figures["curves"]:
        lines.append(
            f"{row['users_per_arm']:>9} {row['total_users']:>6} {row['ab_power']:>8.3f} "
            f"{_share(row['interleaving_power']):>10} {_share(row['interleaving_sequential_power']):>14}"
        )
    lines.append("(- : not simulated, interleaving already named the better model in every run at two smaller sizes)")
    needed = figures["users_per_arm_for_80_power"]
    ratio = figures["ratio_ab_over_interleaving"]
    lines.append("")
    lines.append(
        f"users per arm for 80% power: A/B {_maybe(needed['ab'])}, interleaving {_maybe(needed['interleaving'])}; "
        f"ratio {f'{ratio:.1f}x' if ratio else 'n/a (a curve never reached 80% in the grid)'} (target >= 10x)"
    )
    aa = figures["aa"]
    low, high = aa["binomial_99_band"]
    lines.append(f"A/A over {aa['experiments']} runs each (99% band of alpha: [{low:.3f}, {high:.3f}]):")
    for row in aa["rows"]:
        lines.append(
            f"  {row['users_per_arm']:>5} users/arm: false positives A/B {row['ab_false_positive_rate']:.3f}, "
            f"interleaving {row['interleaving_false_positive_rate']:.3f} "
            f"(exact size of the sign test at these voters {row['interleaving_exact_size']:.3f}; "
            f"always valid {row['interleaving_sequential_false_positive_rate']:.3f})"
        )
    lines.append(f"{figures['seconds']} s")
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _maybe(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "> grid"
