"""The report's section for an adaptive phase (thompson, epsilon_greedy): epochs, SRM, P(best), reward, OPE.

    with store.snapshot() as snapshot:
        section = read_adaptive_section(snapshot, phase_record)     # None for a phase that is not adaptive
    section.summary.values[1].dr                                     # "always model_b": DR estimate with its CI

Under adaptive assignment the A/B tables' per-variant means are biased and their tests assume fixed weights,
so the report replaces them with this (router.report.ope has the statistics, docs/bandits.md the why):
per-epoch weights and SRM against each epoch's own weights, the final P(best) under the strategy's posterior,
cumulative reward and estimated regret, and off-policy estimates (IPS, SNIPS, DR, clustered by user) of what
each fixed policy "always X" would have earned.

The store hands over one row per (user, assigned variant, epoch, propensity) with the reward's sum and sum of
squares. The estimators take per-exposure arrays: a feedback reward is expanded exactly (k ones, n - k zeros);
a value reward as n copies of the group's mean, which leaves every clustered estimate and interval unchanged
(they depend on per-user sums only); the posterior uses the true sums of squares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from router.bandit import BanditError, BetaPrior, EpochWeights, NormalGammaPrior, VariantTotals
from router.config import BanditConfig
from router.report.ope import AdaptiveSummary, final_probability_best, summarise_adaptive
from router.store.epochs import AdaptiveGroups, RewardKind, StoredEpoch
from router.store.reader import PhaseRecord, PhaseSnapshot
from router.strategies import ADAPTIVE_STRATEGIES

#: Exposures expanded for the estimators at most; above it the section says it is too big instead of using memory
#: without bound (8 bytes x 5 arrays per exposure: 20 million is 800 MB).
MAX_EXPOSURES = 20_000_000


@dataclass(frozen=True)
class EpochRow:
    """One epoch as the report shows it: its weights, what it served, P(best) when it started."""

    epoch: int
    computed_at: float
    computed_by: str
    weights: Mapping[str, float]
    probability_best: Mapping[str, float]
    exposures: int
    srm_p_value: float | None


@dataclass(frozen=True)
class AdaptiveSection:
    """Everything the report shows for an adaptive phase; `summary` is None (with `reason`) when it cannot be
    computed (no exposures, too many, malformed propensities)."""

    strategy: str
    reward: str
    """What the reward is, in words (e.g. "an exposure with at least one click")."""
    variants: tuple[str, ...]
    epochs: tuple[EpochRow, ...]
    summary: AdaptiveSummary | None
    exposures: int
    without_epoch: int
    """Analysed exposures that carry no epoch or propensity (should be 0): left out of the estimates."""
    reason: str | None


def read_adaptive_section(snapshot: PhaseSnapshot, phase: PhaseRecord) -> AdaptiveSection | None:
    """The adaptive section of `phase`, or None when its strategy is not adaptive."""
    config = phase.config
    strategy = str(config.get("strategy"))
    if strategy not in ADAPTIVE_STRATEGIES:
        return None
    bandit: Mapping[str, Any] = config.get("bandit") or {}
    kind: RewardKind = "value" if bandit.get("reward") == "value" else "feedback"
    event = str(bandit.get("event", "click"))
    stored = snapshot.epochs(phase.phase)
    groups = snapshot.adaptive_groups(phase.phase, kind, event)
    reward = f"an exposure with at least one {event}" if kind == "feedback" else f"the sum of the {event} values on it"
    variants = tuple(str(v["name"]) for v in config.get("variants", ()) if isinstance(v, dict))
    return assemble_adaptive(strategy, reward, variants, stored, groups, _prior(config), kind)


def assemble_adaptive(
    strategy: str,
    reward: str,
    variants: tuple[str, ...],
    stored: tuple[StoredEpoch, ...],
    groups: AdaptiveGroups,
    prior: BetaPrior | NormalGammaPrior,
    kind: str,
) -> AdaptiveSection:
    """The section from the phase's epochs and exposure groups (pure: no I/O)."""
    if stored:
        variants = stored[0].variants
    index = {name: i for i, name in enumerate(variants)}
    remap = np.array([index.get(name, -1) for name in groups.variants], dtype=np.int64)
    variant = remap[groups.variant] if groups.variant.size else groups.variant
    usable = (groups.epoch >= 0) & np.isfinite(groups.propensity) & (variant >= 0)
    exposures = int(groups.exposures.sum())
    without = int(groups.exposures[~usable].sum())
    per_epoch = np.bincount(groups.epoch[usable], weights=groups.exposures[usable]) if usable.any() else np.zeros(0)
    weights = tuple(_weights(row) for row in stored)
    summary, reason = None, None
    if not stored:
        reason = "no weight epoch recorded for this phase"
    elif not usable.any():
        reason = "no exposure assigned by the adaptive strategy yet"
    elif exposures > MAX_EXPOSURES:
        reason = f"{exposures:,} exposures exceed the report's bound of {MAX_EXPOSURES:,} for off-policy estimates"
    else:
        unit, a, p, r, e = _expand(groups, variant, usable, kind)
        summary = summarise_adaptive(prior, weights, a, p, r, e, unit)
        summary = replace(summary, probability_best=_final_best(prior, groups, variant, usable, len(variants)))
    srm = {check.epoch: check.check for check in summary.sample_ratio.per_epoch} if summary else {}
    rows = tuple(
        EpochRow(
            epoch=row.epoch,
            computed_at=row.computed_at,
            computed_by=row.computed_by,
            weights=dict(zip(row.variants, w.weights, strict=True)),
            probability_best=dict(zip(row.variants, row.probability_best, strict=True)),
            exposures=int(per_epoch[row.epoch]) if row.epoch < per_epoch.size else 0,
            srm_p_value=None if srm.get(row.epoch) is None else srm[row.epoch].p_value,  # type: ignore[union-attr]
        )
        for row, w in zip(stored, weights, strict=True)
    )
    return AdaptiveSection(strategy, reward, variants, rows, summary, exposures, without, reason)


def _weights(row: StoredEpoch) -> EpochWeights:
    return EpochWeights(
        epoch=row.epoch,
        strategy=row.strategy,
        variants=row.variants,
        points=row.points,
        totals=tuple(VariantTotals(n, s, q) for n, s, q in row.totals),
        probability_best=row.probability_best,
        computed_at=datetime.fromtimestamp(row.computed_at, UTC),
    )


def _expand(
    groups: AdaptiveGroups, variant: NDArray[np.int64], usable: NDArray[np.bool_], kind: str
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Per-exposure arrays (unit, variant, propensity, reward, epoch) from the groups (see the module docstring)."""
    n = groups.exposures[usable]
    sums = groups.reward_sum[usable]
    if kind == "feedback":  # k ones then n - k zeros per group: exact
        ones = np.rint(sums).astype(np.int64)
        counts = np.stack([ones, n - ones], axis=1).ravel()
        rewards = np.repeat(np.tile([1.0, 0.0], n.size), counts)
        repeat = counts
        source = np.repeat(np.arange(n.size), 2)
    else:  # n copies of the mean: the clustered estimates depend on per-user sums only
        repeat = n
        source = np.arange(n.size)
        rewards = np.repeat(sums / np.maximum(n, 1), n)

    def spread(values: NDArray[Any]) -> NDArray[Any]:
        return np.repeat(values[usable][source], repeat)

    return (
        spread(groups.user),
        spread(variant),
        spread(groups.propensity),
        rewards,
        spread(groups.epoch),
    )


def _final_best(
    prior: BetaPrior | NormalGammaPrior,
    groups: AdaptiveGroups,
    variant: NDArray[np.int64],
    usable: NDArray[np.bool_],
    count: int,
) -> tuple[float, ...] | None:
    """P(best) from the true per-variant sums and sums of squares (not from the expanded means)."""
    a = variant[usable]
    try:
        return final_probability_best(
            prior,
            np.bincount(a, weights=groups.exposures[usable], minlength=count),
            np.bincount(a, weights=groups.reward_sum[usable], minlength=count),
            np.bincount(a, weights=groups.reward_sum_squares[usable], minlength=count),
        )
    except BanditError:
        return None


def _prior(config: Mapping[str, Any]) -> BetaPrior | NormalGammaPrior:
    """The phase's prior, rebuilt from its recorded bandit settings with the router's own rules."""
    bandit = BanditConfig.model_validate(config.get("bandit") or {})
    return bandit.prior.resolve(bandit.reward)


def regret_ratio(section: AdaptiveSection) -> float | None:
    """Estimated regret / the regret a uniform split would have had (by the DR values); None if undefined."""
    if section.summary is None:
        return None
    values = [v.dr.value for v in section.summary.values if v.dr is not None]
    rewards = section.summary.rewards
    if len(values) != len(section.variants) or rewards.estimated_regret is None:
        return None
    even = rewards.exposures * (max(values) - sum(values) / len(values))
    return None if even <= 0 or not math.isfinite(even) else rewards.estimated_regret / even
