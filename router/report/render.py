"""Render a Report as Markdown (for a terminal), self-contained HTML (with inline SVG plots) and JSON.

Markdown and HTML show the same sections, built once by ``sections``; HTML adds the plots. Plots use
matplotlib's object API (``Figure``, no pyplot), so rendering never touches a GUI backend or global state.

    print(render_markdown(build_report(backend_for("sqlite:///results/outcomes.sqlite3"))))   # router.store
"""

from __future__ import annotations

import dataclasses
import html
import io
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from router.report.adaptive_render import adaptive_blocks
from router.report.document import (
    GuardrailCheck,
    InterleavingResult,
    MetricComparison,
    MetricValue,
    PlanProgress,
    Report,
    Scale,
    TimelineSeries,
    TreatmentResult,
)
from router.report.interleaving import SEQUENTIAL_METHOD, format_delta
from router.report.load import PhaseList
from router.report.shadow_render import shadow_blocks
from router.report.stats import Estimate
from router.report.verdict import format_effect, format_p, format_pp, format_value

JSON_VERSION = 2
"""2: intention to treat, ratio metrics, sequential/fixed analyses with plans, guardrails and stops (issue 12)."""
UNIT_METHODS = {
    "user": "per user: every metric is a ratio metric (e.g. clicked exposures / exposures, summed per user) "
    "whose variance is clustered by user (delta method)",
    "request": "per request: CTR, error rate and the slow-request share are compared per request; value "
    "metrics per user within each variant (conservative); per-variant intervals are clustered by user",
}
OFFLINE_LABELS = {
    "precision_at_10": "precision@10",
    "recall_at_10": "recall@10",
    "hit_rate_at_10": "hit rate@10",
    "coverage": "coverage",
    "rmse": "RMSE",
}
ANALYSIS_LABELS = {
    "sequential": "sequential (always valid: may be read at any time)",
    "fixed": "fixed horizon (valid once, at the planned size)",
}
NUMERIC = re.compile(r"^(?:[-+<]\s?)?[\d.,]+")  # cells right-aligned in HTML tables
BULLETED = ("verdict", "exclusions", "method", "interleaving-verdict", "interleaving-method")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Section:
    """A titled block of the report: paragraphs, then an optional table."""

    anchor: str
    title: str
    paragraphs: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()


# ---------------------------------------------------------------------------------------------- JSON


def report_to_json(report: Report) -> dict[str, Any]:
    """The report as JSON-able data (non-finite numbers become null)."""
    data = _finite(dataclasses.asdict(report))
    assert isinstance(data, dict)
    return {"report_version": JSON_VERSION, **data}


def report_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON Schema of `report_to_json`'s output, from the Report dataclasses (for /results in OpenAPI).

    Every number may be null (non-finite values are written as null); `report_version` is added.
    """
    from pydantic import TypeAdapter

    schema: dict[str, Any] = _nullable_numbers(
        TypeAdapter(Report).json_schema(mode="serialization", ref_template=ref_template)
    )
    schema["properties"] = {"report_version": {"const": JSON_VERSION}, **schema["properties"]}
    schema["required"] = ["report_version", *schema.get("required", [])]
    return schema


def _nullable_numbers(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_nullable_numbers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _nullable_numbers(value) for key, value in schema.items()}
    if result.get("type") == "number":
        result["type"] = ["number", "null"]
    return result


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- sections


def sections(report: Report) -> tuple[Section, ...]:
    """The report's content, shared by Markdown and HTML."""
    if report.interleaving is not None:
        return interleaving_sections(report, report.interleaving)
    if report.adaptive is not None:  # a bandit's phase: its own analysis replaces the A/B comparisons
        return (
            *(Section(*block) for block in adaptive_blocks(report.adaptive)),
            _traffic_section(report),
            _exclusions_section(report),
            *(Section(*block) for block in shadow_blocks(report.shadow)),
        )
    return (
        _verdict_section(report),
        _traffic_section(report),
        _outcomes_section(report),
        _comparisons_section(report),
        _plan_section(report),
        _guardrails_section(report),
        _srm_section(report),
        _offline_section(report),
        _exclusions_section(report),
        *(Section(*block) for block in shadow_blocks(report.shadow)),
        _method_section(report),
    )


def _header_lines(report: Report) -> tuple[str, ...]:
    phases = ", ".join(str(p) for p in report.phases)
    analysis = report.analysis
    return (
        f"Experiment **{report.experiment}**, phase **{report.phase}** (phases in the store: {phases}). "
        f"Phase started {_when(report.started_at)}; exposures from {_when(report.first_exposure_at)} "
        f"to {_when(report.last_exposure_at)}; report generated {_when(report.generated_at)}.",
        f"Strategy **{report.strategy}**, so the unit of analysis is the **{report.unit}** "
        f"({UNIT_METHODS[report.unit]}). Control: **{report.control}**. Analysis: "
        f"**{ANALYSIS_LABELS['sequential' if analysis.sequential else 'fixed']}**, alpha = {analysis.alpha:g}. "
        "Every randomised exposure counts for the variant it was assigned to (intention to treat).",
    )


def _srm_banner(report: Report) -> str | None:
    if not report.verdict_withheld or report.srm is None:
        return None
    return (
        f"SAMPLE-RATIO MISMATCH (chi-square p = {report.srm.p_value:.2g} < 0.001): the {report.unit}s per "
        "variant do not match the configured weights, so assignment or logging is broken and every verdict "
        "below is withheld."
    )


def _verdict_section(report: Report) -> Section:
    lines = tuple(
        f"**{c.treatment} vs {c.control}** - analysis: {ANALYSIS_LABELS[c.analysis]}; planned size: "
        f"{_plan_state(c.plans, report.unit)}; guardrails: {_guardrail_states(c.guardrails)}. **Verdict:** {c.verdict}"
        for c in report.comparisons
    )
    if not lines:
        lines = ("Only one variant in this phase: nothing to compare.",)
    return Section("verdict", "Verdict (primary metric: CTR per exposure)", lines)


def _plan_state(plans: Sequence[PlanProgress], unit: str) -> str:
    if not plans:
        return "none configured"
    plan = plans[0]
    if plan.fraction is None or plan.control_units is None:
        return f"not computable yet ({plan.reason})"
    state = "reached" if plan.reached else "not reached"
    return f"{state}, {plan.fraction:.0%} of {plan.control_units:,} {unit}s per variant"


def _guardrail_states(checks: Sequence[GuardrailCheck]) -> str:
    if not checks:
        return "none configured"
    return ", ".join(f"{g.metric} {g.state.upper() if g.state == 'harmful' else g.state}" for g in checks)


def _traffic_section(report: Report) -> Section:
    headers = (
        "variant",
        "weight",
        "users",
        "exposures",
        "requests/user",
        "errors",
        "served by fallback",
        "error rate [CI]",
        "latency p50 / p95 / p99 ms",
    )
    rows = tuple(
        (
            v.name,
            f"{v.weight:.0%}",
            f"{v.users:,}",
            f"{v.exposures:,}",
            f"{v.requests_per_user:.2f}" if v.requests_per_user is not None else "-",
            f"{v.errors:,}",
            f"{v.fallbacks:,}",
            _metric_value(v.error_rate),
            f"{v.latency_ms.p50:.1f} / {v.latency_ms.p95:.1f} / {v.latency_ms.p99:.1f}" if v.latency_ms else "-",
        )
        for v in report.variants
    )
    return Section(
        "traffic",
        "Traffic per variant",
        (
            "Every randomised exposure, counted for the variant it was assigned to (QA overrides excluded). "
            f"Units of randomisation ({report.unit}s): "
            + ", ".join(f"{v.name} {v.units:,}" for v in report.variants)
            + ". Errors are exposures the router answered with an error status; 'served by fallback' are this "
            "variant's exposures the fallback variant answered because this one failed. Both count as failures "
            "in the error rate.",
        ),
        headers,
        rows,
    )


def _outcomes_section(report: Report) -> Section:
    names = [m.label for m in report.variants[0].metrics] if report.variants else []
    headers = (
        "variant",
        "feedback events",
        "clicked exposures",
        "CTR [CI]",
        "converted users",
        "conversion [CI]",
        *(f"{name} [CI]" for name in names),
    )
    rows = tuple(
        (
            v.name,
            f"{v.feedback_events:,}"
            + (f" ({', '.join(f'{k} {n:,}' for k, n in v.feedback_by_event.items())})" if v.feedback_by_event else ""),
            f"{v.clicked_exposures:,}",
            _metric_value(v.ctr),
            f"{v.converted_users:,}",
            _metric_value(v.conversion),
            *(_metric_value(m) for m in v.metrics),
        )
        for v in report.variants
    )
    return Section(
        "outcomes",
        "Outcomes per variant",
        (
            "CTR = share of exposures with at least one click event (a fallback's clicks count for the variant "
            "assigned; an error is an exposure without clicks); conversion = share of the variant's users with "
            "at least one click. Every interval is a t interval at level "
            f"{1 - report.analysis.alpha:.0%}, clustered by user, shown as '-' with fewer than "
            f"{report.analysis.min_units} users with data.",
        ),
        headers,
        rows,
    )


def _comparisons_section(report: Report) -> Section:
    headers = (
        "treatment vs control",
        "metric",
        "analysis",
        "control",
        "treatment",
        "difference [CI]",
        "relative [CI]",
        "p (adjusted)",
        "compared per",
        "method",
    )
    rows: list[tuple[str, ...]] = []
    for c in report.comparisons:
        pair = f"{c.treatment} vs {c.control}"
        rows.append(_comparison_row(pair, c.ctr, "CTR (primary)"))
        if c.ctr_other is not None:
            rows.append(_comparison_row(pair, c.ctr_other, "CTR"))
        rows.extend(_comparison_row(pair, m, f"{m.label} (secondary)") for m in c.metrics)
    return Section(
        "comparisons",
        "Treatment vs control",
        (
            "Differences are treatment minus control (shares in percentage points, pp); relative = treatment / "
            "control - 1 (Fieller's interval). Sequential rows show the always-valid confidence sequence and "
            "p-value, fixed-horizon rows the Welch t interval (Satterthwaite degrees of freedom). Adjustment for "
            f"several treatments: {report.correction}; the interval and the p-value are adjusted alike, so a row is "
            f"significant (p < {report.analysis.alpha:g}) exactly when its interval excludes 0. Secondary metrics "
            "are always sequential and never decide the verdict.",
        ),
        headers,
        tuple(rows),
    )


def _comparison_row(pair: str, c: MetricComparison, label: str) -> tuple[str, ...]:
    relative = f"{c.relative.value:+.1%} [{c.relative.low:.1%}, {c.relative.high:.1%}]" if c.relative else "-"
    return (
        pair,
        label,
        c.analysis,
        _scaled(c.control, c.scale),
        _scaled(c.treatment, c.scale),
        _difference(c.difference, c.scale) if c.difference else "-",
        relative,
        format_p(c.p_value, "").strip(" =") if c.p_value is not None else "-",
        c.compared_per,
        c.method if c.reason is None else f"- ({c.reason})",
    )


def _plan_section(report: Report) -> Section:
    rows = tuple(
        (
            f"{c.treatment} vs {c.control}",
            ANALYSIS_LABELS[plan.analysis] + (" (the verdict's)" if plan.analysis == c.analysis else ""),
            f"{plan.control_units:,} / {plan.treatment_units:,}"
            if plan.control_units and plan.treatment_units
            else "-",
            format_effect(plan.effect) if plan.effect is not None else "-",
            f"{plan.power:.0%}",
            f"{plan.fraction:.0%}" if plan.fraction is not None else "-",
            ("reached" if plan.reached else "not reached") if plan.reason is None else f"- ({plan.reason})",
        )
        for c in report.comparisons
        for plan in c.plans
    )
    analysis = report.analysis
    if analysis.minimum_detectable_effect is None:
        text = (
            "No minimum detectable effect is configured (analysis.minimum_detectable_effect), so there is no planned "
            "size and no fixed-horizon analysis; the sequential verdict is valid whenever it is read."
        )
        return Section("plan", "Planned sample size", (text,))
    mde = analysis.minimum_detectable_effect
    effect = f"{mde:.3g} relative to the control's CTR" if analysis.relative else format_effect(mde)
    return Section(
        "plan",
        "Planned sample size",
        (
            f"Planned for a minimum detectable CTR difference of {effect} at {analysis.power:.0%} power and alpha "
            f"{analysis.alpha:g} (adjusted for several treatments), with the control's spread between units "
            "measured in this phase - never the observed difference. The fixed-horizon plan is where its test "
            "is valid; the sequential plan is the maximum size at which the sequence reaches the same power at "
            f"its last look (tuning {analysis.tuning:g} units).",
        ),
        (
            "treatment vs control",
            "analysis",
            f"planned {report.unit}s (control / treatment)",
            "MDE",
            "power",
            "progress",
            "state",
        ),
        rows,
    )


def _guardrails_section(report: Report) -> Section:
    rows = tuple(
        (
            f"{c.treatment} vs {c.control}",
            g.metric + (f" (slower than {g.threshold_ms:.1f} ms)" if g.threshold_ms is not None else ""),
            g.direction.replace("_", " "),
            _tolerance(g),
            g.action,
            g.state.upper() if g.state == "harmful" else g.state,
            _difference(g.worse_by, g.scale) if g.worse_by is not None else "-",
            g.reason,
        )
        for c in report.comparisons
        for g in c.guardrails
    )
    paragraphs = [
        "Each guardrail is judged on the sequential analysis (the router checks it every few seconds, which only "
        "an always-valid sequence allows): harmful when the treatment is worse than the tolerance over the whole "
        "sequence, healthy when it is not worse than the tolerance, inconclusive otherwise. 'worse by' is "
        "positive when the treatment is worse. A harmful guardrail with action 'stop' makes the router move the "
        "variant's weight to the control (a new phase); 'alert' only logs and counts.",
    ]
    paragraphs += [
        f"**{stop.variant} stopped by guardrail {stop.guardrail} at {_when(stop.at)}** (on phase {stop.phase}'s "
        f"data: {stop.detail}); its traffic goes to {stop.moved_to} until an admin resumes it "
        "(POST /admin/resume/{variant})."
        for stop in report.stops
    ]
    if not rows:
        paragraphs.append("No guardrails are configured (or no treatment runs in this phase).")
        return Section("guardrails", "Guardrails", tuple(paragraphs))
    return Section(
        "guardrails",
        "Guardrails",
        tuple(paragraphs),
        (
            "treatment vs control",
            "guardrail",
            "direction",
            "tolerance",
            "action",
            "state",
            "worse by [sequence]",
            "reason",
        ),
        rows,
    )


def _tolerance(g: GuardrailCheck) -> str:
    if g.relative:
        return f"{g.margin:.3g} relative"
    return f"{g.margin * 100:.3g} pp" if g.scale == "share" else f"{g.margin:.3g}"


def _srm_section(report: Report) -> Section:
    srm = report.srm
    if srm is None:
        return Section("srm", "Sample ratio", ("No units yet: nothing to check.",))
    status = "**MISMATCH: verdicts withheld**" if srm.mismatch else "ok"
    rows = tuple(
        (v.name, f"{v.weight:.1%}", f"{expected:,.1f}", f"{observed:,}", f"{observed - expected:+,.1f}")
        for v, expected, observed in zip(report.variants, srm.expected, srm.observed, strict=True)
    )
    return Section(
        "srm",
        "Sample ratio",
        (
            f"Chi-square of {report.unit}s assigned per variant against the configured weights: chi2 = "
            f"{srm.chi2:.2f}, p = {srm.p_value:.3g} (flagged below 0.001): {status}.",
        ),
        ("variant", "configured weight", f"expected {report.unit}s", f"observed {report.unit}s", "difference"),
        rows,
    )


def _offline_section(report: Report) -> Section:
    keys = sorted({k for v in report.variants if v.offline for k in v.offline.metrics}, key=_offline_order)
    rows = tuple(
        (
            v.name,
            v.offline.algorithm or "-" if v.offline else "-",
            v.offline.version or "-" if v.offline else "-",
            *(_number(v.offline.metrics.get(k)) if v.offline else "-" for k in keys),
            _metric_value(v.ctr),
        )
        for v in report.variants
    )
    return Section(
        "offline",
        "Offline metrics (each model's /info) next to online CTR",
        (
            "Offline metrics come from each model's holdout evaluation; online CTR from this phase's traffic. "
            "They can disagree: a model can win offline and lose online.",
        ),
        ("variant", "algorithm", "version", *(OFFLINE_LABELS.get(k, k) for k in keys), "online CTR [CI]"),
        rows,
    )


def _offline_order(key: str) -> int:
    return list(OFFLINE_LABELS).index(key) if key in OFFLINE_LABELS else len(OFFLINE_LABELS)


def _exclusions_section(report: Report) -> Section:
    excluded = report.exclusions
    by_kind = ", ".join(f"{kind} {n:,}" for kind, n in excluded.exposures_by_assignment.items()) or "none"
    expectation = "expected: requests are randomised" if report.strategy == "random" else "should be 0"
    fallbacks = sum(v.fallbacks for v in report.variants)
    lines = [
        f"Excluded exposures (not randomised: QA overrides): {excluded.exposures:,} ({by_kind}); their feedback "
        f"events: {excluded.feedback_events:,}. They are in no number above.",
        f"Fallback exposures, counted for the variant assigned (intention to treat): {fallbacks:,}.",
        f"Users assigned to more than one variant: {report.users_in_several_variants:,} ({expectation}).",
    ]
    lines.extend(f"Note: {note}" for note in report.notes)
    return Section("exclusions", "Exclusions and data quality", tuple(lines))


def _method_section(report: Report) -> Section:
    analysis = report.analysis
    return Section(
        "method",
        "Method",
        (
            f"Unit of analysis = unit of randomisation: {report.unit} ({UNIT_METHODS[report.unit]}).",
            "Intention to treat: every randomised exposure counts for the variant it was assigned to. A fallback "
            "(the assigned variant failed, another answered) is the assigned variant's exposure with the clicks "
            "it got; an error is an exposure without clicks of its variant. Dropping them would let a variant "
            "that fails for hard users look better by losing them. QA overrides were not randomised and are out.",
            "Never per shown item: clicks within one list, and one user's lists, are correlated, so an "
            "item-level test counts one user's habits many times and finds differences that are not there.",
            "Every metric is a ratio of per-unit sums with a delta-method variance clustered by unit (CR2 "
            "small-sample correction) and t quantiles with Kish effective degrees of freedom; no interval or "
            f"verdict is given with fewer than {analysis.min_units} units with data per variant.",
            f"Sequential analysis: the asymptotic confidence sequence of Waudby-Smith et al. (tightest at "
            f"{analysis.tuning:g} units in both arms), valid at every look, so the live report may be refreshed "
            "and the experiment stopped at any time. Fixed-horizon analysis: Welch's t, valid only at the planned "
            "sample size; before it is reached the report gives no fixed-horizon result.",
            f"Several treatments: {report.correction}.",
            "Sample-ratio mismatch: chi-square of units per variant against the configured weights; p < 0.001 "
            "withholds every verdict.",
            "Guardrails: judged on the sequential analysis against a non-inferiority margin; p99 latency through "
            "the share of requests slower than a threshold (the control's p99 unless configured).",
        ),
    )


# ---------------------------------------------------------------------------------------------- interleaving


def interleaving_sections(report: Report, result: InterleavingResult) -> tuple[Section, ...]:
    """An interleaving phase: the preference verdict and per-user votes, then the merged lists' traffic."""
    return (
        _interleaving_verdict_section(result),
        _interleaving_votes_section(result),
        _traffic_section(report),
        _outcomes_section(report),
        _exclusions_section(report),
        _interleaving_method_section(result),
    )


def _interleaving_verdict_section(result: InterleavingResult) -> Section:
    preference = result.preference
    pair = f"**{preference.treatment} vs {preference.control}**"
    lines = [
        f"{pair}: {result.verdict}",
        f"Fixed-horizon (valid only when this is the one planned look): {preference.verdict}",
    ]
    note = preference.degraded.note()
    if note:
        lines.append(f"Availability: {note}")
    if result.failed:
        lines.append(
            f"Both backends failed for {result.failed:,} interleaved requests (answered with an error, no list)"
        )
    return Section(
        "interleaving-verdict", "Verdict (interleaving: which model's recommendations users prefer)", tuple(lines)
    )


def _interleaving_votes_section(result: InterleavingResult) -> Section:
    p = result.preference
    fixed = f"{format_delta(p.delta)}, {format_p(p.p_value)}" if p.delta and p.p_value is not None else "-"
    always = (
        f"{format_delta(p.sequential.interval)}, {format_p(p.sequential.p_value)}"
        if p.sequential is not None
        else f"- ({p.sequential_reason})"
    )
    degraded = dict(p.degraded.failed)
    rows = (
        (p.treatment, f"{p.wins:,}", f"{p.treatment_clicks:,}", f"{degraded.get(p.treatment, 0):,}"),
        (p.control, f"{p.losses:,}", f"{p.control_clicks:,}", f"{degraded.get(p.control, 0):,}"),
        ("tie", f"{p.ties:,}", "-", "-"),
    )
    return Section(
        "interleaving-votes",
        "Preference per user",
        (
            f"{result.exposures:,} interleaved exposures; {p.users:,} users with an exposure both backends "
            f"answered, {p.users_with_click:,} of them with a credited click. A user whose credited clicks favour "
            "a team votes for it; equal credit is a tie.",
            f"Δ = (users preferring {p.treatment} − users preferring {p.control}) / users with a credited click: "
            f"{fixed} (fixed-horizon); {always} (always valid).",
        ),
        ("team", "users preferring it", "credited clicks", "degraded interleaves it caused"),
        rows,
    )


def _interleaving_method_section(result: InterleavingResult) -> Section:
    p = result.preference
    return Section(
        "interleaving-method",
        "Method",
        (
            f"Every request got one list merged from both models' lists by {result.method} interleaving "
            "(a coin per round, seeded by the request id, decides which team picks first; each team adds its "
            "best item not yet shown). Each position remembers the team that placed it.",
            "A click is credited to the team of its position (an item both models ranked counts for whichever "
            "placed it); a position clicked twice counts once. Unit of analysis: the user, one vote each.",
            f"Fixed-horizon: {p.method}. Always valid: {SEQUENTIAL_METHOD}, safe however often the report "
            "is read; it leads the verdict.",
            "Degraded interleaves (one backend failed, the other's list served alone) and their clicks are no "
            "votes: they count as the failing model's availability loss. QA overrides are excluded.",
        ),
    )


# ---------------------------------------------------------------------------------------------- Markdown


def _title(report: Report) -> str:
    kind = "Interleaving" if report.interleaving is not None else "A/B"
    return f"{kind} results: {report.experiment}, phase {report.phase}"


def render_markdown(report: Report) -> str:
    """The report as Markdown, readable in a terminal."""
    lines = [f"# {_title(report)}", ""]
    for line in _header_lines(report):
        lines += [line, ""]
    banner = _srm_banner(report)
    if banner:
        lines += [f"> **{banner}**", ""]
    for section in sections(report):
        lines += [f"## {section.title}", ""]
        if section.anchor in BULLETED:
            lines += [f"- {paragraph}" for paragraph in section.paragraphs] + [""]
        else:
            for paragraph in section.paragraphs:
                lines += [paragraph, ""]
        if section.headers:
            lines.append("| " + " | ".join(section.headers) + " |")
            lines.append("|" + "|".join("---" for _ in section.headers) + "|")
            lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in section.rows)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- HTML

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
.alert { background: #b00020; color: #fff; padding: 1rem; font-size: 1.15rem; font-weight: bold; border-radius: 4px; }
#verdict li { font-size: 1.05rem; margin: .3rem 0; }
#plots figure { margin: 1rem 0; }
#plots svg { width: 100%; height: auto; display: block; }
#outcome { margin: 1rem 0 1.5rem; }
.outcome { border-left: .5rem solid; border-radius: 4px; padding: .75rem 1rem; margin: .5rem 0; }
.outcome h2 { margin: 0 0 .25rem; font-size: 1.3rem; }
.outcome p { margin: .25rem 0; }
.outcome .numbers { font-variant-numeric: tabular-nums; font-size: 1.05rem; }
.outcome-win { background: #e8f5e9; border-color: #2e7d32; }
.outcome-win h2 { color: #1b5e20; }
.outcome-loss { background: #fdecea; border-color: #c62828; }
.outcome-loss h2 { color: #b71c1c; }
.outcome-inconclusive { background: #f1f3f5; border-color: #78909c; }
.outcome-inconclusive h2 { color: #37474f; }
.outcome-withheld { background: #fff4e5; border-color: #ef6c00; }
.outcome-withheld h2 { color: #e65100; }
#phase-nav { font-size: 14px; margin: .25rem 0 1rem; }
#phase-nav a, #phase-nav span { margin-right: .6rem; }
#phase-nav [aria-current] { font-weight: bold; }
"""


def render_no_data_html(found: PhaseList, detail: str) -> str:
    """The page /report answers before a phase has data: what is happening, and links to the phases that have it.

    It reloads itself every few seconds, so a page left open turns into the report once traffic arrives.
    """
    record = found.phase
    if record is not None:
        title = f"A/B results: {record.experiment}, phase {record.phase}: no data yet"
        what = (
            f"Phase {record.phase} of experiment <strong>{html.escape(record.experiment)}</strong> started "
            f"{_when(record.started_at)} and has no exposures yet: a new phase starts when a reload or a "
            "guardrail changes who sees which variant, and its report begins with its first request."
        )
    else:
        title = "A/B results: no data yet"
        what = html.escape(detail[0].upper() + detail[1:]) + "."
    earlier = found.earlier_with_data()
    links = "".join(f'<li><a href="?phase={n}">phase {n}</a></li>' for n in reversed(found.with_data))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{NO_DATA_REFRESH_SECONDS}">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p id="no-data">{what}</p>',
        f"<p>This page reloads itself every {NO_DATA_REFRESH_SECONDS} s; the report appears once traffic arrives.</p>",
    ]
    if earlier is not None:
        parts.append(
            f'<p id="previous-phase">Previous phase with data: <a href="?phase={earlier}">phase {earlier}</a>.</p>'
        )
    if links:
        parts.append(f'<nav id="phases" aria-label="phases"><p>Phases with data:</p><ul>{links}</ul></nav>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


#: The no-data page reloads itself this often.
NO_DATA_REFRESH_SECONDS = 10


def render_html(report: Report, *, live: bool = False) -> str:
    """A self-contained HTML page: inline CSS and SVG plots, no scripts, no external assets.

    The outcome comes first, coloured by what it is; `live` (the router's /report) links the other phases.
    """
    title = _title(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _phase_nav(report, live),
    ]
    banner = _srm_banner(report)
    if banner:
        parts.append(f'<div class="alert" id="srm-alert" role="alert">{html.escape(banner)}</div>')
    if report.interleaving is None and report.comparisons:
        parts.append(_outcome_cards(report))
    parts += [f"<p>{_inline(line)}</p>" for line in _header_lines(report)]
    for section in sections(report):
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        if section.anchor in BULLETED:
            parts.append("<ul>" + "".join(f"<li>{_inline(p)}</li>" for p in section.paragraphs) + "</ul>")
        else:
            parts += [f"<p>{_inline(p)}</p>" for p in section.paragraphs]
        if section.headers:
            parts.append(_html_table(section.headers, section.rows))
        parts.append("</section>")
        if section.anchor == "comparisons":
            parts.append(_plots_section(report))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


Outcome = str  # 'win' | 'loss' | 'inconclusive' | 'withheld'
OUTCOME_LABELS = {
    "win": "{treatment} wins",
    "loss": "{treatment} loses",
    "inconclusive": "No difference shown yet",
    "withheld": "Verdict withheld",
}


def outcome_of(report: Report, comparison: TreatmentResult) -> Outcome:
    """What a comparison's verdict says, for its colour: the treatment won, lost, nothing yet, or withheld."""
    if report.verdict_withheld:
        return "withheld"
    if comparison.stopped is not None:
        return "loss"
    difference = comparison.ctr.difference
    if comparison.significant and difference is not None:
        return "win" if difference.value > 0 else "loss"
    return "inconclusive"


def _outcome_cards(report: Report) -> str:
    cards = []
    for c in report.comparisons:
        outcome = outcome_of(report, c)
        label = OUTCOME_LABELS[outcome].format(treatment=c.treatment)
        numbers = (
            f"CTR {html.escape(c.control)} {_scaled(c.ctr.control, c.ctr.scale)} vs {html.escape(c.treatment)} "
            f"{_scaled(c.ctr.treatment, c.ctr.scale)}"
        )
        if c.ctr.difference is not None:
            numbers += f"; difference {_difference(c.ctr.difference, c.ctr.scale)}"
        if c.ctr.p_value is not None:
            numbers += f", {format_p(c.ctr.p_value)}"
        cards.append(
            f'<div class="outcome outcome-{outcome}" data-outcome="{outcome}">'
            f"<h2>{html.escape(label)}: {html.escape(c.treatment)} vs {html.escape(c.control)}</h2>"
            f'<p class="sentence">{_inline(c.verdict)}</p><p class="numbers">{numbers}</p></div>'
        )
    return '<section id="outcome" aria-label="outcome">' + "".join(cards) + "</section>"


def _phase_nav(report: Report, live: bool) -> str:
    """Every phase of the store; live, each is a link to its report (`?phase=N`)."""
    items = []
    for number in report.phases:
        if number == report.phase:
            items.append(f'<span aria-current="page">phase {number}</span>')
        elif live:
            items.append(f'<a href="?phase={number}">phase {number}</a>')
        else:
            items.append(f"<span>phase {number}</span>")
    return f'<nav id="phase-nav" aria-label="phases">Phases: {"".join(items)}</nav>'


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{_inline(c)}</td>' if NUMERIC.match(c) else f"<td>{_inline(c)}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str) -> str:
    """Escape, then turn Markdown **bold** into <strong>."""
    pieces = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces))


def _plots_section(report: Report) -> str:
    figures = (
        ("plot-metrics", "CTR and conversion per variant with their confidence intervals", _metrics_figure(report)),
        ("plot-timeline", "Cumulative CTR over the phase", _timeline_figure(report)),
        ("plot-latency", "Router latency per variant", _latency_figure(report)),
    )
    parts = ['<section id="plots"><h2>Plots</h2>']
    for anchor, caption, figure in figures:
        parts.append(
            f'<figure id="{anchor}">{_svg(figure, anchor)}<figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    parts.append("</section>")
    return "\n".join(parts)


def _svg(figure: Figure, prefix: str) -> str:
    """The figure as an inline <svg> element: text kept as text, no date, ids made unique per figure.

    matplotlib numbers ids per file (``axes_1``, clip paths, markers); several files inlined in one page
    would repeat them, so every id and every reference to one gets the figure's prefix.
    """
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\bid="', f'id="{prefix}-', text)
    text = re.sub(r'(xlink:href|href)="#', rf'\1="#{prefix}-', text)
    return re.sub(r"url\(#", f"url(#{prefix}-", text)


def _colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def _metrics_figure(report: Report) -> Figure:
    """CTR and conversion per variant with their intervals, on one percentage axis from zero (shares are >= 0)."""
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, label, metric in (
        (axes[0], "CTR per exposure (%)", "ctr"),
        (axes[1], "conversion per user (%)", "conversion"),
    ):
        for i, variant in enumerate(report.variants):
            value = variant.ctr if metric == "ctr" else variant.conversion
            estimate = value.interval
            if estimate is None:
                continue
            below = max(estimate.value - estimate.low, 0.0) * 100
            above = max(estimate.high - estimate.value, 0.0) * 100
            ax.errorbar([i], [estimate.value * 100], yerr=[[below], [above]], fmt="o", capsize=6, color=_colour(i))
        ax.set_xticks(range(len(report.variants)), [v.name for v in report.variants])
        ax.set_xlim(-0.5, len(report.variants) - 0.5)
        ax.set_title(label, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% (95% interval)" if report.analysis.alpha == 0.05 else "% (interval)")
    axes[0].set_ylim(bottom=0)
    return figure


def _timeline_figure(report: Report) -> Figure:
    """Cumulative CTR per variant with a 95% band, from the first exposure on, broken where traffic stopped.

    The band is binomial per exposure (cumulative clicked / exposures): a guide to how settled the line is,
    narrower than the user-clustered intervals of the tables and the verdict, which are the ones to quote.
    """
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    ax = figure.subplots()
    starts = []
    for i, series in enumerate(report.timeline):
        if not series.minutes:
            continue
        for run, (minutes, ctr, exposures) in enumerate(timeline_runs(series)):
            ax.plot(minutes, [c * 100 for c in ctr], color=_colour(i), label=None if run else series.variant)
            if exposures:
                half = [1.96 * math.sqrt(max(c * (1 - c), 0.0) / n) * 100 for c, n in zip(ctr, exposures, strict=True)]
                low = [max(c * 100 - h, 0.0) for c, h in zip(ctr, half, strict=True)]
                high = [min(c * 100 + h, 100.0) for c, h in zip(ctr, half, strict=True)]
                ax.fill_between(minutes, low, high, color=_colour(i), alpha=0.15, linewidth=0)
            starts.append(minutes[0])
    if starts:
        ax.legend(loc="best")
        ax.set_xlim(left=min(starts))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("minutes since the phase started (from its first exposure)")
    ax.set_ylabel("cumulative CTR (%, 95% band)")
    ax.grid(alpha=0.3)
    return figure


def timeline_runs(series: TimelineSeries) -> list[tuple[list[float], list[float], list[int]]]:
    """The series cut where traffic stopped: each run is drawn as its own line, none across the gap.

    A gap is a stretch without exposures longer than 3 time buckets and than 5 times the series' usual
    (median) spacing: evenly sparse traffic that skips buckets is no gap, a pause of the traffic is.

    >>> [r[0] for r in timeline_runs(TimelineSeries("a", (1.0, 2.0, 3.0, 4.0, 19.0), (0.1,) * 5, (), 1.0))]
    [[1.0, 2.0, 3.0, 4.0], [19.0]]
    >>> [r[0] for r in timeline_runs(TimelineSeries("a", (1.0, 11.0, 21.0, 31.0), (0.1,) * 4, (), 1.0))]
    [[1.0, 11.0, 21.0, 31.0]]
    """
    steps = sorted(b - a for a, b in itertools.pairwise(series.minutes))
    usual = steps[len(steps) // 2] if steps else 0.0
    gap = max(3 * series.bucket_minutes, 5 * usual) if series.bucket_minutes > 0 else math.inf
    runs: list[tuple[list[float], list[float], list[int]]] = []
    exposures = series.exposures or (0,) * len(series.minutes)
    previous = None
    for minute, ctr, count in zip(series.minutes, series.ctr, exposures, strict=True):
        if previous is None or minute - previous > gap:
            runs.append(([], [], []))
        runs[-1][0].append(minute)
        runs[-1][1].append(ctr)
        runs[-1][2].append(count)
        previous = minute
    return [(m, c, n if series.exposures else []) for m, c, n in runs]


def _latency_figure(report: Report) -> Figure:
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    ax = figure.subplots()
    histogram = report.latency_histogram
    drawn = False
    if histogram is not None:
        for i, (name, counts) in enumerate(histogram.counts.items()):
            if sum(counts):
                ax.stairs(counts, histogram.edges, color=_colour(i), label=name, linewidth=1.5)
                drawn = True
        ax.set_xscale("log")
    if drawn:
        ax.legend(loc="best")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("exposures")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return figure


# ---------------------------------------------------------------------------------------------- formatting


def _metric_value(value: MetricValue) -> str:
    if value.interval is not None:
        i = value.interval
        if value.scale == "share":
            digits = _share_digits(i.value, i.low, i.high)
            return f"{i.value:.{digits}%} [{i.low:.{digits}%}, {i.high:.{digits}%}]"
        return f"{i.value:.4g} [{i.low:.4g}, {i.high:.4g}]"
    if value.value is not None:
        return _scaled(value.value, value.scale) + " [-]"
    return "-"


def _scaled(value: float | None, scale: Scale) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{_share_digits(value)}%}" if scale == "share" else f"{value:.4g}"


def _share_digits(*values: float) -> int:
    """Decimals of a percentage, as the verdict's pp: 1 from 1% up, 2 below (0.05% stays visible).

    >>> f"{0.3312:.{_share_digits(0.3312)}%}", f"{0.0005:.{_share_digits(0.0005)}%}"
    ('33.1%', '0.05%')
    """
    largest = max(abs(v) for v in values)
    return 1 if largest >= 0.01 or largest == 0 else 2


def _difference(estimate: Estimate, scale: Scale) -> str:
    return format_pp(estimate) if scale == "share" else format_value(estimate)


def _percent(value: float) -> str:
    return f"{value:.{_share_digits(value)}%}" if math.isfinite(value) else "-"


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
