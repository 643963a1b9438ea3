"""The report's shadow section: each shadow against each live variant that served the same requests.

    with store.snapshot() as snapshot:
        section = read_shadow_section(snapshot, phase_record, truth=None)   # None when the phase has no shadow
    section.shadows[0].comparisons[0].lists.rbo.value

Availability, errors and latency come from the store's aggregates over every matched call. The list comparison
(Jaccard@k, RBO, tau, click coverage and, with a ground truth, affinity) needs both lists of each request, so
it reads pairs in chunks of `CHUNK` and keeps per-user sums only (`ListAccumulator`); and it is bounded in CPU
too: above `MAX_COMPARED_REQUESTS` pairs per shadow, it compares a hash sample of whole users (every request of
a sampled user, so the clustered intervals stay honest), and the section states the sample. The noise floor of
a live variant is a shadow pointed at its URL when there is one, else its answers to repeated requests.
docs/shadow.md defines every number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from router.report.shadow import (
    DEFAULT_K,
    DEFAULT_PERSISTENCE,
    AffinityComparison,
    LatencySideBySide,
    ListAccumulator,
    ListComparison,
    Measure,
    NoiseFloor,
    availability_by_user,
    latency_of_quantiles,
    noise_floor,
    noise_floor_of,
)
from router.store.reader import PhaseRecord, PhaseSnapshot
from router.strategies import unit_point

#: Pairs (both lists) compared per shadow at most, about: above it, a hash sample of users is compared.
#: At about 50 µs a request (Jaccard, RBO, tau, coverage), 20,000 pairs cost a second of the report's CPU.
MAX_COMPARED_REQUESTS = 20_000

#: Pairs read from the store at once: the most lists the report holds in memory at any moment.
CHUNK = 2_000

#: Users whose first two answers from a live variant are compared when no shadow measures its noise floor.
REPEATED_USERS = 2_000

#: The salt of the report's user sample (independent of the A/B split and of every shadow's membership).
SAMPLE_SALT = "shadow-report/"

#: The smallest sampling rate (the hash's grid is 1/10,000).
MIN_RATE = 1e-4

#: Analysed live exposures, as in the rest of the report.
ANALYSED = ("strategy",)

#: The mean ground-truth affinity of a list for its user (None when the truth does not know the user or items).
ListAffinity = Callable[[str, Sequence[int]], float | None]


@dataclass(frozen=True)
class ShadowVsLive:
    """One shadow against one live variant, over the analysed requests that variant served and the shadow got."""

    shadow: str
    variant: str
    self_comparison: bool
    """The shadow's URL is the variant's: the live model compared with itself (its noise floor)."""
    calls: int
    errors: Mapping[str, int]
    availability: Measure
    latency: LatencySideBySide
    lists: ListComparison
    affinity: AffinityComparison | None
    """Only with a ground truth (simulation): the mean true affinity of both lists, and shadow - live."""


@dataclass(frozen=True)
class ShadowSummary:
    """One shadow in the phase: where it lived, what could not be matched, how its lists were sampled."""

    shadow: str
    urls: tuple[str, ...]
    calls: int
    unmatched: int
    """Calls whose live exposure is not analysed (override, fallback) or was not stored."""
    pairs: int
    """Requests both answered (the population the list comparison describes)."""
    sample_rate: float
    """Share of users whose pairs were compared: 1.0 when the shadow has at most `max_compared` pairs."""
    compared_requests: int
    compared_users: int
    comparisons: tuple[ShadowVsLive, ...]


@dataclass(frozen=True)
class VariantNoiseFloor:
    """How far a live variant's lists differ from themselves, and how that was measured."""

    variant: str
    source: str
    floor: NoiseFloor


@dataclass(frozen=True)
class ShadowSection:
    """Every shadow of the phase against the live variants, with the parameters the numbers depend on."""

    k: int
    persistence: float
    max_compared: int
    shadows: tuple[ShadowSummary, ...]
    noise_floors: tuple[VariantNoiseFloor, ...]
    truth: str | None
    """What ground truth the affinities use (None: no truth was given, so there are none)."""


def read_shadow_section(
    snapshot: PhaseSnapshot,
    phase: PhaseRecord,
    *,
    truth: ListAffinity | None = None,
    truth_description: str | None = None,
    k: int = DEFAULT_K,
    persistence: float = DEFAULT_PERSISTENCE,
    max_compared: int = MAX_COMPARED_REQUESTS,
    chunk: int = CHUNK,
) -> ShadowSection | None:
    """The shadow section of `phase`, or None when no shadow was called in it."""
    names = snapshot.shadow_names(phase.phase)
    if not names:
        return None
    urls = _variant_urls(phase.config)
    shadows = tuple(
        _read_shadow(snapshot, phase.phase, name, urls, truth, k, persistence, max_compared, chunk) for name in names
    )
    variants = sorted({c.variant for s in shadows for c in s.comparisons}, key=_order(urls))
    floors = tuple(_noise_floor(snapshot, phase.phase, variant, shadows, k, persistence) for variant in variants)
    return ShadowSection(
        k=k,
        persistence=persistence,
        max_compared=max_compared,
        shadows=shadows,
        noise_floors=floors,
        truth=(truth_description or "given") if truth is not None else None,
    )


def _read_shadow(
    snapshot: PhaseSnapshot,
    phase: int,
    name: str,
    variant_urls: Mapping[str, str],
    truth: ListAffinity | None,
    k: int,
    persistence: float,
    max_compared: int,
    chunk: int,
) -> ShadowSummary:
    totals = snapshot.shadow_totals(phase, name, assignments=ANALYSED)
    latency = snapshot.shadow_latency(phase, name, assignments=ANALYSED, quantiles=(0.5, 0.99))
    pairs = int(totals.succeeded.sum())
    rate = 1.0 if pairs <= max_compared else max(max_compared / pairs, MIN_RATE)
    accumulators = {variant: ListAccumulator(k=k, persistence=persistence) for variant in totals.variants}
    after: str | None = None
    while batch := snapshot.shadow_pairs(phase, name, assignments=ANALYSED, after=after, limit=chunk):
        after = batch[-1].request_id
        for pair in batch:
            if rate < 1.0 and unit_point(SAMPLE_SALT, pair.user_id) >= rate:
                continue
            accumulator = accumulators.setdefault(pair.variant, ListAccumulator(k=k, persistence=persistence))
            if truth is None:
                accumulator.add(pair.user_id, pair.live, pair.shadow, pair.clicked)
            else:
                accumulator.add(
                    pair.user_id,
                    pair.live,
                    pair.shadow,
                    pair.clicked,
                    live_affinity=truth(pair.user_id, pair.live),
                    shadow_affinity=truth(pair.user_id, pair.shadow),
                    with_affinity=True,
                )
    own_url = totals.urls[0] if len(totals.urls) == 1 else None
    comparisons = []
    for variant in sorted(totals.variants, key=_order(variant_urls)):
        mask = totals.of(variant)
        paired = latency.get(variant)
        comparisons.append(
            ShadowVsLive(
                shadow=name,
                variant=variant,
                self_comparison=own_url is not None and variant_urls.get(variant) == own_url,
                calls=int(totals.calls[mask].sum()),
                errors=dict(totals.errors.get(variant, {})),
                availability=availability_by_user(totals.calls[mask], totals.succeeded[mask]),
                latency=latency_of_quantiles(
                    paired.live if paired else None,
                    paired.shadow if paired else None,
                    paired.pairs if paired else 0,
                    paired.pairs if paired else 0,
                ),
                lists=accumulators[variant].comparison(),
                affinity=accumulators[variant].affinity(),
            )
        )
    return ShadowSummary(
        shadow=name,
        urls=totals.urls,
        calls=int(totals.calls.sum()),
        unmatched=totals.unmatched,
        pairs=pairs,
        sample_rate=rate,
        compared_requests=sum(a.requests for a in accumulators.values()),
        compared_users=len({u for a in accumulators.values() for u in a.user_ids}),
        comparisons=tuple(comparisons),
    )


def _noise_floor(
    snapshot: PhaseSnapshot,
    phase: int,
    variant: str,
    shadows: Sequence[ShadowSummary],
    k: int,
    persistence: float,
) -> VariantNoiseFloor:
    """A shadow at the variant's own URL if there is one (the same requests twice), else repeated requests."""
    for summary in shadows:
        for comparison in summary.comparisons:
            if comparison.variant == variant and comparison.self_comparison and comparison.lists.requests:
                source = f"shadow {summary.shadow} (the variant's own URL): the same requests answered twice"
                return VariantNoiseFloor(variant, source, noise_floor_of(comparison.lists))
    repeated = snapshot.repeated_lists(phase, variant, assignments=ANALYSED, limit=REPEATED_USERS)
    if not repeated:
        statement = f"no self-comparison: no user got two answers from {variant}; point a shadow at its URL for one"
        return VariantNoiseFloor(variant, "none", NoiseFloor(0, 0, None, statement, None))
    source = (
        f"repeated requests: each user's first two answers from {variant} for one k (at most {REPEATED_USERS:,} users)"
    )
    floor = noise_floor(
        [r.user_id for r in repeated],
        [r.first for r in repeated],
        [r.second for r in repeated],
        k=k,
        persistence=persistence,
    )
    return VariantNoiseFloor(variant, source, floor)


def _variant_urls(config: Mapping[str, object]) -> dict[str, str]:
    """Variant name -> base URL, in config order, from the phase's recorded configuration."""
    variants = config.get("variants")
    urls: dict[str, str] = {}
    if isinstance(variants, list):
        for entry in variants:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                urls[entry["name"]] = str(entry.get("url", "")).rstrip("/")
    return urls


def _order(urls: Mapping[str, str]) -> Callable[[str], tuple[int, str]]:
    """Sort key: the phase's variants in config order (the control first), then any other name."""
    names = list(urls)
    return lambda name: (names.index(name) if name in names else len(names), name)


__all__ = [
    "CHUNK",
    "MAX_COMPARED_REQUESTS",
    "ListAffinity",
    "ShadowSection",
    "ShadowSummary",
    "ShadowVsLive",
    "VariantNoiseFloor",
    "read_shadow_section",
]
