"""Planned sample sizes: the textbook formula (checked against statsmodels), finite for any effect."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import NormalIndPower

from router.report import sequential
from router.report.planning import SamplePlan, plan_units, progress
from router.report.ratio import MIN_UNITS, Unavailable


def planned(*args: float, **kwargs: object) -> SamplePlan:
    plan = plan_units(*args, **kwargs)  # type: ignore[arg-type]
    assert isinstance(plan, SamplePlan), plan
    return plan


@pytest.mark.parametrize(("effect", "sd", "allocation"), [(0.01, 0.2, 1.0), (0.02, 0.4, 1.5), (0.003, 0.15, 0.5)])
def test_plan_matches_statsmodels_normal_power(effect: float, sd: float, allocation: float) -> None:
    plan = planned(effect, unit_variance=sd**2, allocation=allocation)
    expected = NormalIndPower().solve_power(effect_size=effect / sd, alpha=0.05, power=0.8, ratio=allocation)

    # statsmodels also counts the (negligible) chance of rejecting in the wrong direction.
    assert plan.control_units == pytest.approx(expected, abs=1.5)
    assert plan.treatment_units == pytest.approx(plan.control_units * allocation, abs=1.0)


def test_relative_effect_is_relative_to_the_baseline_and_comparisons_lower_alpha() -> None:
    relative = planned(0.10, unit_variance=0.04, baseline=0.2, relative=True)
    absolute = planned(0.02, unit_variance=0.04)
    three = planned(0.02, unit_variance=0.04, comparisons=3)
    z = scipy_stats.norm.isf(0.05 / 6) + scipy_stats.norm.ppf(0.8)

    assert relative.control_units == absolute.control_units and relative.effect == pytest.approx(0.02)
    assert three.control_units == pytest.approx(2 * z**2 * 0.04 / 0.02**2, abs=1.0)


def test_sequential_plan_replaces_the_normal_quantile_with_the_sequences_tightest_width() -> None:
    fixed = planned(0.02, unit_variance=0.04)
    plan = planned(0.02, unit_variance=0.04, sequential=True)
    z_power = scipy_stats.norm.ppf(0.8)
    factor = ((sequential.tightest_multiplier(0.05) + z_power) / (scipy_stats.norm.isf(0.025) + z_power)) ** 2

    assert plan.sequential and not fixed.sequential
    assert plan.control_units / fixed.control_units == pytest.approx(factor, rel=1e-3)
    assert plan.total_units == 2 * plan.control_units


def test_decisive_effects_plan_the_minimum_instead_of_crashing() -> None:
    # CTR 20% -> 40% with little spread between users: the case where solve_power gave NaN (issue 12).
    plan = planned(0.2, unit_variance=0.001)

    assert plan.control_units == plan.treatment_units == MIN_UNITS


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"effect": 0.0, "unit_variance": 0.04}, "non-zero"),
        ({"effect": 1e-300, "unit_variance": 1e300}, "too small to detect"),
        ({"effect": 0.01, "unit_variance": 0.0}, "per-unit variance"),
        ({"effect": 0.1, "unit_variance": 0.04, "relative": True}, "baseline"),
        ({"effect": 0.01, "unit_variance": 0.04, "alpha": 1.0}, "alpha and power"),
        ({"effect": float("nan"), "unit_variance": 0.04}, "finite"),
    ],
)
def test_impossible_plans_say_why(kwargs: dict[str, float], reason: str) -> None:
    result = plan_units(**kwargs)  # type: ignore[arg-type]

    assert isinstance(result, Unavailable) and reason in result.reason


def test_progress_is_the_smaller_arms_fraction() -> None:
    plan = planned(0.01, unit_variance=0.04, allocation=0.5)

    halfway = progress(plan, plan.control_units // 2, plan.treatment_units)
    done = progress(plan, plan.control_units, plan.treatment_units + 10)
    assert halfway.fraction == pytest.approx(0.5, abs=1e-3) and not halfway.reached
    assert done.fraction == pytest.approx(1.0) and done.reached
