"""Render a Report as Markdown (for a terminal), self-contained HTML (with inline SVG plots) and JSON.

Markdown and HTML show the same sections, built once by ``sections``; HTML adds the plots. Plots use
matplotlib's object API (``Figure``, no pyplot), so rendering never touches a GUI backend or global state.

    print(render_markdown(build_report(backend_for("sqlite:///results/outcomes.sqlite3"))))   # router.store
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from router.report.build import format_p, format_pp
from router.report.document import InterleavingResult, Report
from router.report.interleaving import SEQUENTIAL_METHOD, format_delta
from router.report.stats import Difference, Estimate

JSON_VERSION = 1
UNIT_METHODS = {
    "user": "per user: CTR is a ratio metric (clicked exposures / exposures per user) compared with the "
    "delta method, i.e. standard errors clustered by user; conversion is a two-proportion score test over users",
    "request": "per request: CTR is compared with a two-proportion score test over requests; conversion per "
    "user is shown but not tested, because a user's requests go to several variants",
}
OFFLINE_LABELS = {
    "precision_at_10": "precision@10",
    "recall_at_10": "recall@10",
    "hit_rate_at_10": "hit rate@10",
    "coverage": "coverage",
    "rmse": "RMSE",
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
    return (
        _verdict_section(report),
        _traffic_section(report),
        _outcomes_section(report),
        _comparisons_section(report),
        _srm_section(report),
        _offline_section(report),
        _exclusions_section(report),
        _method_section(report),
    )


def _header_lines(report: Report) -> tuple[str, ...]:
    phases = ", ".join(str(p) for p in report.phases)
    return (
        f"Experiment **{report.experiment}**, phase **{report.phase}** (phases in the store: {phases}). "
        f"Phase started {_when(report.started_at)}; exposures from {_when(report.first_exposure_at)} "
        f"to {_when(report.last_exposure_at)}; report generated {_when(report.generated_at)}.",
        f"Strategy **{report.strategy}**, so the unit of analysis is the **{report.unit}** "
        f"({UNIT_METHODS[report.unit]}). Control: **{report.control}**.",
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
    lines = tuple(f"**{c.treatment} vs {c.control}**: {c.verdict}" for c in report.comparisons)
    if not lines:
        lines = ("Only one variant in this phase: nothing to compare.",)
    return Section("verdict", "Verdict (primary metric: CTR per exposure)", lines)


def _traffic_section(report: Report) -> Section:
    headers = (
        "variant",
        "weight",
        "users",
        "exposures",
        "requests/user",
        "errors",
        "error rate [95% CI]",
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
            _share(v.error_rate),
            f"{v.latency_ms.p50:.1f} / {v.latency_ms.p95:.1f} / {v.latency_ms.p99:.1f}" if v.latency_ms else "-",
        )
        for v in report.variants
    )
    return Section(
        "traffic",
        "Traffic per variant",
        (
            f"Analysed exposures only (assignment = 'strategy'). Units of randomisation ({report.unit}s): "
            + ", ".join(f"{v.name} {v.units:,}" for v in report.variants)
            + ". Errors are exposures the router answered with an error status.",
        ),
        headers,
        rows,
    )


def _outcomes_section(report: Report) -> Section:
    headers = (
        "variant",
        "feedback events",
        "clicked exposures",
        "CTR [95% CI]",
        "converted users",
        "conversion [95% CI]",
    )
    rows = tuple(
        (
            v.name,
            f"{v.feedback_events:,}"
            + (f" ({', '.join(f'{k} {n:,}' for k, n in v.feedback_by_event.items())})" if v.feedback_by_event else ""),
            f"{v.clicked_exposures:,}",
            _share(v.ctr),
            f"{v.converted_users:,}",
            _share(v.conversion),
        )
        for v in report.variants
    )
    ctr_interval = "clustered by user (delta method, Wilson form)" if report.unit == "user" else "Wilson, per request"
    return Section(
        "outcomes",
        "Outcomes per variant",
        (
            "CTR = share of exposures with at least one click event; conversion = share of the variant's users "
            f"with at least one click. CTR interval: {ctr_interval}; conversion interval: Wilson, per user.",
        ),
        headers,
        rows,
    )


def _comparisons_section(report: Report) -> Section:
    headers = (
        "treatment vs control",
        "metric",
        "control",
        "treatment",
        "difference [95% CI]",
        "relative [95% CI]",
        "p",
        "p (Holm)",
        "method",
    )
    rows: list[tuple[str, ...]] = []
    for c in report.comparisons:
        pair = f"{c.treatment} vs {c.control}"
        rows.append(_difference_row(pair, "CTR", c.ctr, c.p_adjusted))
        if c.conversion is not None:
            rows.append(_difference_row(pair, "conversion (secondary)", c.conversion, None))
    return Section(
        "comparisons",
        "Treatment vs control",
        (
            "Differences are treatment minus control in percentage points (pp); relative = treatment / "
            f"control - 1. Two-sided tests at alpha = {report.alpha:g}. Multiple-comparison correction of "
            f"the primary metric: {report.correction}. Conversion is a secondary metric, not corrected and "
            "not used for the verdict.",
        ),
        headers,
        tuple(rows),
    )


def _difference_row(pair: str, metric: str, d: Difference, p_adjusted: float | None) -> tuple[str, ...]:
    relative = f"{d.relative.value:+.1%} [{d.relative.low:.1%}, {d.relative.high:.1%}]" if d.relative else "-"
    return (
        pair,
        metric,
        _percent(d.control),
        _percent(d.treatment),
        format_pp(d.absolute) if d.absolute else "-",
        relative,
        format_p(d.p_value, "").strip(" =") if d.p_value is not None else "-",
        format_p(p_adjusted, "").strip(" =") if p_adjusted is not None else "-",
        d.method,
    )


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
            f"Chi-square of {report.unit}s per variant against the configured weights: chi2 = {srm.chi2:.2f}, "
            f"p = {srm.p_value:.3g} (flagged below 0.001): {status}.",
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
            _share(v.ctr),
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
        ("variant", "algorithm", "version", *(OFFLINE_LABELS.get(k, k) for k in keys), "online CTR [95% CI]"),
        rows,
    )


def _offline_order(key: str) -> int:
    return list(OFFLINE_LABELS).index(key) if key in OFFLINE_LABELS else len(OFFLINE_LABELS)


def _exclusions_section(report: Report) -> Section:
    excluded = report.exclusions
    by_kind = ", ".join(f"{kind} {n:,}" for kind, n in excluded.exposures_by_assignment.items()) or "none"
    expectation = "expected: requests are randomised" if report.strategy == "random" else "should be 0"
    lines = [
        f"Excluded exposures (not assigned by the strategy): {excluded.exposures:,} ({by_kind}); their "
        f"feedback events: {excluded.feedback_events:,}. They are in no number above.",
        f"Users seen in more than one variant: {report.users_in_several_variants:,} ({expectation}).",
    ]
    lines.extend(f"Note: {note}" for note in report.notes)
    return Section("exclusions", "Exclusions and data quality", tuple(lines))


def _method_section(report: Report) -> Section:
    return Section(
        "method",
        "Method",
        (
            f"Unit of analysis = unit of randomisation: {report.unit} ({UNIT_METHODS[report.unit]}).",
            "Never per shown item: clicks within one list, and one user's lists, are correlated, so an "
            "item-level test counts one user's habits many times and finds differences that are not there.",
            "Only assignment = 'strategy' exposures are analysed; override and fallback exposures are counted "
            "above. Errors stay in the CTR denominator as exposures without clicks, so a failing variant is "
            "not flattered.",
            "Sample-ratio mismatch: chi-square of units per variant against the configured weights; p < 0.001 "
            "withholds every verdict.",
            f"Verdict: significant when the (Holm-adjusted) CTR p-value < {report.alpha:g}. Otherwise the "
            f"sample size for {report.target_power:.0%} power targets the observed difference, at least 5% "
            "of the control's CTR, with the unit-level spread measured here (with several treatments at "
            "alpha divided by their number, a slightly conservative stand-in for Holm).",
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
#plots svg { max-width: 100%; height: auto; }
"""


def render_html(report: Report) -> str:
    """A self-contained HTML page: inline CSS and SVG plots, no scripts, no external assets."""
    title = _title(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{_inline(line)}</p>" for line in _header_lines(report)]
    banner = _srm_banner(report)
    if banner:
        parts.append(f'<div class="alert" id="srm-alert" role="alert">{html.escape(banner)}</div>')
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
        ("plot-metrics", "CTR and conversion per variant with 95% confidence intervals", _metrics_figure(report)),
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
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, label, metric in (
        (axes[0], "CTR per exposure (%)", "ctr"),
        (axes[1], "conversion per user (%)", "conversion"),
    ):
        for i, variant in enumerate(report.variants):
            estimate: Estimate | None = variant.ctr if metric == "ctr" else variant.conversion
            if estimate is None:
                continue
            below = max(estimate.value - estimate.low, 0.0) * 100
            above = max(estimate.high - estimate.value, 0.0) * 100
            ax.errorbar([i], [estimate.value * 100], yerr=[[below], [above]], fmt="o", capsize=6, color=_colour(i))
        ax.set_xticks(range(len(report.variants)), [v.name for v in report.variants])
        ax.set_xlim(-0.5, len(report.variants) - 0.5)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    return figure


def _timeline_figure(report: Report) -> Figure:
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    ax = figure.subplots()
    drawn = False
    for i, series in enumerate(report.timeline):
        if series.minutes:
            ax.plot(series.minutes, [c * 100 for c in series.ctr], color=_colour(i), label=series.variant)
            drawn = True
    if drawn:
        ax.legend(loc="best")
    ax.set_xlabel("minutes since the phase started")
    ax.set_ylabel("cumulative CTR (%)")
    ax.grid(alpha=0.3)
    return figure


def _latency_figure(report: Report) -> Figure:
    figure = Figure(figsize=(9, 3.4), layout="constrained")
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


def _share(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    return f"{estimate.value:.2%} [{estimate.low:.2%}, {estimate.high:.2%}]"


def _percent(value: float) -> str:
    return f"{value:.2%}" if math.isfinite(value) else "-"


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
