"""The one line per treatment an experimenter acts on, safe to read however often the report is refreshed.

A sequential verdict is always valid: "significant" may be acted on at the moment it appears, and "not yet"
may be read every few seconds. A fixed-horizon verdict is valid only at the planned sample size, so before it
is reached the line gives no result at all, only the progress - never "not significant yet, N more users".

    model_b beats model_a on CTR by +2.1 pp [0.8, 3.4] (+21% relative), always-valid p = 0.002 (sequential:
    valid whenever it is read)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from router.report.document import GuardrailCheck, MetricComparison, PlanProgress, Stop
from router.report.stats import Estimate, SampleRatio, Unit


def verdict_for(
    primary: MetricComparison,
    *,
    treatment: str,
    control: str,
    unit: Unit,
    plans: Sequence[PlanProgress],
    several_treatments: bool,
    srm: SampleRatio | None,
    stop: Stop | None,
    stop_in_effect: bool,
    guardrails: Sequence[GuardrailCheck] = (),
) -> str:
    """The verdict line (see the module docstring); ``srm`` only when it withholds every verdict."""
    if stop is not None and stop_in_effect:
        return (
            f"{treatment} was stopped by guardrail {stop.guardrail} at {when(stop.at)} (phase {stop.phase}: "
            f"{stop.detail}); its {unit}s are served by {stop.moved_to} until an admin resumes it"
        )
    line = _ctr_line(primary, treatment, control, unit, plans, several_treatments, srm)
    if stop is not None:
        line = f"{treatment} was stopped by guardrail {stop.guardrail} at {when(stop.at)} ({stop.detail}). {line}"
    harmful = [g for g in guardrails if g.state == "harmful"]
    if harmful:
        names = ", ".join(f"{g.metric} ({g.action})" for g in harmful)
        line += f"; guardrail harmful: {names}"
    return line


def _ctr_line(
    primary: MetricComparison,
    treatment: str,
    control: str,
    unit: Unit,
    plans: Sequence[PlanProgress],
    several: bool,
    srm: SampleRatio | None,
) -> str:
    if srm is not None:
        return (
            f"verdict withheld: sample-ratio mismatch (p = {srm.p_value:.2g}); the split of {unit}s does not "
            "match the configured weights, so the comparison cannot be trusted"
        )
    plan = plans[0] if plans else None
    sequential = primary.analysis == "sequential"
    if not sequential and (plan is None or not plan.reached):
        return _before_the_plan(treatment, control, unit, plan)
    if primary.difference is None or primary.p_value is None:
        return f"no verdict yet for {treatment} vs {control} on CTR: {primary.reason or 'no comparison'}"
    p_name = ("always-valid p" if sequential else "p") + (" (Bonferroni)" if several else "")
    p_text = format_p(primary.p_value, p_name)
    effect_text = format_pp(primary.difference)
    if primary.significant:
        direction = "beats" if primary.difference.value > 0 else "is worse than"
        relative = f" ({primary.relative.value:+.0%} relative)" if primary.relative is not None else ""
        where = (
            "sequential: valid whenever it is read"
            if sequential
            else f"fixed horizon, at the planned size of {_planned(plan)}"
        )
        return f"{treatment} {direction} {control} on CTR by {effect_text}{relative}, {p_text} ({where})"
    if not sequential and plan is not None:
        return (
            f"no significant difference between {treatment} and {control} on CTR at the planned size "
            f"({effect_text}, {p_text}): a difference of {_effect(plan)} would have been found "
            f"with {plan.power:.0%} power, so a true difference is probably smaller"
        )
    line = (
        f"no significant difference so far between {treatment} and {control} on CTR ({effect_text}, {p_text}); "
        "the sequential analysis may be read at any time"
    )
    if plan is None:
        return line + "; no planned size configured (analysis.minimum_detectable_effect)"
    if plan.reason is not None or plan.fraction is None:
        return line + f"; no planned size yet ({plan.reason})"
    if plan.reached:
        return (
            f"{line}; the planned maximum of {_planned(plan)} is reached: a true difference is probably "
            f"smaller than {_effect(plan)}"
        )
    return f"{line}; {plan.fraction:.0%} of the planned maximum ({_planned(plan)}) reached"


def _before_the_plan(treatment: str, control: str, unit: Unit, plan: PlanProgress | None) -> str:
    if plan is None or plan.fraction is None:
        reason = "no planned size" if plan is None else f"no planned size yet ({plan.reason})"
        return f"no verdict yet for {treatment} vs {control}: the fixed-horizon test needs a planned size, {reason}"
    return (
        f"no verdict yet for {treatment} vs {control}: the fixed-horizon test is valid only at the planned size of "
        f"{_planned(plan)}, {plan.fraction:.0%} reached; reading it earlier and stopping at a significant result "
        "inflates false positives"
    )


def _effect(plan: PlanProgress) -> str:
    return "the minimum detectable effect" if plan.effect is None else format_effect(plan.effect)


def _planned(plan: PlanProgress | None) -> str:
    if plan is None or plan.control_units is None or plan.treatment_units is None:
        return "an unknown number of units"
    if plan.control_units == plan.treatment_units:
        return f"{plan.control_units:,} per variant"
    return f"{plan.control_units:,} (control) and {plan.treatment_units:,} (treatment)"


def format_pp(estimate: Estimate) -> str:
    """An absolute difference of shares in percentage points: "+2.1 pp [0.8, 3.4]"."""
    scale = max(abs(estimate.low), abs(estimate.high), abs(estimate.value)) * 100
    digits = 1 if scale >= 1 else 2
    return f"{estimate.value * 100:+.{digits}f} pp [{estimate.low * 100:.{digits}f}, {estimate.high * 100:.{digits}f}]"


def format_value(estimate: Estimate) -> str:
    """A difference of plain values (ratings, seconds): "+0.12 [-0.03, 0.27]"."""
    return f"{estimate.value:+.3g} [{estimate.low:.3g}, {estimate.high:.3g}]"


def format_effect(effect: float) -> str:
    """An absolute CTR difference: "0.5 pp"."""
    return f"{effect * 100:.2g} pp"


def format_p(p_value: float, label: str = "p") -> str:
    return f"{label} < 0.001" if p_value < 0.001 else f"{label} = {p_value:.3f}"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
