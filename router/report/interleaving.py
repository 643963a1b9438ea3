"""The interleaving analysis of one phase: which model's recommendations users prefer, user by user.

Every user saw lists merged from both models (``router.interleaving``), so each is their own control. Per
user, the clicks credited to each team over the phase decide a vote: a win for the treatment (more credit
for it), a loss (more for the control), or a tie (equal credit, at least one click). The preference

    Δ = (wins - losses) / (users with a credited click)

lies in [-1, 1]: +0.12 means that, of the users who clicked anything, 12 % more preferred the treatment.

    >>> credits = UserCredits.of(control=[0, 2, 1, 0, 3], treatment=[1, 1, 4, 0, 3])
    >>> result = compare_interleaved("model_a", "model_b", credits)
    >>> result.wins, result.losses, result.ties, round(result.delta.value, 2)
    (2, 1, 1, 0.25)

The test is the exact sign test on the voting users (wins against losses, ties dropped, two-sided binomial
at 1/2). Why it and not a t-test on the per-user credit difference: it is exact at any sample size (the
point of interleaving is to decide with few users, and the t-test's normal approximation is worst there);
it has no variance to estimate, so "all 12 users prefer model_b" is a finite p-value rather than a
division by zero; and one user is one vote, so a heavy user's hundred clicks cannot outvote everyone else.
The 95 % interval of Δ is the Clopper-Pearson interval of the win share among voting users, scaled by the
voting share of clicking users (conditional on how many users voted): it excludes 0 exactly when the sign
test's p < alpha, so the verdict's interval and p never disagree.

The always-valid version is a normal-approximation asymptotic confidence sequence (Waudby-Smith et al.
2023, the form GrowthBook's sequential test uses) over the per-user votes, whose mean is Δ:
``asymptotic_confidence_sequence`` is self-contained so the A/B report can share it.

Degraded interleaves (one backend failed, the other's list was served) are not votes: they are counted per
failing variant as that model's availability loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from router.report.stats import ALPHA, Estimate

SEQUENTIAL_TUNING = 5000.0
"""GrowthBook's default tuning parameter N: the sequence is tightest around N observations (here, users)."""

METHOD = "exact sign test on per-user votes (ties dropped), Clopper-Pearson interval"
SEQUENTIAL_METHOD = "asymptotic confidence sequence (Waudby-Smith et al. 2023) over per-user votes"


@dataclass(frozen=True)
class UserCredits:
    """Per user over one phase's non-degraded interleaved exposures: clicks credited to each team."""

    control: NDArray[np.int64]
    treatment: NDArray[np.int64]

    @classmethod
    def of(cls, control: ArrayLike, treatment: ArrayLike) -> UserCredits:
        control_array = np.asarray(control, dtype=np.int64)
        treatment_array = np.asarray(treatment, dtype=np.int64)
        if control_array.shape != treatment_array.shape or control_array.ndim != 1:
            raise ValueError("control and treatment credits must be 1-D arrays of the same length (one per user)")
        if np.any(control_array < 0) or np.any(treatment_array < 0):
            raise ValueError("credited clicks cannot be negative")
        return cls(control_array, treatment_array)

    @property
    def users(self) -> int:
        return int(self.control.size)

    def votes(self) -> NDArray[np.int64]:
        """Per user with a credited click: +1 prefers the treatment, -1 the control, 0 a tie."""
        clicked = (self.control + self.treatment) > 0
        difference = self.treatment[clicked] - self.control[clicked]
        return np.asarray(np.sign(difference), dtype=np.int64)


def user_credits(
    user_ids: ArrayLike, control_clicks: ArrayLike, treatment_clicks: ArrayLike, degraded: ArrayLike | None = None
) -> UserCredits:
    """Collapse exposure rows (user id, credit of each team, degraded flag) into per-user credits.

    Degraded rows are left out: a user whose only exposures were degraded is not a user of the comparison.

    >>> credits = user_credits(["u1", "u2", "u1"], [1, 0, 0], [0, 1, 2])
    >>> credits.control.tolist(), credits.treatment.tolist()
    ([1, 0], [2, 1])
    """
    ids = np.asarray(user_ids)
    control = np.asarray(control_clicks, dtype=np.int64)
    treatment = np.asarray(treatment_clicks, dtype=np.int64)
    if not (ids.shape == control.shape == treatment.shape) or ids.ndim != 1:
        raise ValueError("user_ids and both credits must be 1-D arrays of the same length (one per exposure)")
    keep = np.ones(ids.size, dtype=bool) if degraded is None else ~np.asarray(degraded, dtype=bool)
    if keep.shape != ids.shape:
        raise ValueError("degraded must have one flag per exposure")
    if not keep.any():
        return UserCredits.of([], [])
    _, codes = np.unique(ids[keep], return_inverse=True)
    return UserCredits.of(
        np.bincount(codes, weights=control[keep]).astype(np.int64),
        np.bincount(codes, weights=treatment[keep]).astype(np.int64),
    )


@dataclass(frozen=True)
class DegradedCounts:
    """Interleaved exposures of the phase, and how many were degraded because each variant failed."""

    exposures: int = 0
    failed: tuple[tuple[str, int], ...] = ()

    @property
    def degraded(self) -> int:
        return sum(count for _, count in self.failed)

    def note(self) -> str:
        """One line for the report, or "" when nothing was degraded."""
        if self.degraded == 0:
            return ""
        share = f" ({self.degraded / self.exposures:.1%})" if self.exposures else ""
        by_variant = ", ".join(f"{name} failed in {count:,}" for name, count in self.failed if count)
        return (
            f"{self.degraded:,} of {self.exposures:,} interleaved exposures{share} were degraded ({by_variant}): "
            "the other model's list was served alone; counted as availability loss, not as preference"
        )


@dataclass(frozen=True)
class SequentialPreference:
    """The always-valid interval of Δ and its p-value (valid however often the report is looked at)."""

    interval: Estimate
    p_value: float
    tuning: float


@dataclass(frozen=True)
class Preference:
    """The interleaving comparison of one phase: votes, Δ with its interval and p, the verdict.

    ``delta``/``p_value`` are None when undefined (``reason`` says why); ``sequential`` is None when the
    confidence sequence is (``sequential_reason``).
    """

    control: str
    treatment: str
    users: int
    users_with_click: int
    wins: int
    losses: int
    ties: int
    control_clicks: int
    treatment_clicks: int
    delta: Estimate | None
    p_value: float | None
    significant: bool
    reason: str | None
    sequential: SequentialPreference | None
    sequential_reason: str | None
    degraded: DegradedCounts
    method: str
    verdict: str
    sequential_verdict: str


def compare_interleaved(
    control: str,
    treatment: str,
    credits: UserCredits,
    degraded: DegradedCounts | None = None,
    *,
    alpha: float = ALPHA,
    tuning: float = SEQUENTIAL_TUNING,
) -> Preference:
    """The preference between `control` and `treatment` from one phase's per-user credits (module docstring)."""
    degraded = degraded or DegradedCounts()
    votes = credits.votes()
    wins, losses = int(np.sum(votes > 0)), int(np.sum(votes < 0))
    clicking = int(votes.size)
    delta, p_value, reason = sign_test(wins, losses, clicking, alpha)
    sequential, sequential_reason = _sequential(votes, alpha, tuning)
    significant = p_value is not None and p_value < alpha
    result = Preference(
        control=control,
        treatment=treatment,
        users=credits.users,
        users_with_click=clicking,
        wins=wins,
        losses=losses,
        ties=clicking - wins - losses,
        control_clicks=int(credits.control.sum()),
        treatment_clicks=int(credits.treatment.sum()),
        delta=delta,
        p_value=p_value,
        significant=significant,
        reason=reason,
        sequential=sequential,
        sequential_reason=sequential_reason,
        degraded=degraded,
        method=METHOD,
        verdict="",
        sequential_verdict="",
    )
    return _with_verdicts(result)


def sign_test(
    wins: int, losses: int, clicking: int, alpha: float = ALPHA
) -> tuple[Estimate | None, float | None, str | None]:
    """Δ = (wins - losses) / clicking with its interval, and the exact two-sided sign test's p.

    ``(None, None, reason)`` when undefined: nobody clicked, or every clicking user tied.

    >>> estimate, p, _ = sign_test(wins=9, losses=1, clicking=12)
    >>> round(estimate.value, 3), round(p, 4)
    (0.667, 0.0215)
    """
    if wins < 0 or losses < 0 or wins + losses > clicking:
        raise ValueError(f"need 0 <= wins + losses <= clicking, got {wins}, {losses}, {clicking}")
    if clicking == 0:
        return None, None, "no user has a credited click yet"
    voting = wins + losses
    if voting == 0:
        return None, None, f"all {clicking:,} users with a credited click are ties: no preference to test"
    # scipy.stats.binomtest(wins, voting, 0.5) and its proportion_ci(method="exact") give the same numbers (the
    # tests check), at ~100x the cost: the null is symmetric, so the two-sided p is twice the smaller tail.
    p_value = min(1.0, 2.0 * float(special.bdtr(min(wins, losses), voting, 0.5)))
    low = float(special.betaincinv(wins, losses + 1, alpha / 2)) if wins > 0 else 0.0
    high = float(special.betaincinv(wins + 1, losses, 1 - alpha / 2)) if losses > 0 else 1.0
    scale = voting / clicking
    return Estimate((wins - losses) / clicking, scale * (2 * low - 1), scale * (2 * high - 1)), p_value, None


def asymptotic_confidence_sequence(
    mean: float, variance: float, n: int, alpha: float = ALPHA, tuning: float = SEQUENTIAL_TUNING
) -> Estimate | None:
    """Two-sided always-valid interval for a mean from n i.i.d. observations (Waudby-Smith et al. 2023, eq. 9).

        half-width = sqrt(variance) * sqrt(2 (n ρ² + 1) / (n ρ)² * ln(sqrt(n ρ² + 1) / alpha))
        ρ = sqrt((-2 ln alpha + ln(-2 ln alpha + 1)) / tuning)

    `variance` is per observation (not of the mean). GrowthBook's sequential test uses this form with
    tuning = 5000. None when it is undefined (n < 2, or a variance that is not finite and positive).

    >>> round(asymptotic_confidence_sequence(0.1, 1.0, 5000).high, 4)
    0.1429
    """
    if n < 2 or not (math.isfinite(variance) and variance > 0) or not math.isfinite(mean):
        return None
    rho2 = _rho_squared(alpha, tuning)
    growth = n * rho2 + 1
    half = math.sqrt(variance) * math.sqrt(2 * growth / (n * n * rho2) * math.log(math.sqrt(growth) / alpha))
    return Estimate(mean, mean - half, mean + half)


def always_valid_p_value(
    mean: float, variance: float, n: int, alpha: float = ALPHA, tuning: float = SEQUENTIAL_TUNING
) -> float | None:
    """The smallest level at which the confidence sequence (ρ fixed by `alpha` and `tuning`) excludes 0.

    Solving half-width(a) = |mean| for a: p = min(1, sqrt(n ρ² + 1) * exp(-mean² (n ρ)² / (2 variance (n ρ² + 1)))).
    Below `alpha` exactly when ``asymptotic_confidence_sequence`` excludes 0.
    """
    if n < 2 or not (math.isfinite(variance) and variance > 0) or not math.isfinite(mean):
        return None
    rho2 = _rho_squared(alpha, tuning)
    growth = n * rho2 + 1
    exponent = -(mean**2) * n * n * rho2 / (2 * variance * growth)
    return float(min(1.0, math.sqrt(growth) * math.exp(exponent)))


def _rho_squared(alpha: float, tuning: float) -> float:
    if not 0 < alpha < 1 or not tuning > 0:
        raise ValueError(f"need 0 < alpha < 1 and tuning > 0, got alpha={alpha}, tuning={tuning}")
    log_alpha = math.log(alpha)
    return (-2 * log_alpha + math.log(-2 * log_alpha + 1)) / tuning


def _sequential(
    votes: NDArray[np.int64], alpha: float, tuning: float
) -> tuple[SequentialPreference | None, str | None]:
    if votes.size < 2:
        return None, f"needs at least 2 users with a credited click, has {votes.size}"
    variance = float(np.var(votes, ddof=1))
    if variance <= 0:
        side = "tie" if votes[0] == 0 else "vote the same way"
        return None, f"all {votes.size:,} users with a credited click {side}: no spread to bound the sequence with"
    mean = float(votes.mean())
    interval = asymptotic_confidence_sequence(mean, variance, int(votes.size), alpha, tuning)
    p_value = always_valid_p_value(mean, variance, int(votes.size), alpha, tuning)
    if interval is None or p_value is None:  # unreachable after the checks above; keeps the None contract
        return None, "confidence sequence undefined"
    bounded = Estimate(interval.value, max(interval.low, -1.0), min(interval.high, 1.0))  # Δ lies in [-1, 1]
    return SequentialPreference(bounded, p_value, tuning), None


def _with_verdicts(result: Preference) -> Preference:
    return replace(result, verdict=preference_verdict(result), sequential_verdict=sequential_verdict(result))


def preference_verdict(result: Preference) -> str:
    """One line in the A/B verdict's style.

    "users prefer model_b's recommendations: Δ = +0.12 [0.07, 0.17], p < 0.001", or "no significant
    preference yet between ... (Δ = ..., p = ...)", or why there is no verdict.
    """
    pair = f"{result.control} and {result.treatment}"
    if result.delta is None or result.p_value is None:
        return f"not enough data yet to compare {pair} by interleaving: {result.reason}"
    effect = f"Δ = {format_delta(result.delta)}, {format_p(result.p_value)}"
    if result.significant:
        preferred = result.treatment if result.delta.value > 0 else result.control
        return f"users prefer {preferred}'s recommendations: {effect}"
    return f"no significant preference yet between {pair} ({effect})"


def sequential_verdict(result: Preference) -> str:
    """The always-valid line: safe to act on whenever it is read, unlike the fixed-horizon one."""
    if result.sequential is None:
        return f"no always-valid interval yet: {result.sequential_reason}"
    interval, p_value = result.sequential.interval, result.sequential.p_value
    effect = f"Δ = {format_delta(interval)} (always valid), {format_p(p_value)}"
    if interval.low > 0 or interval.high < 0:
        preferred = result.treatment if interval.value > 0 else result.control
        return f"users prefer {preferred}'s recommendations at any stopping time: {effect}"
    return f"no always-valid preference yet between {result.control} and {result.treatment} ({effect})"


def format_delta(estimate: Estimate) -> str:
    """Δ with its interval: "+0.12 [0.07, 0.17]" (three decimals when everything is below 0.05)."""
    scale = max(abs(estimate.low), abs(estimate.high), abs(estimate.value))
    digits = 2 if scale >= 0.05 else 3
    return f"{estimate.value:+.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def format_p(p_value: float, label: str = "p") -> str:
    """As the A/B verdict writes it (router.report.build.format_p; repeated here to keep this module a leaf)."""
    return f"{label} < 0.001" if p_value < 0.001 else f"{label} = {p_value:.3f}"


def degraded_counts(variants: Sequence[str], failed: Sequence[str | None]) -> DegradedCounts:
    """Count one phase's interleaved exposures from their `failed` variant (None: both backends answered).

    >>> degraded_counts(["model_a", "model_b"], [None, "model_b", None]).failed
    (('model_a', 0), ('model_b', 1))
    """
    unknown = {name for name in failed if name is not None and name not in variants}
    if unknown:
        raise ValueError(f"failed variants {sorted(unknown)} are not in {list(variants)}")
    return DegradedCounts(len(failed), tuple((name, sum(1 for f in failed if f == name)) for name in variants))
