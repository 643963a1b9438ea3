"""Off-policy evaluation for an adaptive phase: what would "always serve X" have earned? (pure, no I/O)

Under a bandit, the share of traffic a variant gets depends on the outcomes so far, so a variant's plain
mean reward is biased (a variant that was unlucky early is starved and its low estimate never gets
corrected) and the A/B tests' variances are wrong. Weighting each logged exposure by 1 / its propensity
undoes the adaptive assignment, provided the propensities are the exact probabilities the router used.

    >>> variant = np.array([0, 1, 1, 0]); propensity = np.array([0.5, 0.5, 0.9, 0.1]); reward = np.array([1, 0, 1, 0])
    >>> values = fixed_policy_values(("a", "b"), variant, propensity, reward)
    >>> round(values[0].ips.value, 3), round(values[0].snips.value, 3)
    (0.5, 0.167)

Estimators of V(x) = E[reward if every exposure were served x], with w_i = 1{a_i = x} / p_i:
- IPS: mean(w r). Unbiased; the CI is the CLT on its per-exposure terms (as vw-estimators' gaussian Interval).
- SNIPS: sum(w r) / sum(w). Its CI is the delta method: influence terms w_i (r_i - V) / mean(w).
- DR: mean(q(x) + w (r - q(x))), with the direct-method model q fitted on the logs. With no context, q is
  the variant's mean reward *in the epochs before the exposure's* (else all earlier rewards, else 0): predictable,
  so each DR term has conditional mean V(x) given the past, exactly as under adaptive logging IPS has; the
  CI is the CLT on the DR terms. (A q fitted on all logs is also offered, `direct_method="pooled"`.)
With `unit` ids the standard errors are clustered by unit (a user's exposures are not independent).
Undefined values are None with a reason, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as scipy_stats

from router.bandit import BanditError, BetaPrior, EpochWeights, NormalGammaPrior, posterior, probability_best
from router.report.stats import ALPHA, SRM_THRESHOLD, Estimate, SampleRatio, sample_ratio

DirectMethod = Literal["past_epochs", "pooled"]


@dataclass(frozen=True)
class PolicyValue:
    """Off-policy estimates of the mean reward per exposure of the fixed policy "always `variant`".

    `naive_mean` is the variant's plain mean reward over the exposures it served - what an A/B analysis
    would report, biased under adaptive assignment, shown only for contrast. `reason` says why an estimate
    is None.
    """

    variant: str
    exposures: int
    ips: Estimate | None
    snips: Estimate | None
    dr: Estimate | None
    naive_mean: float | None
    reason: str | None


@dataclass(frozen=True)
class EpochSampleRatio:
    """The sample-ratio check of one epoch: units per variant against that epoch's weights."""

    epoch: int
    check: SampleRatio | None


@dataclass(frozen=True)
class AdaptiveSampleRatio:
    """Per-epoch SRM checks and their combination (independent epochs: chi-squares and dofs add up)."""

    per_epoch: tuple[EpochSampleRatio, ...]
    chi2: float
    dof: int
    p_value: float | None
    mismatch: bool


@dataclass(frozen=True)
class RewardSummary:
    """What the adaptive phase earned and what it cost against always serving the best variant.

    `estimated_regret` = exposures x the best DR value - cumulative reward (against the empirically best
    variant; None when no variant has a DR estimate).
    """

    exposures: int
    cumulative_reward: float
    reward_by_variant: tuple[float, ...]
    exposures_by_variant: tuple[int, ...]
    best_variant: str | None
    estimated_regret: float | None


@dataclass(frozen=True)
class AdaptiveSummary:
    """Everything the report shows for an adaptive phase; `probability_best` is None (with `reason`) when the
    logs cannot give a posterior (e.g. a reward outside 0/1 under a Beta prior)."""

    values: tuple[PolicyValue, ...]
    probability_best: tuple[float, ...] | None
    rewards: RewardSummary
    sample_ratio: AdaptiveSampleRatio
    reason: str | None


def _z(alpha: float) -> float:
    return float(special.ndtri(1 - alpha / 2))  # scipy.stats.norm.ppf, without its per-call overhead


def _cluster_codes(unit: ArrayLike | None, n: int) -> NDArray[np.intp] | None:
    if unit is None:
        return None
    units = np.asarray(unit)
    if units.shape != (n,):
        raise ValueError("unit must hold one id per exposure")
    _, codes = np.unique(units, return_inverse=True)
    return np.asarray(codes, dtype=np.intp)


def _interval(
    value: float, influence: NDArray[np.float64], clusters: NDArray[np.intp] | None, alpha: float
) -> Estimate | None:
    """`value` +- z * standard error of the mean of `influence` (clustered by `clusters` when given)."""
    n = influence.size
    centred = influence - influence.mean()
    if clusters is None:
        if n < 2:
            return None
        variance = float(np.sum(centred**2) / (n - 1) / n)
    else:
        sums = np.bincount(clusters, weights=centred)
        groups = int(np.count_nonzero(np.bincount(clusters)))
        if groups < 2:
            return None
        variance = float(groups / (groups - 1) * np.sum(sums**2) / n**2)
    half = _z(alpha) * math.sqrt(max(variance, 0.0))
    return Estimate(value, value - half, value + half)


def _problem(variant: NDArray[np.intp], propensity: NDArray[np.float64], reward: NDArray[np.float64]) -> str | None:
    if variant.size == 0:
        return "no exposures"
    bad = ~np.isfinite(propensity) | (propensity <= 0) | (propensity > 1)
    if bad.any():
        return (
            f"{int(bad.sum())} exposures have a propensity outside (0, 1]: these logs do not carry the exact "
            "assignment probabilities that off-policy evaluation needs"
        )
    if not np.all(np.isfinite(reward)):
        return f"{int((~np.isfinite(reward)).sum())} exposures have a non-finite reward"
    return None


def _arrays(
    variants: Sequence[str], variant: ArrayLike, propensity: ArrayLike, reward: ArrayLike
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    a = np.asarray(variant, dtype=np.intp)
    p = np.asarray(propensity, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    if a.ndim != 1 or a.shape != p.shape or a.shape != r.shape:
        raise ValueError("variant, propensity and reward must be 1-D arrays of the same length")
    if a.size and (a.min() < 0 or a.max() >= len(variants)):
        raise ValueError(f"variant indices must lie in [0, {len(variants)})")
    return a, p, r


def direct_model(
    variant: NDArray[np.intp],
    reward: NDArray[np.float64],
    count: int,
    epoch: NDArray[np.int64] | None,
    method: DirectMethod,
) -> NDArray[np.float64]:
    """q[i, x]: the direct-method prediction of the reward exposure i would have had under variant x.

    "past_epochs" (needs `epoch`): x's mean reward over the epochs before exposure i's, else the mean of
    all earlier rewards, else 0. "pooled" (or no epochs given): x's mean reward over all the logs.
    """
    n = variant.size
    if method == "pooled" or epoch is None:
        totals = np.bincount(variant, weights=reward, minlength=count)
        counts = np.bincount(variant, minlength=count)
        means = np.divide(totals, counts, out=np.zeros(count), where=counts > 0)
        return np.broadcast_to(means, (n, count)).copy()
    labels, codes = np.unique(epoch, return_inverse=True)
    cells = codes * count + variant
    sums = np.bincount(cells, weights=reward, minlength=labels.size * count).reshape(labels.size, count)
    counts = np.bincount(cells, minlength=labels.size * count).reshape(labels.size, count).astype(np.float64)
    before_sums = np.cumsum(sums, axis=0) - sums  # strictly earlier epochs
    before_counts = np.cumsum(counts, axis=0) - counts
    overall = np.divide(
        before_sums.sum(axis=1),
        before_counts.sum(axis=1),
        out=np.zeros(labels.size),
        where=before_counts.sum(axis=1) > 0,
    )
    per_variant = np.divide(
        before_sums, before_counts, out=np.broadcast_to(overall[:, None], sums.shape).copy(), where=before_counts > 0
    )
    return np.asarray(per_variant[codes], dtype=np.float64)


def fixed_policy_values(
    variants: Sequence[str],
    variant: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    *,
    epoch: ArrayLike | None = None,
    unit: ArrayLike | None = None,
    direct_method: DirectMethod = "past_epochs",
    alpha: float = ALPHA,
) -> tuple[PolicyValue, ...]:
    """IPS, SNIPS and DR estimates (with CIs) of "always x" for every variant x, from logged exposures.

    variant: the index (into `variants`) each exposure was served; propensity: the probability it had of
    being served that variant; reward: its reward (0/1 for a click, or a value); epoch: its weight epoch;
    unit: the unit (user) id, to cluster the standard errors.
    """
    a, p, r = _arrays(variants, variant, propensity, reward)
    epochs = None if epoch is None else np.asarray(epoch, dtype=np.int64)
    if epochs is not None and epochs.shape != a.shape:
        raise ValueError("epoch must hold one number per exposure")
    clusters = _cluster_codes(unit, a.size)
    problem = _problem(a, p, r)
    served = np.bincount(a, minlength=len(variants)) if a.size else np.zeros(len(variants), np.int64)
    if problem is not None:
        return tuple(
            PolicyValue(name, int(served[x]), None, None, None, None, problem) for x, name in enumerate(variants)
        )
    q = direct_model(a, r, len(variants), epochs, direct_method)
    return tuple(
        _policy_value(name, x, int(served[x]), a, p, r, q[:, x], clusters, alpha) for x, name in enumerate(variants)
    )


def _policy_value(
    name: str,
    x: int,
    served: int,
    a: NDArray[np.intp],
    p: NDArray[np.float64],
    r: NDArray[np.float64],
    q: NDArray[np.float64],
    clusters: NDArray[np.intp] | None,
    alpha: float,
) -> PolicyValue:
    if served == 0:
        return PolicyValue(name, 0, None, None, None, None, "never served: the logs say nothing about it")
    w = np.where(a == x, 1.0 / p, 0.0)
    ips_terms = w * r
    ips_value = float(ips_terms.mean())
    snips_value = float(ips_terms.sum() / w.sum())
    snips_influence = w * (r - snips_value) / w.mean()
    dr_terms = q + w * (r - q)
    dr_value = float(dr_terms.mean())
    naive = float(r[a == x].mean())
    if served < 2:
        return PolicyValue(name, served, None, None, None, naive, "served once: no interval")
    ips = _interval(ips_value, ips_terms, clusters, alpha)
    snips = _interval(snips_value, snips_influence, clusters, alpha)
    dr = _interval(dr_value, dr_terms, clusters, alpha)
    reason = None
    if ips is None:
        reason = "fewer than two units: no interval"
    elif snips is not None and snips.low == snips.high:
        reason = "the rewards it earned are all equal: the CLT interval has zero width and means little"
    return PolicyValue(name, served, ips, snips, dr, naive, reason)


def final_probability_best(
    prior: BetaPrior | NormalGammaPrior,
    exposures: ArrayLike,
    reward_sum: ArrayLike,
    reward_sum_squares: ArrayLike | None = None,
) -> tuple[float, ...]:
    """P(each variant is best) under the strategy's posterior after the phase (valid under adaptive assignment:
    the Bayesian posterior does not depend on how traffic was allocated, given the outcomes)."""
    return tuple(float(v) for v in probability_best(posterior(prior, exposures, reward_sum, reward_sum_squares)))


def reward_summary(
    variants: Sequence[str], variant: ArrayLike, reward: ArrayLike, values: Sequence[PolicyValue]
) -> RewardSummary:
    """Cumulative reward, per variant, and the estimated regret against the variant with the best DR value."""
    a = np.asarray(variant, dtype=np.intp)
    r = np.asarray(reward, dtype=np.float64)
    count = len(variants)
    by_variant = np.bincount(a, weights=r, minlength=count) if a.size else np.zeros(count)
    served = np.bincount(a, minlength=count) if a.size else np.zeros(count, np.int64)
    total = float(r.sum()) if np.all(np.isfinite(r)) else math.nan
    estimated = [(v.dr.value, v.variant) for v in values if v.dr is not None]
    best_value, best = max(estimated) if estimated and math.isfinite(total) else (None, None)
    regret = None if best_value is None else a.size * best_value - total
    return RewardSummary(
        exposures=int(a.size),
        cumulative_reward=total if math.isfinite(total) else 0.0,
        reward_by_variant=tuple(float(v) for v in np.nan_to_num(by_variant)),
        exposures_by_variant=tuple(int(v) for v in served),
        best_variant=best,
        estimated_regret=regret,
    )


def epoch_sample_ratios(
    epochs: Sequence[EpochWeights],
    epoch: ArrayLike,
    variant: ArrayLike,
    unit: ArrayLike | None = None,
    threshold: float = SRM_THRESHOLD,
) -> AdaptiveSampleRatio:
    """SRM per epoch (GrowthBook's per-period approach): units per variant in each epoch vs that epoch's weights.

    A unit counts once per (epoch, variant); without `unit` every exposure is a unit. Exposures of an epoch
    with no EpochWeights are ignored. The combined test sums the per-epoch chi-squares and their dofs.
    """
    e = np.asarray(epoch, dtype=np.int64)
    a = np.asarray(variant, dtype=np.intp)
    if e.shape != a.shape:
        raise ValueError("epoch and variant must have one entry per exposure")
    codes = _cluster_codes(unit, a.size)
    if codes is not None:  # a unit counts once per (epoch, variant)
        keys = np.unique(np.stack([e, codes, a]), axis=1) if a.size else np.empty((3, 0), np.int64)
        e, a = keys[0], keys[2]
    per_epoch = []
    chi2, dof, infinite = 0.0, 0, False
    for weights in epochs:
        in_epoch = a[e == weights.epoch]
        observed = np.bincount(in_epoch, minlength=len(weights.points))[: len(weights.points)]
        check = sample_ratio(observed.tolist(), weights.points, threshold)
        per_epoch.append(EpochSampleRatio(weights.epoch, check))
        if check is None:
            continue
        if math.isinf(check.chi2):
            infinite = True
            continue
        chi2 += check.chi2
        dof += int(np.count_nonzero(np.asarray(check.expected) > 0)) - 1
    if infinite:
        return AdaptiveSampleRatio(tuple(per_epoch), math.inf, dof, 0.0, True)
    p_value = float(scipy_stats.chi2.sf(chi2, dof)) if dof > 0 else None
    return AdaptiveSampleRatio(tuple(per_epoch), chi2, dof, p_value, p_value is not None and p_value < threshold)


def summarise_adaptive(
    prior: BetaPrior | NormalGammaPrior,
    epochs: Sequence[EpochWeights],
    variant: ArrayLike,
    propensity: ArrayLike,
    reward: ArrayLike,
    epoch: ArrayLike,
    unit: ArrayLike | None = None,
    alpha: float = ALPHA,
) -> AdaptiveSummary:
    """The adaptive phase's section of the report, from its exposures and its epochs' weights.

    variant: index into the epochs' variants; reward: per exposure (0/1 or a value); epoch: its epoch number;
    unit: its unit (user) id. The posterior uses the per-exposure rewards and their squares.
    """
    if not epochs:
        raise ValueError("an adaptive phase has at least one epoch")
    variants = epochs[0].variants
    a, p, r = _arrays(variants, variant, propensity, reward)
    values = fixed_policy_values(variants, a, p, r, epoch=epoch, unit=unit, alpha=alpha)
    count = len(variants)
    problem = _problem(a, p, r) if a.size else None
    best: tuple[float, ...] | None = None
    if problem is None:
        exposures = np.bincount(a, minlength=count)
        sums = np.bincount(a, weights=r, minlength=count)
        squares = np.bincount(a, weights=r**2, minlength=count)
        try:
            best = final_probability_best(prior, exposures, sums, squares)
        except BanditError as exc:
            problem = f"no posterior: {exc}"
    return AdaptiveSummary(
        values=values,
        probability_best=best,
        rewards=reward_summary(variants, a, r, values),
        sample_ratio=epoch_sample_ratios(epochs, epoch, a, unit),
        reason=problem,
    )
