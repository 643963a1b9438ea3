"""Adaptive traffic: one weight epoch's variant shares from per-variant outcome totals (pure, no I/O).

Thompson sampling gives each variant the posterior probability that it is best; epsilon-greedy gives
1 - ε to the best posterior mean and spreads ε evenly. Both then lift every variant to a minimum share and
round to whole hash points (GrowthBook's 1/10,000 resolution), so the share a variant gets *is* the
probability that a unit's hash point lands in its range - the exact propensity off-policy evaluation needs.

    >>> settings = ThompsonSettings(reward=FeedbackReward(event="click"))
    >>> totals = (VariantTotals(exposures=1000, reward_sum=100), VariantTotals(exposures=1000, reward_sum=130))
    >>> epoch = compute_epoch(settings, 3, ("model_a", "model_b"), totals, computed_at=0.0)
    >>> epoch.points
    (500, 9500)
    >>> epoch.assign("salt", "user-42")
    Assignment(variant='model_b', propensity=0.95, epoch=3)

Posteriors: Beta-Bernoulli for a feedback reward (an exposure with at least one `click` scores 1), and
Normal-Gamma for a value reward (e.g. the sum of `rating` values on the exposure, 0 if none; never rounded),
whose marginal posterior of the mean is a Student t. P(best) is computed by deterministic numerical
integration, not Monte Carlo, so no seed is involved (see `probability_best` for the method and its bound).

Errors::

    BanditError (ValueError)          raised at config validation or when an epoch is computed, never per request
    ├── TotalsError                   outcome totals no reward could produce (negative, non-finite, clicks > exposures)
    └── InfeasibleShareError          min_share x variants > 1: no weights can honour it
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import special

from router.strategies.base import Assignment
from router.strategies.hashing import POINTS
from router.strategies.hashing import epoch_point as epoch_point  # re-exported: the hashes live together
from router.strategies.hashing import epoch_salt as epoch_salt

#: Quadrature nodes for P(best): the result is within 1 / (2 * nodes) of the exact value (see probability_best).
DEFAULT_NODES = 4096

EVENT_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


class BanditError(ValueError):
    """Adaptive weights that cannot be computed; the message says which input and why."""


class TotalsError(BanditError):
    """Outcome totals that no reward could have produced."""


class InfeasibleShareError(BanditError):
    """A minimum share that the number of variants makes impossible (min_share * variants > 1)."""


# --- settings ------------------------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedbackReward(_Frozen):
    """Binary reward: an exposure scores 1 if it got at least one `event` feedback (e.g. a click), else 0."""

    kind: Literal["feedback"] = "feedback"
    event: str = Field("click", pattern=EVENT_PATTERN)


class ValueReward(_Frozen):
    """Real-valued reward: the sum of the `event` values on an exposure (a rating, watch seconds), 0 if none.

    Values are used as they are, never rounded (Seldon's routers truncated rewards to integers and got stuck,
    SeldonIO/seldon-core#336).
    """

    kind: Literal["value"] = "value"
    event: str = Field("rating", pattern=EVENT_PATTERN)


Reward = Annotated[FeedbackReward | ValueReward, Field(discriminator="kind")]


class BetaPrior(_Frozen):
    """Beta(alpha, beta) prior on a variant's success rate; Beta(1, 1) is uniform."""

    kind: Literal["beta"] = "beta"
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)
    beta: float = Field(1.0, gt=0, allow_inf_nan=False)


class NormalGammaPrior(_Frozen):
    """Normal-Gamma prior on a variant's mean value and precision.

    mean: prior guess of the mean; strength: how many exposures that guess is worth (kappa0); shape and rate
    (alpha0, beta0): the Gamma prior on the precision. The defaults are weak: with no data the marginal of the
    mean is a Student t with 2 degrees of freedom and scale 10 around `mean`.
    """

    kind: Literal["normal_gamma"] = "normal_gamma"
    mean: float = Field(0.0, allow_inf_nan=False)
    strength: float = Field(0.01, gt=0, allow_inf_nan=False)
    shape: float = Field(1.0, gt=0, allow_inf_nan=False)
    rate: float = Field(1.0, gt=0, allow_inf_nan=False)


Prior = Annotated[BetaPrior | NormalGammaPrior, Field(discriminator="kind")]


class UpdateInterval(_Frozen):
    """When the next epoch starts: after `exposures` exposures or `seconds` seconds, whichever comes first."""

    exposures: int | None = Field(1000, ge=1)
    seconds: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_at_least(self) -> UpdateInterval:
        if self.exposures is None and self.seconds is None:
            raise ValueError("an update interval needs exposures, seconds, or both")
        return self

    def due(self, exposures_since: int, seconds_since: float) -> bool:
        """Whether an epoch that has seen `exposures_since` exposures over `seconds_since` seconds is over."""
        by_count = self.exposures is not None and exposures_since >= self.exposures
        by_time = self.seconds is not None and seconds_since >= self.seconds
        return by_count or by_time


class _AdaptiveSettings(_Frozen):
    reward: Reward = Field(default_factory=FeedbackReward)
    prior: Prior | None = None  # None: Beta(1, 1) for a feedback reward, the default Normal-Gamma for a value
    update: UpdateInterval = Field(default_factory=UpdateInterval)
    # 5%, not 1%: at a 1% floor the starved variant's off-policy intervals cover ~92% instead of 95%
    # (docs/bandits.md has the measurements); 5% keeps them near nominal and Thompson's regret well under target
    min_share: float = Field(0.05, gt=0, le=0.5, allow_inf_nan=False)

    @model_validator(mode="after")
    def _prior_fits_reward(self) -> _AdaptiveSettings:
        expected = "beta" if self.reward.kind == "feedback" else "normal_gamma"
        if self.prior is not None and self.prior.kind != expected:
            raise ValueError(f"a {self.reward.kind} reward needs a {expected} prior, got {self.prior.kind}")
        return self

    @property
    def resolved_prior(self) -> BetaPrior | NormalGammaPrior:
        """The configured prior, or the default for the reward."""
        if self.prior is not None:
            return self.prior
        return BetaPrior() if self.reward.kind == "feedback" else NormalGammaPrior()

    @property
    def min_points(self) -> int:
        """The minimum share in whole hash points (rounded up, so the share is never below `min_share`)."""
        return math.ceil(self.min_share * POINTS - 1e-9)

    def check_variants(self, count: int) -> None:
        """Refuse a minimum share that `count` variants cannot all get."""
        if count < 2:
            raise BanditError(f"an adaptive strategy needs at least two variants, got {count}")
        if count * self.min_points > POINTS:
            raise InfeasibleShareError(
                f"min_share {self.min_share} for {count} variants needs {count * self.min_share:.4f} > 1 of traffic"
            )


class ThompsonSettings(_AdaptiveSettings):
    """Thompson sampling per epoch: each variant's share is the posterior probability that it is best."""

    strategy: Literal["thompson"] = "thompson"


class EpsilonGreedySettings(_AdaptiveSettings):
    """Epsilon-greedy per epoch: 1 - epsilon to the best posterior mean (ties split it), epsilon spread evenly."""

    strategy: Literal["epsilon_greedy"] = "epsilon_greedy"
    epsilon: float = Field(0.1, ge=0, le=1, allow_inf_nan=False)


AdaptiveSettings = Annotated[ThompsonSettings | EpsilonGreedySettings, Field(discriminator="strategy")]


# --- posteriors and P(best) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantTotals:
    """What one variant earned so far: exposures, the sum of their rewards, and the sum of squared rewards.

    For a feedback reward `reward_sum` is the number of exposures with the event; squares are not needed.
    """

    exposures: int
    reward_sum: float
    reward_sum_squares: float = 0.0


@dataclass(frozen=True)
class Posterior:
    """Per-variant posterior of the mean reward, as arrays over (..., variants).

    kind "beta": Beta(a, b). kind "t": Student t with `a` degrees of freedom, location `loc`, scale `b`.
    """

    kind: Literal["beta", "t"]
    a: NDArray[np.float64]
    b: NDArray[np.float64]
    loc: NDArray[np.float64]

    @property
    def mean(self) -> NDArray[np.float64]:
        """Posterior mean reward of each variant (the t's location: its df is always > 1 here, so it exists)."""
        if self.kind == "beta":
            return np.asarray(self.a / (self.a + self.b), dtype=np.float64)
        return self.loc


def posterior(
    prior: BetaPrior | NormalGammaPrior,
    exposures: ArrayLike,
    reward_sum: ArrayLike,
    reward_sum_squares: ArrayLike | None = None,
) -> Posterior:
    """The posterior of each variant's mean reward from its totals (arrays of shape (..., variants)).

    Normal-Gamma update (Murphy 2007, "Conjugate Bayesian analysis of the Gaussian distribution", eq. 86-89):
    kappa_n = kappa0 + n, mu_n = (kappa0 mu0 + n xbar) / kappa_n, alpha_n = alpha0 + n/2,
    beta_n = beta0 + M2/2 + kappa0 n (xbar - mu0)^2 / (2 kappa_n); the mean's marginal is
    t_{2 alpha_n}(mu_n, sqrt(beta_n / (alpha_n kappa_n))).
    """
    n = np.asarray(exposures, dtype=np.float64)
    total = np.asarray(reward_sum, dtype=np.float64)
    _check_totals(n, total)
    if isinstance(prior, BetaPrior):
        if np.any(total > n):
            raise TotalsError("a feedback reward's total exceeds its exposures (rewards are 0 or 1 per exposure)")
        return Posterior("beta", prior.alpha + total, prior.beta + n - total, np.zeros_like(n))
    squares = np.asarray(reward_sum_squares if reward_sum_squares is not None else np.zeros_like(n), np.float64)
    if squares.shape != n.shape or not np.all(np.isfinite(squares)) or np.any(squares < 0):
        raise TotalsError("reward_sum_squares must be finite, non-negative, one per variant")
    safe_n = np.where(n > 0, n, 1.0)
    xbar = np.where(n > 0, total / safe_n, 0.0)
    m2 = np.maximum(squares - total * xbar, 0.0)  # sum of squared deviations; clipped against rounding
    kappa = prior.strength + n
    mu = (prior.strength * prior.mean + n * xbar) / kappa
    shape = prior.shape + n / 2
    rate = prior.rate + m2 / 2 + prior.strength * n * (xbar - prior.mean) ** 2 / (2 * kappa)
    return Posterior("t", 2 * shape, np.sqrt(rate / (shape * kappa)), mu)


def _check_totals(n: NDArray[np.float64], total: NDArray[np.float64]) -> None:
    if n.shape != total.shape or n.ndim < 1:
        raise TotalsError("exposures and reward_sum must be arrays of the same shape, one entry per variant")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(total))):
        raise TotalsError("outcome totals must be finite")
    if np.any(n < 0):
        raise TotalsError("exposures cannot be negative")


def probability_best(post: Posterior, nodes: int = DEFAULT_NODES) -> NDArray[np.float64]:
    """P(variant i has the highest mean) under independent posteriors, for each i (shape (..., variants)).

    P(i best) = E[prod_{j != i} F_j(X_i)], X_i ~ posterior i = integral_0^1 prod_{j != i} F_j(Q_i(u)) du, with
    Q_i the quantile function. The integrand is monotone and within [0, 1], so the midpoint rule on `nodes`
    cells is off by at most 1 / (2 nodes) whatever the posteriors' shapes (a peaked density does not hurt, as
    it would on an x grid). The results are normalised to sum to 1; identical posteriors get identical values.
    """
    if nodes < 1:
        raise ValueError("nodes must be positive")
    u = (np.arange(nodes, dtype=np.float64) + 0.5) / nodes
    a, b, loc = post.a[..., :, None], post.b[..., :, None], post.loc[..., :, None]
    if post.kind == "beta":
        quantiles = special.betaincinv(a, b, u)  # (..., i, u)
        cdf = special.betainc(a[..., None, :, :], b[..., None, :, :], quantiles[..., :, None, :])  # (..., i, j, u)
    else:
        quantiles = loc + b * special.stdtrit(a, u)
        standardised = (quantiles[..., :, None, :] - loc[..., None, :, :]) / b[..., None, :, :]
        cdf = special.stdtr(a[..., None, :, :], standardised)
    count = post.a.shape[-1]
    cdf = np.where(np.eye(count, dtype=bool)[:, :, None], 1.0, cdf)
    raw = np.prod(cdf, axis=-2).mean(axis=-1)
    return np.asarray(raw / raw.sum(axis=-1, keepdims=True), dtype=np.float64)


# --- shares -> exact points ----------------------------------------------------------------------------------


def epsilon_greedy_shares(means: ArrayLike, epsilon: float) -> NDArray[np.float64]:
    """1 - epsilon split among the variants with the highest mean, epsilon spread evenly over all.

    >>> epsilon_greedy_shares([0.1, 0.3, 0.2], 0.3).round(3).tolist()
    [0.1, 0.8, 0.1]
    """
    values = np.asarray(means, dtype=np.float64)
    best = values == values.max(axis=-1, keepdims=True)
    greedy = best / best.sum(axis=-1, keepdims=True)
    return np.asarray((1 - epsilon) * greedy + epsilon / values.shape[-1], dtype=np.float64)


def with_min_share(shares: ArrayLike, floor: float) -> NDArray[np.float64]:
    """Lift every share below `floor` to it and scale the others down to keep the sum at 1 (water-filling).

    Variants above the floor keep their ratios. Needs floor * variants <= 1.

    >>> with_min_share([0.995, 0.005], 0.01).tolist()
    [0.99, 0.01]
    """
    values = np.asarray(shares, dtype=np.float64)
    count = values.shape[-1]
    if floor * count > 1 + 1e-12:
        raise InfeasibleShareError(f"a floor of {floor} for {count} variants exceeds the whole")
    clamped = np.zeros(values.shape, dtype=bool)
    result = values
    for _ in range(count):
        free = 1 - floor * clamped.sum(axis=-1, keepdims=True)
        rest = np.where(clamped, 0.0, values).sum(axis=-1, keepdims=True)
        even = free / np.maximum((~clamped).sum(axis=-1, keepdims=True), 1)
        scaled = np.where(rest > 0, values * free / np.where(rest > 0, rest, 1.0), even)
        result = np.where(clamped, floor, scaled)
        below = (result < floor) & ~clamped
        if not below.any():
            break
        clamped |= below
    return np.asarray(result, dtype=np.float64)


def to_points(shares: ArrayLike, min_points: int) -> NDArray[np.int64]:
    """Shares as whole hash points: each >= min_points, summing to exactly POINTS (largest remainder).

    Each variant is within one point of its share (shares are expected to be >= min_points / POINTS already,
    e.g. from `with_min_share`). Ties in the remainders go to the variant listed first.

    >>> to_points([0.5, 0.25, 0.25], 100).tolist()
    [5000, 2500, 2500]
    """
    values = np.asarray(shares, dtype=np.float64)
    count = values.shape[-1]
    free = POINTS - count * min_points
    if free < 0:
        raise InfeasibleShareError(f"{count} variants x {min_points} points exceed {POINTS}")
    excess = np.maximum(values * POINTS - min_points, 0.0)
    total = excess.sum(axis=-1, keepdims=True)
    excess = np.where(total > 0, excess * free / np.where(total > 0, total, 1.0), free / count)
    base = np.floor(excess).astype(np.int64)
    leftover = np.clip(free - base.sum(axis=-1, keepdims=True), 0, count)
    remainder = excess - base
    order = np.argsort(-remainder, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(count), axis=-1)
    points = min_points + base + (rank < leftover)
    return np.asarray(points, dtype=np.int64)


def traffic_points(
    settings: ThompsonSettings | EpsilonGreedySettings,
    exposures: ArrayLike,
    reward_sum: ArrayLike,
    reward_sum_squares: ArrayLike | None = None,
    *,
    nodes: int = DEFAULT_NODES,
) -> NDArray[np.int64]:
    """The points of each variant for totals of shape (..., variants); batched, so simulations can vectorise."""
    post = posterior(settings.resolved_prior, exposures, reward_sum, reward_sum_squares)
    if isinstance(settings, ThompsonSettings):
        return _points(settings, probability_best(post, nodes))
    return _points(settings, epsilon_greedy_shares(post.mean, settings.epsilon))


def _points(settings: ThompsonSettings | EpsilonGreedySettings, shares: NDArray[np.float64]) -> NDArray[np.int64]:
    settings.check_variants(shares.shape[-1])
    return to_points(with_min_share(shares, settings.min_points / POINTS), settings.min_points)


# --- one epoch and sticky assignment -------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochWeights:
    """The weights in force for one epoch, what they were computed from, and when.

    `points[i]` of the POINTS (10,000) hash points belong to `variants[i]`, in config order, so the
    propensity of variant i is exactly points[i] / POINTS. A unit's point is hashed with the salt *and the
    epoch number* (`epoch_salt`), so it is sticky within an epoch and drawn afresh in the next: then the
    propensity is also the probability given everything before, which off-policy evaluation relies on. (With
    one point for all epochs the same few users would fill a variant's 1% floor epoch after epoch; measured
    in docs/bandits.md: the OPE intervals then cover far less than 95%.)
    """

    epoch: int
    strategy: str
    variants: tuple[str, ...]
    points: tuple[int, ...]
    totals: tuple[VariantTotals, ...]
    probability_best: tuple[float, ...]
    computed_at: datetime
    _ends: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise BanditError(f"epoch numbers start at 0, got {self.epoch}")
        if not len(self.variants) == len(self.points) == len(self.totals) == len(self.probability_best):
            raise BanditError("variants, points, totals and probability_best must have one entry per variant")
        if sum(self.points) != POINTS or min(self.points) <= 0:
            raise BanditError(f"points {self.points} must be positive and sum to {POINTS}")
        object.__setattr__(self, "_ends", tuple(np.cumsum(self.points).tolist()))

    @property
    def weights(self) -> tuple[float, ...]:
        """Each variant's share of traffic (= its propensity) in this epoch."""
        return tuple(p / POINTS for p in self.points)

    def propensity(self, variant: str) -> float:
        """The probability that a unit is assigned `variant` in this epoch."""
        return self.points[self.variants.index(variant)] / POINTS

    def variant_at(self, point: int) -> str:
        """The variant whose range holds hash point `point` (an integer in [0, POINTS))."""
        if not 0 <= point < POINTS:
            raise ValueError(f"hash point {point} outside [0, {POINTS})")
        return self.variants[bisect.bisect_right(self._ends, point)]

    def assign(self, salt: str, unit_id: str) -> Assignment:
        """Sticky within the epoch: the unit's GrowthBook hash point for this epoch, through the cumulative points."""
        variant = self.variant_at(epoch_point(salt, self.epoch, unit_id))
        return Assignment(variant, self.propensity(variant), self.epoch)


def compute_epoch(
    settings: ThompsonSettings | EpsilonGreedySettings,
    epoch: int,
    variants: Sequence[str],
    totals: Sequence[VariantTotals],
    computed_at: datetime,
    *,
    nodes: int = DEFAULT_NODES,
) -> EpochWeights:
    """The weights of `epoch` from the outcome totals observed before it (all zeros for epoch 0: even split).

    P(best) is recorded for either strategy (the report shows it); only Thompson allocates by it.
    """
    if len(variants) != len(totals):
        raise BanditError(f"{len(variants)} variants but {len(totals)} totals")
    post = posterior(
        settings.resolved_prior,
        [t.exposures for t in totals],
        [t.reward_sum for t in totals],
        [t.reward_sum_squares for t in totals],
    )
    best = probability_best(post, nodes)
    shares = best if isinstance(settings, ThompsonSettings) else epsilon_greedy_shares(post.mean, settings.epsilon)
    points = _points(settings, shares)
    return EpochWeights(
        epoch=epoch,
        strategy=settings.strategy,
        variants=tuple(variants),
        points=tuple(int(p) for p in points),
        totals=tuple(totals),
        probability_best=tuple(float(p) for p in best),
        computed_at=computed_at,
    )


def assign_points(points: ArrayLike, unit_points: ArrayLike) -> NDArray[np.intp]:
    """Vectorised assignment: the variant index for each integer hash point under `points` (..., variants).

    Leading dimensions of `points` (e.g. simulation runs) broadcast against `unit_points` (..., units).

    >>> assign_points([2500, 7500], [0, 2499, 2500, 9999]).tolist()
    [0, 0, 1, 1]
    """
    ends = np.cumsum(np.asarray(points, dtype=np.int64), axis=-1)
    unit = np.asarray(unit_points, dtype=np.int64)
    return np.asarray((unit[..., :, None] >= ends[..., None, :]).sum(axis=-1), dtype=np.intp)
