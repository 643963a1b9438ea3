"""The adaptive section as text blocks (title, paragraphs, table) for router.report.render's Markdown and HTML.

    for anchor, title, paragraphs, headers, rows in adaptive_blocks(report.adaptive): ...

docs/bandits.md defines every number; the blocks say what each estimate assumes.
"""

from __future__ import annotations

from router.report.adaptive import AdaptiveSection, regret_ratio
from router.report.ope import PolicyValue
from router.report.stats import Estimate

#: (anchor, title, paragraphs, table headers, table rows): what render.Section holds.
Block = tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]

DOC = "docs/bandits.md"


def adaptive_blocks(section: AdaptiveSection | None) -> tuple[Block, ...]:
    """The section's blocks; none for a phase that is not adaptive."""
    if section is None:
        return ()
    return (_summary_block(section), _policies_block(section), _epochs_block(section))


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    return f"{estimate.value:.4f} [{estimate.low:.4f}, {estimate.high:.4f}]"


def _summary_block(section: AdaptiveSection) -> Block:
    lines = [
        f"Adaptive phase (**{section.strategy}**): the weights changed every epoch, driven by the outcomes, so "
        "the A/B tables' per-variant means are biased and their tests do not apply. Reward: "
        f"{section.reward}. Every exposure logged the exact probability it had of getting its variant "
        f"(its propensity) and its epoch; the estimates below reweight by it ({DOC})."
    ]
    summary = section.summary
    if summary is None:
        lines.append(f"No estimates: {section.reason}.")
        return ("adaptive", "Adaptive phase: what the bandit learned", tuple(lines), (), ())
    rewards = summary.rewards
    ratio = regret_ratio(section)
    lines.append(
        f"{rewards.exposures:,} exposures earned a cumulative reward of {rewards.cumulative_reward:,.1f}. "
        + (
            f"Estimated regret against always serving **{rewards.best_variant}** (the best DR estimate): "
            f"{rewards.estimated_regret:,.1f}"
            + ("" if ratio is None else f", {ratio:.2f} of what an even split would have lost")
            + "."
            if rewards.estimated_regret is not None
            else "No regret estimate (no DR estimate)."
        )
    )
    srm = summary.sample_ratio
    if srm.p_value is not None:
        state = "MISMATCH: assignment or logging is broken" if srm.mismatch else "no mismatch"
        lines.append(
            f"Sample ratio, per epoch against that epoch's own weights (units once per epoch), combined over "
            f"{len(srm.per_epoch)} epochs: chi-square {srm.chi2:.1f} on {srm.dof} df, p = {srm.p_value:.3g}: {state}."
        )
    if section.without_epoch:
        lines.append(f"{section.without_epoch:,} exposures carry no epoch or propensity and are left out.")
    if summary.reason:
        lines.append(f"Note: {summary.reason}.")
    best = summary.probability_best
    rows = tuple(
        (
            name,
            f"{rewards.exposures_by_variant[i]:,}",
            f"{rewards.reward_by_variant[i]:,.1f}",
            "-" if best is None else f"{best[i]:.3f}",
        )
        for i, name in enumerate(section.variants)
    )
    lines.append(
        "P(best): the probability that each variant has the highest mean reward under the strategy's posterior "
        "after the phase (valid under adaptive assignment; it treats exposures as independent, so with "
        "returning users read it as the bandit's belief, not as a test)."
    )
    return (
        "adaptive",
        "Adaptive phase: what the bandit learned",
        tuple(lines),
        ("variant", "exposures", "reward earned", "P(best)"),
        rows,
    )


def _policy_row(value: PolicyValue) -> tuple[str, ...]:
    return (
        f"always {value.variant}",
        f"{value.exposures:,}",
        _number(value.naive_mean),
        _interval(value.ips),
        _interval(value.snips),
        _interval(value.dr),
        value.reason or "",
    )


def _policies_block(section: AdaptiveSection) -> Block:
    lines = (
        "What each fixed policy would have earned per exposure, estimated off-policy from these logs, with 95% "
        "intervals clustered by user. IPS: mean of reward / propensity over the exposures it served (unbiased). "
        "SNIPS: the same, normalised by the sum of the weights (lower variance). DR (doubly robust): a direct "
        "model (the variant's mean reward in the epochs before) plus the IPS-weighted residual. The naive mean is "
        "the variant's plain mean over the exposures it served, biased under a bandit, shown only for contrast.",
    )
    rows = tuple(_policy_row(v) for v in section.summary.values) if section.summary else ()
    headers = ("policy", "exposures served", "naive mean", "IPS [95% CI]", "SNIPS [95% CI]", "DR [95% CI]", "note")
    return ("adaptive-ope", "Off-policy estimates of fixed policies", lines, headers, rows)


def _epochs_block(section: AdaptiveSection) -> Block:
    lines = (
        f"{len(section.epochs)} weight epochs. Each row is the versioned weights every router served during the "
        "epoch (a variant's weight is its propensity), computed once from all outcomes before it; SRM p: units "
        "per variant in the epoch against the epoch's weights (a mismatch is p < 0.001).",
    )
    rows = tuple(
        (
            str(row.epoch),
            f"{row.exposures:,}",
            ", ".join(f"{name} {share:.2%}" for name, share in row.weights.items()),
            ", ".join(f"{name} {p:.3f}" for name, p in row.probability_best.items()),
            _number(row.srm_p_value, 3),
            row.computed_by,
        )
        for row in section.epochs
    )
    headers = ("epoch", "exposures", "weights", "P(best) when computed", "SRM p", "computed by")
    return ("adaptive-epochs", "Weight epochs", lines, headers, rows)
