"""The shadow section as text blocks (title, paragraphs, table) for router.report.render's Markdown and HTML.

    for anchor, title, paragraphs, headers, rows in shadow_blocks(report.shadow): ...

Every number is defined in docs/shadow.md; the blocks say which parameters they depend on (k, p, the sample).
"""

from __future__ import annotations

from router.report.shadow import Measure
from router.report.shadow_section import ShadowSection, ShadowVsLive

#: (anchor, title, paragraphs, table headers, table rows): what render.Section holds.
Block = tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]

DOC = "docs/shadow.md"


def shadow_blocks(section: ShadowSection | None) -> tuple[Block, ...]:
    """The section's blocks; none when the phase had no shadow."""
    if section is None:
        return ()
    blocks = [_calls_block(section), _lists_block(section)]
    if section.truth is not None:
        blocks.append(_truth_block(section))
    blocks.append(_noise_block(section))
    return tuple(blocks)


def _pair(c: ShadowVsLive) -> str:
    suffix = " (self-comparison)" if c.self_comparison else ""
    return f"{c.shadow} vs {c.variant}{suffix}"


def _calls_block(section: ShadowSection) -> Block:
    lines = [
        "Shadows get a copy of real requests after the live answer is sent; nobody sees their answers. Each is "
        "compared with the live variant that served the same requests (analysed exposures answered with 200). "
        "Availability: share of shadow calls that succeeded, 95% interval clustered by user. Latency: p50 / p99 "
        "over the requests both answered; live is the router's time to answer, shadow the call alone. Calls the "
        f"router dropped (queue full) or abandoned (at stop) are not rows: see `router_shadow_calls_total`. ({DOC})"
    ]
    for s in section.shadows:
        where = ", ".join(s.urls) or "-"
        lines.append(
            f"Shadow **{s.shadow}** ({where}): {s.calls:,} calls matched to analysed live exposures; "
            f"{s.unmatched:,} others (override, fallback or unstored exposures) left out."
        )
    rows = tuple(
        (
            _pair(c),
            f"{c.calls:,}",
            _measure(c.availability, percent=True),
            ", ".join(f"{kind} {n:,}" for kind, n in sorted(c.errors.items())) or "none",
            _ms(c.latency.live_p50, c.latency.live_p99),
            _ms(c.latency.shadow_p50, c.latency.shadow_p99),
            f"{c.latency.live_calls:,}",
            c.latency.reason or "",
        )
        for s in section.shadows
        for c in s.comparisons
    )
    headers = (
        "shadow vs live",
        "calls",
        "availability [95% CI]",
        "errors",
        "live p50 / p99 ms",
        "shadow p50 / p99 ms",
        "requests both answered",
        "note",
    )
    return ("shadow", "Shadow traffic: availability and latency", tuple(lines), headers, rows)


def _lists_block(section: ShadowSection) -> Block:
    k, p = section.k, section.persistence
    lines = [
        f"Over the requests both answered. Jaccard@{k}: overlap of the two top-{k} sets (1 = same items). "
        f"RBO: rank-biased overlap, persistence p = {p:g} (top-weighted; at 0.9 the first 10 ranks carry 86% "
        "of the weight; 1 = same order). Kendall's tau: agreement of the order of the items both lists share "
        "(+1 same, -1 reversed; undefined with fewer than 2 shared items, those requests skipped). Click "
        f"coverage: of the items users clicked in the live list, the share the shadow also ranked in its top {k} "
        "(it favours the live list, which drew the clicks). Means over requests with 95% intervals clustered by "
        "user."
    ]
    for s in section.shadows:
        if s.sample_rate < 1.0:
            lines.append(
                f"**{s.shadow}**: {s.pairs:,} requests both answered, more than the {section.max_compared:,} the "
                f"report compares: every request of a hash sample of {s.sample_rate:.2%} of users, "
                f"{s.compared_requests:,} requests of {s.compared_users:,} users."
            )
        else:
            lines.append(
                f"**{s.shadow}**: all {s.compared_requests:,} requests both answered, "
                f"{s.compared_users:,} users (no sampling)."
            )
    rows = tuple(
        (
            _pair(c),
            f"{c.lists.requests:,}",
            f"{c.lists.users:,}",
            f"{c.lists.identical:,}",
            _measure(c.lists.jaccard),
            _measure(c.lists.rbo),
            _measure(c.lists.kendall_tau)
            + (f" ({c.lists.kendall_tau.skipped:,} skipped)" if c.lists.kendall_tau.skipped else ""),
            _measure(c.lists.click_coverage, percent=True)
            + (
                f" of {c.lists.click_coverage.requests:,} clicked items"
                if c.lists.click_coverage.value is not None
                else ""
            ),
        )
        for s in section.shadows
        for c in s.comparisons
    )
    headers = (
        "shadow vs live",
        "requests",
        "users",
        "identical lists",
        f"Jaccard@{k} [95% CI]",
        f"RBO p={p:g} [95% CI]",
        "Kendall tau [95% CI]",
        f"click coverage@{k} [95% CI]",
    )
    return ("shadow-lists", "Shadow traffic: how different the lists are", tuple(lines), headers, rows)


def _truth_block(section: ShadowSection) -> Block:
    lines = (
        f"Ground truth: {section.truth}. Per request, the user's mean true affinity for the items of each list "
        "(higher: what the user likes more); the difference is shadow - live, paired per request. Over the "
        "compared requests, 95% intervals clustered by user. Only a simulation has a ground truth.",
    )
    rows = tuple(
        (
            _pair(c),
            _measure(c.affinity.live),
            _measure(c.affinity.shadow),
            _measure(c.affinity.difference, signed=True),
        )
        for s in section.shadows
        for c in s.comparisons
        if c.affinity is not None
    )
    headers = ("shadow vs live", "live list affinity", "shadow list affinity", "shadow - live [95% CI]")
    return ("shadow-truth", "Shadow traffic: the ground truth (simulation)", lines, headers, rows)


def _noise_block(section: ShadowSection) -> Block:
    lines = []
    for floor in section.noise_floors:
        line = f"**{floor.variant}**: {floor.floor.statement}"
        comparison = floor.floor.comparison
        if floor.floor.deterministic is False and comparison is not None:
            line += (
                f" (Jaccard@{comparison.k} {_measure(comparison.jaccard)}, RBO {_measure(comparison.rbo)}, "
                f"tau {_measure(comparison.kendall_tau)})"
            )
        if floor.source != "none":
            line += f"; measured by {floor.source}"
        lines.append(line + ".")
    lines.append(
        "A deterministic live model has a noise floor of 0: every shadow-vs-live difference above is the models'. "
        "A non-deterministic one differs from itself by the amounts shown: read the shadow's numbers against them."
    )
    return ("shadow-noise", "Shadow traffic: noise floor", tuple(lines), (), ())


def _measure(m: Measure, *, percent: bool = False, signed: bool = False) -> str:
    if m.value is None:
        return f"- ({m.reason})" if m.reason else "-"

    def number(x: float) -> str:
        if percent:
            return f"{x:.1%}"
        return f"{x:+.3f}" if signed else f"{x:.3f}"

    text = number(m.value)
    if m.low is not None and m.high is not None:
        text += f" [{number(m.low)}, {number(m.high)}]"
    elif m.reason:
        text += f" ({m.reason})"
    return text


def _ms(p50: float | None, p99: float | None) -> str:
    return "-" if p50 is None or p99 is None else f"{p50:.1f} / {p99:.1f}"
