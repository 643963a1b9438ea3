"""The Report: a frozen dataclass tree holding every number the renderers show, for one phase.

Shares are fractions (0.031, not 3.1 %); differences are fractions too (0.021 = +2.1 pp); times are Unix
seconds; latencies are milliseconds. ``None`` means "not defined here" (no exposures, too few units, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.report.interleaving import Preference
from router.report.stats import Difference, Estimate, SampleRatio, Unit


@dataclass(frozen=True)
class Latency:
    """Router-side latency percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class OfflineMetrics:
    """What the variant's backend said about itself (``GET /info``): algorithm, version, holdout metrics."""

    algorithm: str | None
    version: str | None
    metrics: Mapping[str, float | None]


@dataclass(frozen=True)
class VariantSummary:
    """One variant's analysed traffic (``assignment = 'strategy'`` exposures only) in the phase."""

    name: str
    weight: float
    """Configured share of traffic, normalised to sum to 1 over the phase's variants."""
    units: int
    """Units of randomisation: users under ``hash``, requests under ``random``."""
    exposures: int
    users: int
    requests_per_user: float | None
    errors: int
    error_rate: Estimate | None
    latency_ms: Latency | None
    feedback_events: int
    feedback_by_event: Mapping[str, int]
    clicked_exposures: int
    ctr: Estimate | None
    """Share of exposures with at least one click; the interval accounts for the unit of analysis."""
    converted_users: int
    conversion: Estimate | None
    """Share of the variant's users with at least one click."""
    offline: OfflineMetrics | None


@dataclass(frozen=True)
class TreatmentResult:
    """One treatment against the control: the primary metric (CTR), conversion, power, and the verdict."""

    treatment: str
    control: str
    ctr: Difference
    p_adjusted: float | None
    """The CTR p-value after the Holm correction over all treatments (equal to it with one treatment)."""
    significant: bool
    conversion: Difference | None
    """Per-user conversion; None under ``random``, where users are not the unit of randomisation."""
    detectable_effect: float | None
    """The absolute CTR difference the sample-size figure is for."""
    more_units_needed: int | None
    """About how many more units per variant give 80 % power to detect ``detectable_effect``."""
    verdict: str


@dataclass(frozen=True)
class Exclusions:
    """Exposures and feedback left out of the analysis because they were not assigned by the strategy."""

    exposures_by_assignment: Mapping[str, int]
    exposures: int
    feedback_events: int


@dataclass(frozen=True)
class TimelineSeries:
    """Cumulative CTR of one variant over the phase, at up to a few hundred points."""

    variant: str
    minutes: tuple[float, ...]
    """Minutes since the phase started."""
    ctr: tuple[float, ...]


@dataclass(frozen=True)
class LatencyHistogram:
    """Latency counts per variant over shared, logarithmically spaced bins (milliseconds)."""

    edges: tuple[float, ...]
    counts: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class InterleavingResult:
    """An interleaving phase: which model's recommendations users prefer, one vote per user (docs/interleaving.md).

    `verdict` leads the report: the always-valid line, safe to act on whenever the report is read (the live
    /report is read often). The fixed-horizon line (`preference.verdict`) is shown beside it, valid only at one
    planned look.
    """

    label: str
    """What the merged answers were served (and logged) as: "interleaved"."""
    method: str
    """How the lists were merged: "team-draft"."""
    exposures: int
    """Every interleaved exposure of the phase, degraded and failed ones included."""
    failed: int
    """Interleaved requests both backends failed (answered with an error; no list, no vote)."""
    preference: Preference
    verdict: str


@dataclass(frozen=True)
class Report:
    """The A/B results of one phase of one experiment."""

    experiment: str
    phase: int
    phases: tuple[int, ...]
    strategy: str
    unit: Unit
    control: str
    started_at: float
    first_exposure_at: float
    last_exposure_at: float
    generated_at: float
    alpha: float
    target_power: float
    correction: str
    srm: SampleRatio | None
    verdict_withheld: bool
    users_in_several_variants: int
    exclusions: Exclusions
    variants: tuple[VariantSummary, ...]
    comparisons: tuple[TreatmentResult, ...]
    timeline: tuple[TimelineSeries, ...]
    latency_histogram: LatencyHistogram | None
    notes: tuple[str, ...]
    """Warnings an experimenter must read (SRM, users in several variants, variants without traffic)."""
    interleaving: InterleavingResult | None = None
    """Set for a phase that served merged lists (strategy interleave); the A/B tables then show one row, the
    merged lists, and the comparison of the two models is this."""


__all__ = [
    "Difference",
    "Estimate",
    "Exclusions",
    "InterleavingResult",
    "Latency",
    "LatencyHistogram",
    "OfflineMetrics",
    "Report",
    "SampleRatio",
    "TimelineSeries",
    "TreatmentResult",
    "VariantSummary",
]
