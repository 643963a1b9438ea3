"""Property tests over extreme inputs: every public function of the report's statistical core returns finite
numbers, or Unavailable with a reason, and never raises (zeros, one unit, all or no clicks, a dead arm,
enormous effects, NaN, infinities, 1e300)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.report import sequential
from router.report.comparison import Analysis, compare, compare_treatments, fieller
from router.report.guardrails import Tolerance, judge, latency_threshold, slow_requests
from router.report.planning import SamplePlan, plan_units, progress
from router.report.ratio import RatioData, Unavailable, estimate, per_unit, point

EXTREMES = [0.0, 1.0, 1e-300, 1e300, -1e300, 1.7e308, math.nan, math.inf, -math.inf]
values = st.one_of(
    st.integers(0, 20).map(float),
    st.floats(-1e308, 1e308, allow_nan=False),
    st.sampled_from(EXTREMES),
)
counts = st.one_of(st.integers(0, 50).map(float), st.sampled_from([0.0, 1.0, 1e300, 1e-300]))


@st.composite
def arms(draw: st.DrawFn) -> RatioData:
    """Mostly realistic (clicks <= exposures), sometimes anything at all; 0 to 60 units."""
    n = draw(st.integers(0, 45))
    if draw(st.booleans()):
        exposures = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
        share = draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))
        clicks = [float(math.floor(e * share)) for e in exposures]
        return RatioData.of(clicks, [float(e) for e in exposures])
    return RatioData.of(
        draw(st.lists(values, min_size=n, max_size=n)), draw(st.lists(counts | values, min_size=n, max_size=n))
    )


def assert_finite_or_reason(result: Any) -> None:
    if isinstance(result, Unavailable):
        assert isinstance(result.reason, str) and result.reason
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        for field in dataclasses.fields(result):
            assert_finite_or_reason(getattr(result, field.name))
    elif isinstance(result, dict):
        for value in result.values():
            assert_finite_or_reason(value)
    elif isinstance(result, bool | str) or result is None:
        pass
    elif isinstance(result, int | float):
        assert math.isfinite(result), result
    elif isinstance(result, np.ndarray):
        assert np.all(np.isfinite(result))
    else:
        raise AssertionError(f"unexpected result type {type(result)}")


analyses = st.builds(
    Analysis,
    sequential=st.booleans(),
    alpha=st.sampled_from([0.001, 0.05, 0.5]),
    tuning=st.sampled_from([1.0, 5000.0, 1e12]),
    min_units=st.sampled_from([2, 20]),
)


@settings(max_examples=100, deadline=None)
@given(arms(), arms(), analyses, st.integers(1, 4))
def test_comparisons_are_finite_or_say_why(
    control: RatioData, treatment: RatioData, analysis: Analysis, m: int
) -> None:
    result = compare(control, treatment, analysis, m)
    assert_finite_or_reason(result)
    assert_finite_or_reason(compare_treatments(control, {"b": treatment, "c": control}, analysis))
    for direction in ("higher_is_worse", "lower_is_worse"):
        for tolerance in (Tolerance(), Tolerance(0.1, relative=True)):
            assert_finite_or_reason(judge(result, direction, tolerance))


@settings(max_examples=100, deadline=None)
@given(arms(), st.sampled_from([1e-9, 0.05, 0.999]), st.sampled_from([2, 20]))
def test_arm_estimates_are_finite_or_say_why(data: RatioData, alpha: float, min_units: int) -> None:
    assert_finite_or_reason(point(data))
    assert_finite_or_reason(estimate(data, alpha, min_units))
    ids = np.arange(data.units) % 7
    assert_finite_or_reason(estimate(per_unit(ids, data.numerator, data.denominator), alpha, min_units))


@settings(max_examples=100, deadline=None)
@given(values, values, values, values, st.sampled_from([0.0, 1.96, 3.0, 1e200, math.nan]))
def test_fieller_is_finite_or_says_why(
    control: float, control_variance: float, treatment: float, treatment_variance: float, critical: float
) -> None:
    assert_finite_or_reason(fieller(control, control_variance, treatment, treatment_variance, critical))


@settings(max_examples=100, deadline=None)
@given(
    values,
    values,
    st.one_of(st.none(), values),
    st.booleans(),
    st.sampled_from([0.0, 1e-12, 0.05, 1.0, math.nan]),
    st.sampled_from([0.0, 0.01, 0.8, 0.999999, 1.0]),
    st.integers(0, 5),
    values,
    st.booleans(),
    st.integers(0, 10**9),
)
def test_plans_are_finite_or_say_why(
    effect: float,
    unit_variance: float,
    baseline: float | None,
    relative: bool,
    alpha: float,
    power: float,
    comparisons: int,
    allocation: float,
    sequential_analysis: bool,
    units: int,
) -> None:
    plan = plan_units(
        effect,
        unit_variance=unit_variance,
        baseline=baseline,
        relative=relative,
        alpha=alpha,
        power=power,
        comparisons=comparisons,
        allocation=allocation,
        sequential=sequential_analysis,
    )
    assert_finite_or_reason(plan)
    if isinstance(plan, SamplePlan):
        assert plan.control_units >= 1 and plan.treatment_units >= 1
        assert_finite_or_reason(progress(plan, units, units // 2))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(values, max_size=40), st.sampled_from([0.0, 0.5, 0.99, 1.0, math.nan]), st.sampled_from([*EXTREMES, 20.0])
)
def test_latency_guardrail_inputs_are_finite_or_say_why(
    latencies: list[float], quantile: float, threshold: float
) -> None:
    assert_finite_or_reason(latency_threshold(latencies, quantile))
    data = slow_requests(np.arange(len(latencies)) % 3, latencies, threshold)
    assert_finite_or_reason(estimate(data, min_units=2))


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 1e300),
    st.floats(1, 1e300),
    st.sampled_from([1e-12, 0.05, 0.5, 0.999]),
    st.floats(1, 1e15),
)
def test_sequence_formulas_are_finite_on_their_domain(z: float, n: float, alpha: float, tuning: float) -> None:
    # The domain: at least one unit (at n -> 0 the sequence is infinitely wide, as it should be).
    p = float(sequential.p_value(z, n, alpha, tuning))
    multiplier = float(sequential.halfwidth_multiplier(n, alpha, tuning))

    assert 0.0 <= p <= 1.0
    assert math.isfinite(multiplier) and multiplier > 0
