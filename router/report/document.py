"""The Report: a frozen dataclass tree holding every number the renderers show, for one phase.

Shares are fractions (0.031, not 3.1 %); differences are fractions too (0.021 = +2.1 pp); times are Unix
seconds; latencies are milliseconds. ``None`` means "not defined here", and wherever a number can be missing
a ``reason`` says why (too few units, no variation, no plan configured, ...).

Every randomised exposure counts for the variant it was *assigned* to (intention to treat): a fallback
exposure is its assigned variant's, with the clicks it got; an error is an unclicked exposure of its variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from router.report.adaptive import AdaptiveSection
from router.report.interleaving import Preference
from router.report.shadow_section import ShadowSection
from router.report.stats import Estimate, SampleRatio, Unit

AnalysisKind = Literal["fixed", "sequential"]
Scale = Literal["share", "value"]
"""How a metric is shown: a share in % (differences in percentage points), or a plain value."""
GuardrailState = Literal["healthy", "harmful", "inconclusive"]


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
class MetricValue:
    """One variant's value of one metric with its (1 - alpha) interval, clustered by user."""

    metric: str
    label: str
    scale: Scale
    value: float | None
    interval: Estimate | None
    reason: str | None
    """Why the value or its interval is missing (None when both are there)."""


@dataclass(frozen=True)
class VariantSummary:
    """One variant's analysed traffic in the phase: every randomised exposure assigned to it."""

    name: str
    weight: float
    """Share of traffic in effect in the phase, normalised to sum to 1 (0 for a stopped variant)."""
    units: int
    """Units of randomisation: users under ``hash``, requests under ``random``."""
    exposures: int
    users: int
    requests_per_user: float | None
    errors: int
    """Exposures answered with an error status."""
    fallbacks: int
    """Exposures of this variant served by the fallback variant because this one failed (counted here)."""
    error_rate: MetricValue
    """(errors + fallbacks) / exposures: the share of this variant's exposures it failed."""
    latency_ms: Latency | None
    feedback_events: int
    feedback_by_event: Mapping[str, int]
    clicked_exposures: int
    ctr: MetricValue
    converted_users: int
    conversion: MetricValue
    """Share of the variant's users with at least one click."""
    metrics: tuple[MetricValue, ...]
    """The configured feedback metrics (rating mean, watch seconds per exposure, ...)."""
    offline: OfflineMetrics | None


@dataclass(frozen=True)
class MetricComparison:
    """Treatment vs control on one metric under one analysis, or why there is no comparison (``reason``).

    ``difference`` and ``relative`` carry the interval (fixed horizon) or the always-valid confidence sequence
    (sequential) at level 1 - alpha / m for m treatments, and ``p_value`` is adjusted the same way (Bonferroni),
    so ``significant`` (the interval excludes 0) and "p < alpha" are one statement.
    """

    metric: str
    label: str
    scale: Scale
    analysis: AnalysisKind
    control: float | None
    treatment: float | None
    difference: Estimate | None
    relative: Estimate | None
    p_value: float | None
    significant: bool
    compared_per: str
    """What one unit of the comparison is: "user", "request", or "user within each variant"."""
    method: str
    reason: str | None


@dataclass(frozen=True)
class PlanProgress:
    """The planned sample size of one analysis (from the configured minimum detectable effect), and progress."""

    analysis: AnalysisKind
    control_units: int | None
    treatment_units: int | None
    effect: float | None
    """The minimum detectable CTR difference, absolute (a relative one times the control's CTR)."""
    power: float
    fraction: float | None
    """Of the plan reached so far: the smaller arm's fraction (can exceed 1)."""
    reached: bool
    reason: str | None
    """Why there is no plan (none configured, no spread between units yet, ...)."""


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail of one treatment, judged on the sequential analysis (checked continuously)."""

    metric: str
    label: str
    scale: Scale
    direction: Literal["higher_is_worse", "lower_is_worse"]
    margin: float
    relative: bool
    action: Literal["stop", "alert"]
    state: GuardrailState
    reason: str
    control: float | None
    treatment: float | None
    worse_by: Estimate | None
    """How much worse the treatment is (positive = worse), with its always-valid sequence."""
    threshold_ms: float | None
    """latency_p99 only: the slow-request threshold the shares were counted with."""


@dataclass(frozen=True)
class Stop:
    """A variant stopped by a guardrail: its weight moved to the control, as a new phase."""

    variant: str
    guardrail: str
    at: float
    phase: int
    """The phase whose data showed the harm (the stop starts the next one)."""
    moved_to: str
    detail: str


@dataclass(frozen=True)
class TreatmentResult:
    """One treatment against the control: the verdict, what it rests on, and the guardrails."""

    treatment: str
    control: str
    analysis: AnalysisKind
    """The analysis the verdict uses (the config's ``analysis.sequential``)."""
    ctr: MetricComparison
    """The primary metric under that analysis."""
    ctr_other: MetricComparison | None
    """The other analysis where it is offered: fixed horizon when a planned size is configured (numbers only
    once it is reached), or the sequential view beside a fixed-horizon verdict."""
    plans: tuple[PlanProgress, ...]
    """Progress toward the planned size, the verdict's analysis first; empty when no plan is configured."""
    metrics: tuple[MetricComparison, ...]
    """Secondary metrics, always sequential (safe in a live report); never used for the verdict."""
    guardrails: tuple[GuardrailCheck, ...]
    stopped: Stop | None
    significant: bool
    verdict: str


@dataclass(frozen=True)
class AnalysisSummary:
    """The analysis plan the phase recorded (the config's ``analysis`` section)."""

    sequential: bool
    alpha: float
    tuning: float
    min_units: int
    minimum_detectable_effect: float | None
    relative: bool
    power: float


@dataclass(frozen=True)
class Exclusions:
    """Exposures and feedback left out of the analysis: QA overrides, which were not randomised."""

    exposures_by_assignment: Mapping[str, int]
    exposures: int
    feedback_events: int


@dataclass(frozen=True)
class TimelineSeries:
    """Cumulative CTR of one variant over the phase, at up to a few hundred points."""

    variant: str
    minutes: tuple[float, ...]
    """Minutes since the phase started, at the end of each time bucket in which the variant had exposures."""
    ctr: tuple[float, ...]
    exposures: tuple[int, ...] = ()
    """Cumulative exposures at each point (what the chart's confidence band is computed from)."""
    bucket_minutes: float = 0.0
    """The width of a time bucket: points further apart than this have a stretch without traffic between them."""


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
    analysis: AnalysisSummary
    correction: str
    srm: SampleRatio | None
    verdict_withheld: bool
    users_in_several_variants: int
    exclusions: Exclusions
    variants: tuple[VariantSummary, ...]
    comparisons: tuple[TreatmentResult, ...]
    stops: tuple[Stop, ...]
    """Stops in effect in this phase, and stops this phase's data caused (recorded by the next phase)."""
    timeline: tuple[TimelineSeries, ...]
    latency_histogram: LatencyHistogram | None
    notes: tuple[str, ...]
    """Warnings an experimenter must read (SRM, users in several variants, variants without traffic)."""
    interleaving: InterleavingResult | None = None
    """Set for a phase that served merged lists (strategy interleave); the A/B tables then show one row, the
    merged lists, and the comparison of the two models is this."""
    shadow: ShadowSection | None = None
    """Shadow variants against the live ones (docs/shadow.md); None when the phase had no shadow call."""
    adaptive: AdaptiveSection | None = None
    """Set for an adaptive phase (thompson, epsilon_greedy, docs/bandits.md): it replaces the A/B comparisons."""


__all__ = [
    "AnalysisSummary",
    "Estimate",
    "Exclusions",
    "GuardrailCheck",
    "InterleavingResult",
    "Latency",
    "LatencyHistogram",
    "MetricComparison",
    "MetricValue",
    "OfflineMetrics",
    "PlanProgress",
    "Report",
    "SampleRatio",
    "Stop",
    "TimelineSeries",
    "TreatmentResult",
    "VariantSummary",
]
