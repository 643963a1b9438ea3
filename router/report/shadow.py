"""How a shadow's lists compare with the live lists of the same requests (pure: lists and arrays in, values out).

Per request, over two lists of item ids, best first (a repeated item counts at its first position only):

    >>> jaccard_at_k([1, 2, 3], [3, 2, 9], k=3)          # |{2, 3}| / |{1, 2, 3, 9}|
    0.5
    >>> round(rank_biased_overlap([1, 2, 3, 4, 5], [2, 3, 4, 1, 5], persistence=0.9), 4)
    0.828
    >>> kendall_tau([1, 2, 3], [3, 2, 1])                 # the common items in the opposite order
    -1.0
    >>> clicks_covered(live=[1, 2, 3], clicked=[2, 3, 7], shadow=[3, 8, 9], k=3)   # 7 was not shown
    (1, 2)

Across requests, `compare_lists` gives each as a mean with a 95% interval clustered by user (the delta
method on per-user sums: a user's requests are not independent), `click_coverage` the share of clicked
live items the shadow also ranked in its top k, `availability` the share of shadow calls that succeeded,
`latency_side_by_side` p50/p99 of both, `compare_affinity` (simulation) the ground-truth affinity of both
lists, `noise_floor` the same numbers for a model compared with itself. Nothing here returns NaN or raises on
odd data: an undefined value is None, and every `Measure` says why (docs/shadow.md defines every number).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as scipy_stats

from router.report.stats import ALPHA, UnitCounts, percentiles, ratio_interval

#: RBO's persistence p: the probability that a reader who compared the lists to depth d goes on to d + 1.
#: At 0.9 the top 10 ranks carry about 86% of the weight (Webber et al. 2010, eq. 21).
DEFAULT_PERSISTENCE = 0.9

#: The depth of Jaccard@k and of click coverage when the report does not say otherwise.
DEFAULT_K = 10

Items = Sequence[int]


@dataclass(frozen=True)
class Measure:
    """A mean over requests (or a share) with its confidence interval, and why a part of it is missing.

    `value` is None when nothing could be measured; `low`/`high` are None when there is a value but no
    interval (one user, for instance). `requests` and `users` are what the value was computed over (for
    click coverage `requests` counts clicked live items, the denominator); `skipped` the requests where the
    per-request value is undefined (e.g. tau with fewer than two common items).
    """

    value: float | None
    low: float | None
    high: float | None
    requests: int
    users: int
    skipped: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class ListComparison:
    """Shadow vs live lists over the requests both answered."""

    k: int
    persistence: float
    requests: int
    users: int
    identical: int  # requests whose two lists are equal (after removing repeats)
    jaccard: Measure
    rbo: Measure
    kendall_tau: Measure
    click_coverage: Measure


@dataclass(frozen=True)
class LatencySideBySide:
    """p50 and p99 in milliseconds of the live answers and of the shadow calls (successful ones on both sides)."""

    live_p50: float | None
    live_p99: float | None
    shadow_p50: float | None
    shadow_p99: float | None
    live_calls: int
    shadow_calls: int
    reason: str | None = None


@dataclass(frozen=True)
class AffinityComparison:
    """Mean ground-truth affinity of the live and the shadow lists, and the paired difference shadow - live."""

    live: Measure
    shadow: Measure
    difference: Measure


@dataclass(frozen=True)
class NoiseFloor:
    """The live model compared with itself (called twice for the same requests): how far apart chance puts them."""

    requests: int
    identical: int
    deterministic: bool | None  # None when there is no self-comparison
    statement: str
    comparison: ListComparison | None


# -- one request --------------------------------------------------------------------------------------


def distinct(items: Items) -> tuple[int, ...]:
    """The list without repeats, each item at its first position (RBO and tau assume no repeats)."""
    return tuple(dict.fromkeys(items))


def jaccard_at_k(live: Items, shadow: Items, k: int = DEFAULT_K) -> float | None:
    """|top-k(live) ∩ top-k(shadow)| / |top-k(live) ∪ top-k(shadow)|; None when both lists are empty."""
    _check_k(k)
    a, b = set(distinct(live)[:k]), set(distinct(shadow)[:k])
    union = len(a | b)
    return len(a & b) / union if union else None


def rank_biased_overlap(live: Items, shadow: Items, persistence: float = DEFAULT_PERSISTENCE) -> float | None:
    """Extrapolated rank-biased overlap RBO_EXT of two finite lists (Webber, Moffat, Zobel 2010, eq. 32).

    With S the shorter list (length s), L the longer (length l) and X_d the overlap of their first d items
    (all of S once d > s):

        RBO_EXT = (1-p)/p [ sum_{d=1..l} X_d/d p^d + sum_{d=s+1..l} X_s (d-s)/(s d) p^d ] + [(X_l - X_s)/l + X_s/s] p^l

    that is, the agreement seen to depth l, with the unseen part assumed to agree as the seen part did.
    1 for equal lists, 0 for disjoint ones. None when a list is empty (there is no agreement to extrapolate).
    """
    if not 0 < persistence < 1:
        raise ValueError(f"persistence must lie in (0, 1), got {persistence}")
    a, b = distinct(live), distinct(shadow)
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    s, n_long = len(short), len(long)
    if s == 0:
        return None
    p = persistence
    seen_short: set[int] = set()
    seen_long: set[int] = set()
    overlap = 0
    x_s = 0
    weighted = 0.0  # sum_{d=1..n_long} X_d/d p^d
    extrapolated = 0.0  # sum_{d=s+1..n_long} X_s (d-s)/(s d) p^d
    for d in range(1, n_long + 1):
        y = long[d - 1]
        if d <= s:
            x = short[d - 1]
            if x == y:
                overlap += 1
            else:
                overlap += (x in seen_long) + (y in seen_short)
            seen_short.add(x)
        else:
            overlap += y in seen_short
        seen_long.add(y)
        if d == s:
            x_s = overlap
        weight = p**d
        weighted += overlap / d * weight
        if d > s:
            extrapolated += x_s * (d - s) / (s * d) * weight
    x_l = overlap
    value = (1 - p) / p * (weighted + extrapolated) + ((x_l - x_s) / n_long + x_s / s) * p**n_long
    return min(1.0, max(0.0, value))  # rounding can leave 1 + 1e-16


def kendall_tau(live: Items, shadow: Items) -> float | None:
    """Kendall's tau-b between the two lists' rankings of the items they share; None with fewer than two.

    Each list ranks its items without ties, so tau-b equals tau-a here: (concordant - discordant) / pairs.
    """
    a, b = distinct(live), distinct(shadow)
    shadow_rank = {item: rank for rank, item in enumerate(b)}
    common = [item for item in a if item in shadow_rank]
    if len(common) < 2:
        return None
    return tau_b(np.arange(len(common)), np.array([shadow_rank[item] for item in common]))


def tau_b(x: ArrayLike, y: ArrayLike) -> float | None:
    """Kendall's tau-b of paired values (ties allowed): sum sgn(dx) sgn(dy) / sqrt(sum sgn(dx)^2 sum sgn(dy)^2).

    None when one side is constant (the denominator is zero) or there are fewer than two pairs.
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("x and y must be 1-D arrays of the same length")
    if xs.size < 2:
        return None
    upper = np.triu_indices(xs.size, k=1)
    dx = np.sign(xs[:, None] - xs[None, :])[upper]
    dy = np.sign(ys[:, None] - ys[None, :])[upper]
    denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if denominator == 0:
        return None
    return float(np.sum(dx * dy)) / denominator


def clicks_covered(live: Items, clicked: Items, shadow: Items, k: int = DEFAULT_K) -> tuple[int, int]:
    """(clicked live items the shadow also ranked in its top k, clicked live items), each item once.

    Clicked items the live list did not show are ignored: they say nothing about either list.
    """
    _check_k(k)
    shown = set(live)
    eligible = [item for item in distinct(clicked) if item in shown]
    shadow_top = set(distinct(shadow)[:k])
    return sum(item in shadow_top for item in eligible), len(eligible)


# -- across requests ----------------------------------------------------------------------------------


def compare_lists(
    user_ids: Sequence[str],
    live: Sequence[Items],
    shadow: Sequence[Items],
    clicked: Sequence[Items] | None = None,
    *,
    k: int = DEFAULT_K,
    persistence: float = DEFAULT_PERSISTENCE,
    alpha: float = ALPHA,
) -> ListComparison:
    """Jaccard@k, RBO and tau (means over requests, CIs clustered by user) and click coverage.

    One entry per request that both the live variant and the shadow answered: the user, the live list, the
    shadow's list and (optionally) the items the user clicked on the live list.
    """
    _check_k(k)
    n = len(user_ids)
    if len(live) != n or len(shadow) != n or (clicked is not None and len(clicked) != n):
        raise ValueError("user_ids, live, shadow (and clicked) need one entry per request")
    jaccards = [jaccard_at_k(a, b, k) for a, b in zip(live, shadow, strict=True)]
    rbos = [rank_biased_overlap(a, b, persistence) for a, b in zip(live, shadow, strict=True)]
    taus = [kendall_tau(a, b) for a, b in zip(live, shadow, strict=True)]
    identical = sum(distinct(a) == distinct(b) for a, b in zip(live, shadow, strict=True))
    if clicked is None:
        coverage = Measure(None, None, None, n, _count_users(user_ids), reason="no clicks were given")
    else:
        counts = [clicks_covered(a, c, b, k) for a, b, c in zip(live, shadow, clicked, strict=True)]
        coverage = click_coverage(user_ids, [c[0] for c in counts], [c[1] for c in counts], alpha=alpha)
    return ListComparison(
        k=k,
        persistence=persistence,
        requests=n,
        users=_count_users(user_ids),
        identical=identical,
        jaccard=clustered_mean(user_ids, jaccards, bounds=(0.0, 1.0), alpha=alpha),
        rbo=clustered_mean(user_ids, rbos, bounds=(0.0, 1.0), alpha=alpha),
        kendall_tau=clustered_mean(user_ids, taus, bounds=(-1.0, 1.0), alpha=alpha),
        click_coverage=coverage,
    )


def clustered_mean(
    user_ids: Sequence[str] | ArrayLike,
    values: Sequence[float | None] | ArrayLike,
    *,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    alpha: float = ALPHA,
) -> Measure:
    """Mean of per-request values with a delta-method interval clustered by user; None values are skipped.

    The mean is sum(values) / requests, a ratio of per-user sums; see `ratio_of_sums`.
    """
    ids = np.asarray(user_ids, dtype=object)
    raw = np.array([math.nan if v is None else float(v) for v in np.asarray(values, dtype=object).ravel()])
    if ids.size != raw.size:
        raise ValueError("one user id per value is needed")
    defined = np.isfinite(raw)
    skipped = int(raw.size - defined.sum())
    if not defined.any():
        reason = "no requests" if raw.size == 0 else f"undefined for all {raw.size} requests"
        return Measure(None, None, None, 0, 0, skipped, reason)
    _, codes = np.unique(ids[defined].astype(str), return_inverse=True)
    sums = np.bincount(codes, weights=raw[defined])
    counts = np.bincount(codes).astype(np.float64)
    return ratio_of_sums(sums, counts, bounds=bounds, alpha=alpha, skipped=skipped)


def ratio_of_sums(
    numerators: ArrayLike,
    denominators: ArrayLike,
    *,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    alpha: float = ALPHA,
    skipped: int = 0,
) -> Measure:
    """R = sum(numerators) / sum(denominators) over per-user arrays, with a normal delta-method interval.

    Var(R) = sum_u (num_u - R den_u)^2 / (U (U - 1) mean(den)^2), the variance clustered by user; the
    interval R +- z sqrt(Var) is clipped to `bounds`. No interval with fewer than two users.
    `requests` in the result is sum(denominators) (requests per user, when the numerators are sums over them).
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError("numerators and denominators must be 1-D arrays of the same length")
    if np.any(den < 0) or not np.all(np.isfinite(num)) or not np.all(np.isfinite(den)):
        raise ValueError("denominators must be >= 0 and every value finite")
    keep = den > 0
    num, den = num[keep], den[keep]
    users, total = int(den.size), float(den.sum())
    requests = round(total)
    if users == 0:
        return Measure(None, None, None, 0, 0, skipped, "no requests")
    ratio = float(num.sum()) / total
    value = min(max(ratio, bounds[0]), bounds[1])
    if users < 2:
        return Measure(value, None, None, requests, users, skipped, "one user: no interval")
    residuals = num - ratio * den
    variance = float(np.sum(residuals**2)) / (users * (users - 1) * float(den.mean()) ** 2)
    half = float(scipy_stats.norm.ppf(1 - alpha / 2)) * math.sqrt(variance)
    low, high = max(ratio - half, bounds[0]), min(ratio + half, bounds[1])
    return Measure(value, low, high, requests, users, skipped)


def click_coverage(
    user_ids: Sequence[str] | ArrayLike,
    covered: Sequence[int] | ArrayLike,
    eligible: Sequence[int] | ArrayLike,
    *,
    alpha: float = ALPHA,
) -> Measure:
    """Share of clicked live items the shadow also ranked in its top k, over per-request counts.

    Grouped by user into per-user (covered, clicked) sums, then `click_coverage_by_user`.
    """
    ids = np.asarray(user_ids, dtype=object).astype(str)
    hits = np.asarray(covered, dtype=np.int64)
    clicks = np.asarray(eligible, dtype=np.int64)
    if not (ids.size == hits.size == clicks.size):
        raise ValueError("one user id, covered and eligible count per request is needed")
    if ids.size == 0:
        return Measure(None, None, None, 0, 0, reason="no requests")
    _, codes = np.unique(ids, return_inverse=True)
    return click_coverage_by_user(np.bincount(codes, weights=hits), np.bincount(codes, weights=clicks), alpha=alpha)


def click_coverage_by_user(covered: ArrayLike, clicked: ArrayLike, *, alpha: float = ALPHA) -> Measure:
    """Sum(covered) / sum(clicked) over per-user arrays, Wilson interval at the clustered effective size.

    The interval is `router.report.stats.ratio_interval`, the report's CTR interval (delta method, clustered
    by user), so it stays in [0, 1]. Users without a clicked live item carry no information and are left out.
    `requests` here counts clicked items.
    """
    hits = np.rint(np.asarray(covered, dtype=np.float64)).astype(np.int64)
    clicks = np.rint(np.asarray(clicked, dtype=np.float64)).astype(np.int64)
    if hits.shape != clicks.shape or hits.ndim != 1:
        raise ValueError("covered and clicked must be 1-D arrays of the same length")
    if np.any(hits < 0) or np.any(hits > clicks):
        raise ValueError("covered must lie between 0 and clicked for every user")
    keep = clicks > 0
    users = int(keep.sum())
    if users == 0:
        return Measure(None, None, None, 0, 0, reason="no clicked live items")
    units = UnitCounts.of(exposures=clicks[keep], clicked=hits[keep])
    estimate = ratio_interval(units, alpha)
    assert estimate is not None  # there are clicked items
    if users < 2:
        return Measure(estimate.value, None, None, units.total_exposures, 1, reason="one user: no interval")
    return Measure(estimate.value, estimate.low, estimate.high, units.total_exposures, users)


def availability(user_ids: Sequence[str] | ArrayLike, succeeded: ArrayLike, *, alpha: float = ALPHA) -> Measure:
    """Share of shadow calls that succeeded (status 200), Wilson interval clustered by user.

    Dropped and abandoned calls are the router's capacity, not the shadow's: they are not calls and are
    reported from the dispatcher's counters instead.
    """
    ids = np.asarray(user_ids, dtype=object).astype(str)
    ok = np.asarray(succeeded, dtype=bool)
    if ids.size != ok.size:
        raise ValueError("one user id per call is needed")
    if ids.size == 0:
        return Measure(None, None, None, 0, 0, reason="no shadow calls")
    _, codes = np.unique(ids, return_inverse=True)
    return availability_by_user(np.bincount(codes), np.bincount(codes, weights=ok).astype(np.int64), alpha=alpha)


def availability_by_user(calls: ArrayLike, succeeded: ArrayLike, *, alpha: float = ALPHA) -> Measure:
    """`availability` from per-user counts (calls, succeeded calls), as the store aggregates them."""
    n = np.asarray(calls, dtype=np.int64)
    ok = np.asarray(succeeded, dtype=np.int64)
    keep = n > 0
    if not keep.any():
        return Measure(None, None, None, 0, 0, reason="no shadow calls")
    units = UnitCounts.of(exposures=n[keep], clicked=ok[keep])
    estimate = ratio_interval(units, alpha)
    assert estimate is not None  # there are calls
    if units.units < 2:
        return Measure(estimate.value, None, None, units.total_exposures, 1, reason="one user: no interval")
    return Measure(estimate.value, estimate.low, estimate.high, units.total_exposures, units.units)


def latency_side_by_side(live_ms: ArrayLike, shadow_ms: ArrayLike) -> LatencySideBySide:
    """p50/p99 of live and shadow latencies (ms). Live is the router's time to answer, shadow the call alone."""
    live = np.asarray(live_ms, dtype=np.float64)
    shadow = np.asarray(shadow_ms, dtype=np.float64)
    live, shadow = live[np.isfinite(live)], shadow[np.isfinite(shadow)]
    return latency_of_quantiles(
        percentiles(live, (50, 99)), percentiles(shadow, (50, 99)), int(live.size), int(shadow.size)
    )


def latency_of_quantiles(
    live: Sequence[float] | None, shadow: Sequence[float] | None, live_calls: int, shadow_calls: int
) -> LatencySideBySide:
    """`latency_side_by_side` from (p50, p99) already computed (e.g. by the store), with the same caveats."""
    reasons = []
    if live is None or live_calls == 0:
        reasons.append("no live latencies")
    if shadow is None or shadow_calls == 0:
        reasons.append("no successful shadow calls")
    if 0 < min(live_calls, shadow_calls) < 100:
        reasons.append("fewer than 100 calls on a side: p99 is close to that side's maximum")
    live_q = live if live is not None and live_calls else None
    shadow_q = shadow if shadow is not None and shadow_calls else None
    return LatencySideBySide(
        float(live_q[0]) if live_q else None,
        float(live_q[1]) if live_q else None,
        float(shadow_q[0]) if shadow_q else None,
        float(shadow_q[1]) if shadow_q else None,
        live_calls,
        shadow_calls,
        "; ".join(reasons) or None,
    )


def mean_affinity(affinities: ArrayLike) -> float | None:
    """Mean ground-truth affinity of one list's items (given by the simulation's truth); None for an empty list."""
    values = np.asarray(affinities, dtype=np.float64)
    return float(values.mean()) if values.size else None


def compare_affinity(
    user_ids: Sequence[str] | ArrayLike,
    live: Sequence[float | None] | ArrayLike,
    shadow: Sequence[float | None] | ArrayLike,
    *,
    alpha: float = ALPHA,
) -> AffinityComparison:
    """Per-request mean affinities of the live and the shadow lists (`mean_affinity`): both means and the
    paired difference shadow - live, each with an interval clustered by user. A request missing either side
    is skipped in the difference."""
    ids = np.asarray(user_ids, dtype=object)
    a = np.array([math.nan if v is None else float(v) for v in np.asarray(live, dtype=object).ravel()])
    b = np.array([math.nan if v is None else float(v) for v in np.asarray(shadow, dtype=object).ravel()])
    if not (ids.size == a.size == b.size):
        raise ValueError("one user id, live and shadow affinity per request is needed")
    return AffinityComparison(
        live=clustered_mean(ids, a, alpha=alpha),
        shadow=clustered_mean(ids, b, alpha=alpha),
        difference=clustered_mean(ids, b - a, alpha=alpha),
    )


def noise_floor(
    user_ids: Sequence[str],
    first: Sequence[Items],
    second: Sequence[Items],
    *,
    k: int = DEFAULT_K,
    persistence: float = DEFAULT_PERSISTENCE,
    alpha: float = ALPHA,
) -> NoiseFloor:
    """The list comparison of the live model with itself (the same requests answered twice), as Diffy does.

    When every pair is identical the model is deterministic on these requests and the report says
    "deterministic: noise floor 0": any difference between shadow and live is the models', not chance's.
    """
    if len(user_ids) == 0:
        return NoiseFloor(0, 0, None, "no self-comparison: no request was answered twice by the live model", None)
    return noise_floor_of(compare_lists(user_ids, first, second, k=k, persistence=persistence, alpha=alpha))


def noise_floor_of(comparison: ListComparison) -> NoiseFloor:
    """`noise_floor`'s statement for a self-comparison already made (e.g. accumulated by `ListAccumulator`)."""
    n = comparison.requests
    if n == 0:
        return NoiseFloor(0, 0, None, "no self-comparison: no request was answered twice by the live model", None)
    if comparison.identical == n:
        statement = f"deterministic: noise floor 0 (all {n} self-compared lists identical)"
        return NoiseFloor(n, n, True, statement, comparison)
    statement = (
        f"non-deterministic: {n - comparison.identical} of {n} self-compared lists differ; "
        "shadow-vs-live differences of this size are the live model's own variation"
    )
    return NoiseFloor(n, comparison.identical, False, statement, comparison)


# -- across requests, fed in chunks ------------------------------------------------------------------------

#: Per-user sums `ListAccumulator` keeps, by index.
_J, _JN, _R, _RN, _T, _TN, _COVERED, _CLICKED, _AL, _ALN, _AS, _ASN, _D, _DN = range(14)


class ListAccumulator:
    """`compare_lists` (and `compare_affinity`) over requests fed one at a time: only per-user sums are kept.

    So the memory grows with the users seen, never with the requests or their lists, and a report can read the
    pairs from the store in chunks. The results equal `compare_lists` over the same requests (tested).

        acc = ListAccumulator(k=10)
        for pair in chunk:
            acc.add(pair.user_id, pair.live, pair.shadow, pair.clicked)
        acc.comparison()          # ListComparison
    """

    def __init__(self, *, k: int = DEFAULT_K, persistence: float = DEFAULT_PERSISTENCE, alpha: float = ALPHA) -> None:
        _check_k(k)
        if not 0 < persistence < 1:
            raise ValueError(f"persistence must lie in (0, 1), got {persistence}")
        self.k, self.persistence, self.alpha = k, persistence, alpha
        self._users: dict[str, list[float]] = {}
        self.requests = 0
        self.identical = 0
        self._skipped = [0, 0, 0, 0, 0, 0]  # jaccard, rbo, tau, affinity live, shadow, difference
        self._affinity_requests = 0

    def add(
        self,
        user_id: str,
        live: Items,
        shadow: Items,
        clicked: Items = (),
        *,
        live_affinity: float | None = None,
        shadow_affinity: float | None = None,
        with_affinity: bool = False,
    ) -> None:
        """One request both answered; `with_affinity` when the affinities (possibly None) were computed."""
        sums = self._users.get(user_id)
        if sums is None:
            sums = self._users[user_id] = [0.0] * 14
        self.requests += 1
        self.identical += distinct(live) == distinct(shadow)
        values = (
            jaccard_at_k(live, shadow, self.k),
            rank_biased_overlap(live, shadow, self.persistence),
            kendall_tau(live, shadow),
        )
        for slot, (index, value) in enumerate(zip((_J, _R, _T), values, strict=True)):
            if value is None:
                self._skipped[slot] += 1
            else:
                sums[index] += value
                sums[index + 1] += 1
        covered, eligible = clicks_covered(live, clicked, shadow, self.k)
        sums[_COVERED] += covered
        sums[_CLICKED] += eligible
        if with_affinity:
            self._affinity_requests += 1
            difference = None if live_affinity is None or shadow_affinity is None else shadow_affinity - live_affinity
            for slot, (index, value) in enumerate(
                zip((_AL, _AS, _D), (live_affinity, shadow_affinity, difference), strict=True), start=3
            ):
                if value is None or not math.isfinite(value):
                    self._skipped[slot] += 1
                else:
                    sums[index] += value
                    sums[index + 1] += 1

    @property
    def users(self) -> int:
        return len(self._users)

    @property
    def user_ids(self) -> tuple[str, ...]:
        """The users seen so far, in the order they first appeared."""
        return tuple(self._users)

    def comparison(self) -> ListComparison:
        """The same ListComparison `compare_lists` returns for the requests added so far."""
        table = self._table()
        if self.requests:
            coverage = click_coverage_by_user(table[:, _COVERED], table[:, _CLICKED], alpha=self.alpha)
        else:
            coverage = Measure(None, None, None, 0, 0, reason="no requests")
        return ListComparison(
            k=self.k,
            persistence=self.persistence,
            requests=self.requests,
            users=self.users,
            identical=self.identical,
            jaccard=self._mean(table, _J, self._skipped[0], (0.0, 1.0), self.requests),
            rbo=self._mean(table, _R, self._skipped[1], (0.0, 1.0), self.requests),
            kendall_tau=self._mean(table, _T, self._skipped[2], (-1.0, 1.0), self.requests),
            click_coverage=coverage,
        )

    def affinity(self) -> AffinityComparison | None:
        """`compare_affinity` over the requests added with affinities; None if none was."""
        if not self._affinity_requests:
            return None
        table, n = self._table(), self._affinity_requests
        bounds = (-math.inf, math.inf)
        return AffinityComparison(
            live=self._mean(table, _AL, self._skipped[3], bounds, n),
            shadow=self._mean(table, _AS, self._skipped[4], bounds, n),
            difference=self._mean(table, _D, self._skipped[5], bounds, n),
        )

    def _table(self) -> NDArray[np.float64]:
        if not self._users:
            return np.zeros((0, 14))
        return np.array(list(self._users.values()), dtype=np.float64)

    def _mean(
        self, table: NDArray[np.float64], index: int, skipped: int, bounds: tuple[float, float], total: int
    ) -> Measure:
        """As `clustered_mean` says it: the same reasons when nothing is defined."""
        counts = table[:, index + 1] if table.size else np.zeros(0)
        if not counts.sum():
            reason = "no requests" if total == 0 else f"undefined for all {total} requests"
            return Measure(None, None, None, 0, 0, skipped, reason)
        return ratio_of_sums(table[:, index], counts, bounds=bounds, alpha=self.alpha, skipped=skipped)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def _count_users(user_ids: Sequence[str] | ArrayLike) -> int:
    ids = np.asarray(user_ids, dtype=object)
    return int(np.unique(ids.astype(str)).size) if ids.size else 0
