"""Off-policy evaluation: against vw-estimators, CI coverage over simulated bandit runs, odd data, per-epoch SRM."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from estimators.bandits import gaussian, ips, snips  # vw-estimators, the reference (dev extra only)
from numpy.typing import NDArray
from scipy.special import expit, logit

from abtest.bench.bandit import simulate_policy
from router.bandit import BetaPrior, EpochWeights, ThompsonSettings, VariantTotals, compute_epoch
from router.report.ope import (
    PolicyValue,
    epoch_sample_ratios,
    fixed_policy_values,
    reward_summary,
    summarise_adaptive,
)
from router.strategies import POINTS

NOW = datetime(2026, 1, 1, tzinfo=UTC)
VARIANTS = ("a", "b")


def adaptive_logs(seed: int, exposures: int = 5000, count: int = 3) -> tuple[NDArray[np.intp], ...]:
    """Logs whose propensities change every 500 exposures, with binary and fractional rewards."""
    rng = np.random.default_rng(seed)
    epoch = np.arange(exposures) // 500
    shares = rng.dirichlet(np.ones(count), epoch.max() + 1) * 0.9 + 0.1 / count
    variant = np.array([rng.choice(count, p=shares[e]) for e in epoch])
    propensity = shares[epoch, variant]
    reward = np.where(rng.random(exposures) < 0.2 + 0.1 * variant, rng.normal(3.0, 1.0, exposures), 0.0)
    return variant, propensity, reward, epoch


@pytest.mark.parametrize("seed", [1, 2])
def test_estimators_match_vw_estimators(seed: int) -> None:
    """IPS, SNIPS and IPS's gaussian CI equal vw-estimators' on the same logs; DR = mean(q) + vw IPS of r - q."""
    variant, propensity, reward, epoch = adaptive_logs(seed)
    names = ("x", "y", "z")
    ours = fixed_policy_values(names, variant, propensity, reward, epoch=epoch)
    pooled = fixed_policy_values(names, variant, propensity, reward, epoch=epoch, direct_method="pooled")
    for x in range(len(names)):
        served = variant == x
        means = [reward[served & (epoch < e)].mean() if np.any(served & (epoch < e)) else None for e in range(10)]
        overall = [reward[epoch < e].mean() if e else 0.0 for e in range(10)]
        q_past = np.array([means[e] if means[e] is not None else overall[e] for e in epoch])
        q_pooled = np.full(len(reward), reward[served].mean())
        reference = {"ips": ips.Estimator(), "snips": snips.Estimator(), "ci": gaussian.Interval()}
        residual = {"past": ips.Estimator(), "pooled": ips.Estimator(), "pooled_ci": gaussian.Interval()}
        for p, r, hit, qp, qq in zip(propensity, reward, served, q_past, q_pooled, strict=True):
            reference["ips"].add_example(p_log=p, r=r, p_pred=float(hit))
            reference["snips"].add_example(p_log=p, r=r, p_pred=float(hit))
            reference["ci"].add_example(p_log=p, r=r, p_pred=float(hit))
            residual["past"].add_example(p_log=p, r=r - qp, p_pred=float(hit))
            residual["pooled"].add_example(p_log=p, r=r - qq, p_pred=float(hit))
            residual["pooled_ci"].add_example(p_log=p, r=r - qq, p_pred=float(hit))
        value = ours[x]
        assert value.ips is not None and value.snips is not None and value.dr is not None
        assert value.ips.value == pytest.approx(reference["ips"].get(), rel=1e-12)
        assert value.snips.value == pytest.approx(reference["snips"].get(), rel=1e-12)
        assert [value.ips.low, value.ips.high] == pytest.approx(reference["ci"].get(alpha=0.05), rel=1e-9)
        assert value.dr.value == pytest.approx(q_past.mean() + residual["past"].get(), rel=1e-12)
        dr_pooled = pooled[x].dr
        assert dr_pooled is not None
        assert dr_pooled.value == pytest.approx(q_pooled[0] + residual["pooled"].get(), rel=1e-12)
        low, high = residual["pooled_ci"].get(alpha=0.05)
        assert [dr_pooled.low, dr_pooled.high] == pytest.approx([q_pooled[0] + low, q_pooled[0] + high], rel=1e-9)
        assert value.naive_mean == pytest.approx(reward[served].mean())


def coverage(values: list[tuple[PolicyValue, ...]], truth: NDArray[np.float64], name: str) -> NDArray[np.float64]:
    hits = np.zeros(len(truth))
    for run in values:
        for x, value in enumerate(run):
            estimate = getattr(value, name)
            hits[x] += estimate is not None and estimate.low <= truth[x] <= estimate.high
    return hits / len(values)


def binomial_band(runs: int, level: float = 0.95) -> float:
    """Half-width of the 99% band of the share of `runs` intervals that cover, if each covers with `level`."""
    return 2.576 * math.sqrt(level * (1 - level) / runs)


def independent_runs(seed: int, min_share: float, runs: int = 300) -> list[tuple[PolicyValue, ...]]:
    """`runs` Thompson runs of 20,000 exposures (the default simulation's size), CTR 0.10 vs 0.13, epochs of
    1,000; every exposure is a new user."""
    exposures = 20_000
    rng = np.random.default_rng(seed)
    success = np.broadcast_to(BERNOULLI_TRUTH, (exposures, 2)).copy()
    visits = np.broadcast_to(np.arange(exposures), (runs, exposures)).copy()
    sim = simulate_policy(
        ThompsonSettings(min_share=min_share),
        success,
        visits,
        rng.random((runs, exposures)),
        rng.integers(0, POINTS, (runs, exposures)),
        epoch_exposures=1000,
        nodes=32,  # P(best) within 1/64: plenty for allocating traffic, 100x cheaper than the default
    )
    assert (sim.variant == 1).mean() > 0.85  # the bandit did exploit: most traffic went to the better variant
    return [
        fixed_policy_values(VARIANTS, sim.variant[r], sim.propensity[r], sim.reward[r], epoch=sim.epoch[r])
        for r in range(runs)
    ]


BERNOULLI_TRUTH = np.array([0.10, 0.13])


def test_snips_and_dr_intervals_cover_the_truth_over_300_thompson_runs() -> None:
    """At the default 5% floor, SNIPS and DR cover each "always X" in 95% +- the 99% binomial band of runs.

    The naive per-variant mean of the starved variant is biased low: why the A/B statistics are not used
    for an adaptive phase.
    """
    values = independent_runs(seed=2, min_share=0.05)
    band = binomial_band(len(values))
    for name in ("snips", "dr"):
        covered = coverage(values, BERNOULLI_TRUTH, name)
        assert np.all(np.abs(covered - 0.95) <= band), (name, covered)
    naive = np.array([run[0].naive_mean for run in values], dtype=np.float64)
    assert naive.mean() - BERNOULLI_TRUTH[0] < -3 * naive.std() / math.sqrt(len(values))


def test_intervals_of_a_variant_starved_to_a_1_percent_floor_under_cover() -> None:
    """Known limit, measured, not hidden: at a 1% floor the starved variant's IPS weights reach 100 and a few
    heavy terms drive both its estimate and its standard error, so its CIs cover 92-94% (SNIPS 0.915, DR 0.920
    pooled over 1,800 runs; 0.938 / 0.943 in the benchmark's 1,000; docs/bandits.md). The favoured variant
    stays at 95% +- band; the starved one must not fall below the lower measured level minus its 99% band.
    """
    values = independent_runs(seed=3, min_share=0.01)
    runs = len(values)
    for name in ("snips", "dr"):
        covered = coverage(values, BERNOULLI_TRUTH, name)
        assert abs(covered[1] - 0.95) <= binomial_band(runs), (name, covered)
        assert covered[0] >= 0.915 - binomial_band(runs, 0.915), (name, covered)


def test_clustered_intervals_cover_when_users_return() -> None:
    """200 runs, each with 1,000 new users (lognormal visit rates, their own click propensities), 20,000 visits,
    the default 5% floor.

    A user's exposures are correlated, so the standard errors are clustered by user; points are hashed
    afresh each epoch, as `router.bandit.epoch_point` does. The truth is the CTR per exposure in the
    population the users are drawn from: visit rates are independent of propensities, so it is
    E[expit(logit(p) + Z)], Z ~ N(0, 1), by Gauss-Hermite quadrature.
    """
    runs, users, visits_per_run = 200, 1000, 20_000
    base = logit(np.array([0.10, 0.13]))
    rng = np.random.default_rng(4)
    rates = rng.lognormal(0.0, 1.0, (runs, users))
    success = expit(base + rng.normal(0.0, 1.0, (runs, users, 1)))
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    truth = (weights[:, None] * expit(base + nodes[:, None])).sum(axis=0) / weights.sum()
    visits = np.stack([rng.choice(users, visits_per_run, p=r / r.sum()) for r in rates])
    points = rng.integers(0, POINTS, (runs, visits_per_run // 1000, users))
    sim = simulate_policy(
        ThompsonSettings(), success, visits, rng.random((runs, visits_per_run)), points, epoch_exposures=1000, nodes=32
    )
    values = [
        fixed_policy_values(
            VARIANTS, sim.variant[r], sim.propensity[r], sim.reward[r], epoch=sim.epoch[r], unit=sim.unit[r]
        )
        for r in range(runs)
    ]
    band = binomial_band(runs)
    for name in ("snips", "dr"):
        covered = coverage(values, truth, name)
        assert np.all(np.abs(covered - 0.95) <= band), (name, covered)
    unclustered = [
        fixed_policy_values(VARIANTS, sim.variant[r], sim.propensity[r], sim.reward[r], epoch=sim.epoch[r])
        for r in range(runs)
    ]
    assert coverage(unclustered, truth, "dr")[1] < 0.95 - band  # ignoring the users is what breaks it


def all_finite(value: PolicyValue) -> bool:
    numbers = [value.naive_mean] + [
        bound
        for est in (value.ips, value.snips, value.dr)
        if est is not None
        for bound in (est.value, est.low, est.high)
    ]
    return all(math.isfinite(n) for n in numbers if n is not None)


def test_odd_logs_give_reasons_never_nan() -> None:
    never = fixed_policy_values(VARIANTS, [0, 0, 0], [0.5, 0.6, 0.99], [1.0, 0.0, 1.0])
    assert never[0].snips is not None and never[1].ips is None and never[1].dr is None
    assert never[1].reason is not None and "never served" in never[1].reason
    for bad in ([0.0, 0.5, 0.5], [0.5, 1.2, 0.5], [0.5, math.nan, 0.5], [-0.1, 0.5, 0.5]):
        refused = fixed_policy_values(VARIANTS, [0, 1, 0], bad, [1.0, 0.0, 1.0])
        assert all(v.ips is None and v.reason is not None and "propensity" in v.reason for v in refused)
    constant = fixed_policy_values(VARIANTS, [0, 1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1, 0.3], [1.0] * 5)
    assert constant[0].snips is not None and constant[0].snips.value == 1.0
    assert constant[0].reason is not None and "zero width" in constant[0].reason
    once = fixed_policy_values(VARIANTS, [0, 1, 1], [0.5, 0.5, 0.5], [0.0, 1.0, 1.0])
    assert once[0].ips is None and once[0].reason == "served once: no interval"
    empty = fixed_policy_values(VARIANTS, [], [], [])
    assert all(v.reason == "no exposures" for v in empty)
    not_finite = fixed_policy_values(VARIANTS, [0, 1], [0.5, 0.5], [math.inf, 1.0])
    assert all(v.reason is not None and "non-finite" in v.reason for v in not_finite)
    one_user = fixed_policy_values(VARIANTS, [0, 1, 0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0], unit=["u", "u", "u"])
    assert one_user[0].ips is None and one_user[0].reason == "fewer than two units: no interval"
    for result in (never, constant, once, empty, not_finite, one_user):
        assert all(all_finite(v) for v in result)
    with pytest.raises(ValueError, match="same length"):
        fixed_policy_values(VARIANTS, [0, 1], [0.5], [1.0, 0.0])
    with pytest.raises(ValueError, match="indices"):
        fixed_policy_values(VARIANTS, [0, 2], [0.5, 0.5], [1.0, 0.0])


def epoch_of(number: int, points: tuple[int, int]) -> EpochWeights:
    return EpochWeights(number, "thompson", VARIANTS, points, (VariantTotals(0, 0),) * 2, (0.5, 0.5), NOW)


def test_sample_ratio_is_checked_per_epoch_against_its_own_weights() -> None:
    epochs = [epoch_of(0, (5000, 5000)), epoch_of(1, (2000, 8000)), epoch_of(2, (100, 9900))]
    rows = [(e.epoch, e.assign("srm", f"user{n}").variant, f"user{n}") for e in epochs for n in range(3000)]
    epoch = np.array([r[0] for r in rows])
    variant = np.array([VARIANTS.index(r[1]) for r in rows])
    unit = np.array([r[2] for r in rows])
    repeated = epoch_sample_ratios(epochs, np.r_[epoch, epoch], np.r_[variant, variant], np.r_[unit, unit])
    healthy = epoch_sample_ratios(epochs, epoch, variant, unit)
    assert repeated == healthy  # a unit counts once per epoch, however many exposures it had
    assert not healthy.mismatch and healthy.dof == 3
    assert healthy.chi2 == pytest.approx(sum(c.check.chi2 for c in healthy.per_epoch if c.check is not None))
    assert [c.check.observed for c in healthy.per_epoch if c.check is not None][2][0] < 100  # ~30 of 3000 on a
    broken = variant.copy()
    in_epoch_1 = np.flatnonzero((epoch == 1) & (variant == 1))[:300]
    broken[in_epoch_1] = 0  # 300 of epoch 1's units recorded on the wrong variant
    flagged = epoch_sample_ratios(epochs, epoch, broken, unit)
    per_epoch = [c.check.mismatch for c in flagged.per_epoch if c.check is not None]
    assert per_epoch == [False, True, False] and flagged.mismatch


def test_a_real_run_logs_exact_propensities_and_summarises() -> None:
    """Five epochs through compute_epoch and EpochWeights.assign, as the router will run them."""
    rng = np.random.default_rng(8)
    truth = {"a": 0.08, "b": 0.16}
    settings = ThompsonSettings()
    served = dict.fromkeys(VARIANTS, 0)
    earned = dict.fromkeys(VARIANTS, 0.0)
    epochs, logged = [], []
    for number in range(5):
        weights = compute_epoch(
            settings, number, VARIANTS, tuple(VariantTotals(served[v], earned[v]) for v in VARIANTS), NOW
        )
        epochs.append(weights)
        for _ in range(600):
            user = f"u{rng.integers(300)}"
            assignment = weights.assign("real-run", user)
            reward = float(rng.random() < truth[assignment.variant])
            served[assignment.variant] += 1
            earned[assignment.variant] += reward
            logged.append((assignment, reward, user))
    for assignment, _, _ in logged:
        assert assignment.epoch is not None  # an adaptive assignment always names its epoch
        weights = epochs[assignment.epoch]
        assert assignment.propensity == weights.points[weights.variants.index(assignment.variant)] / POINTS
    for weights in epochs:
        assert sum(weights.points) == POINTS
    summary = summarise_adaptive(
        BetaPrior(),
        epochs,
        [VARIANTS.index(a.variant) for a, _, _ in logged],
        [a.propensity for a, _, _ in logged],
        [r for _, r, _ in logged],
        [a.epoch if a.epoch is not None else -1 for a, _, _ in logged],
        unit=[u for _, _, u in logged],
    )
    assert summary.reason is None and summary.probability_best is not None
    assert sum(summary.probability_best) == pytest.approx(1.0)
    assert summary.probability_best[1] > 0.9
    assert summary.rewards.cumulative_reward == sum(r for _, r, _ in logged)
    assert summary.rewards.best_variant == "b"
    best_dr = summary.values[1].dr
    assert best_dr is not None and summary.rewards.estimated_regret == pytest.approx(
        len(logged) * best_dr.value - summary.rewards.cumulative_reward
    )
    assert len(summary.sample_ratio.per_epoch) == 5 and not summary.sample_ratio.mismatch
    assert epochs[-1].points[1] > epochs[0].points[1]  # traffic moved toward the better variant


def test_reward_summary_without_estimates_has_no_regret() -> None:
    values = fixed_policy_values(VARIANTS, [0], [0.5], [1.0])
    summary = reward_summary(VARIANTS, [0], [1.0], values)
    assert summary.estimated_regret is None and summary.best_variant is None
    assert summary.cumulative_reward == 1.0 and summary.exposures_by_variant == (1, 0)
