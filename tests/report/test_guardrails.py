"""Guardrails: the decision rule, and by simulation that continuous checking rarely stops a healthy variant
and does stop a harmful one (error rate, and latency through the slow-request share)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats as scipy_stats

from router.report.comparison import Analysis, Comparison, compare, difference_batch
from router.report.guardrails import (
    HARMFUL,
    Tolerance,
    classify,
    judge,
    latency_threshold,
    slow_requests,
    worse_bounds,
)
from router.report.ratio import RatioData, Unavailable, moments
from router.report.stats import Estimate

SEQUENTIAL = Analysis(tuning=4000)


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[float, float]:
    low, high = scipy_stats.binom.interval(confidence, n, p)
    return low / n, high / n


def comparison(low: float, high: float, *, analysis: str = "sequential", relative: bool = True) -> Comparison:
    """A comparison whose absolute and relative intervals are both [low, high] (the rule reads one of them)."""
    value = (low + high) / 2
    estimate = Estimate(value, low, high)
    return Comparison(
        control=0.1,
        treatment=0.1 + value,
        absolute=estimate,
        relative=estimate if relative else Unavailable("no relative interval"),
        p_value=0.5,
        significant=low > 0 or high < 0,
        standard_error=0.01,
        critical=3.0,
        df=None,
        control_units=100,
        treatment_units=100,
        analysis="sequential" if analysis == "sequential" else "fixed",
        alpha=0.05,
        comparisons=1,
        method="test",
    )


@pytest.mark.parametrize(
    ("low", "high", "direction", "margin", "state"),
    [
        (0.02, 0.05, "higher_is_worse", 0.0, "harmful"),
        (0.02, 0.05, "higher_is_worse", 0.03, "inconclusive"),
        (0.02, 0.05, "higher_is_worse", 0.06, "healthy"),
        (-0.05, -0.02, "higher_is_worse", 0.0, "healthy"),
        (-0.05, -0.02, "lower_is_worse", 0.0, "harmful"),
        (-0.05, -0.02, "lower_is_worse", 0.03, "inconclusive"),
        (0.01, 0.03, "lower_is_worse", 0.0, "healthy"),
        (-0.01, 0.01, "higher_is_worse", 0.0, "inconclusive"),
    ],
)
def test_guardrail_state_is_where_the_margin_lies_against_the_sequence(
    low: float, high: float, direction: str, margin: float, state: str
) -> None:
    for relative in (False, True):
        result = judge(
            comparison(low, high),
            "higher_is_worse" if direction == "higher_is_worse" else "lower_is_worse",
            Tolerance(margin, relative=relative),
        )
        assert result.state == state
        assert result.worse_by is not None and result.worse_by.low <= result.worse_by.value <= result.worse_by.high
        assert result.scale == ("relative" if relative else "absolute")


def test_guardrail_is_inconclusive_without_a_sequential_comparison() -> None:
    assert judge(Unavailable("not enough data"), "higher_is_worse", Tolerance()).reason == "not enough data"
    fixed = judge(comparison(0.02, 0.05, analysis="fixed"), "higher_is_worse", Tolerance())
    assert fixed.state == "inconclusive" and "sequential" in fixed.reason
    no_relative = judge(comparison(0.02, 0.05, relative=False), "higher_is_worse", Tolerance(0.1, relative=True))
    assert no_relative.state == "inconclusive" and no_relative.worse_by is None


def test_tolerance_refuses_a_negative_margin() -> None:
    with pytest.raises(ValueError, match="margin >= 0"):
        Tolerance(-0.1)


def test_judge_on_a_real_comparison_reports_the_numbers_that_decided() -> None:
    rng = np.random.default_rng(2)
    exposures = np.full(500, 10.0)
    control = RatioData.of(rng.binomial(10, 0.01, 500).astype(float), exposures)
    failing = RatioData.of(rng.binomial(10, 0.20, 500).astype(float), exposures)
    result = judge(compare(control, failing, SEQUENTIAL), "higher_is_worse", Tolerance(0.5, relative=True))

    assert result.state == "harmful"
    assert result.worse_by is not None and result.worse_by.low > 0.5


@dataclass(frozen=True)
class Monitored:
    harmful: NDArray[np.bool_]
    first_look: NDArray[np.int64]


LOOKS = 10


def monitor(
    control: tuple[NDArray[np.float64], NDArray[np.float64]],
    treatment: tuple[NDArray[np.float64], NDArray[np.float64]],
    margin: float,
) -> Monitored:
    """Check the guardrail (higher is worse) every 1/LOOKS of the users; a variant stays stopped once harmful."""
    experiments, users = control[0].shape
    harmful = np.zeros(experiments, dtype=bool)
    first = np.full(experiments, users)
    for k in np.linspace(users / LOOKS, users, LOOKS).astype(int):
        batch = difference_batch(
            moments(control[0][:, :k], control[1][:, :k]), moments(treatment[0][:, :k], treatment[1][:, :k]), SEQUENTIAL
        )
        new = (classify(*worse_bounds(batch.low, batch.high, "higher_is_worse"), margin) == HARMFUL) & ~harmful
        first[new] = k
        harmful |= new
    return Monitored(harmful, first)


EXPERIMENTS = 400
USERS = 2000


def error_counts(rng: np.random.Generator, rate: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per user: 1 + Poisson(3) requests, failing with a per-user rate ~ Beta around ``rate``."""
    exposures = (1 + rng.poisson(3.0, (EXPERIMENTS, USERS))).astype(np.float64)
    user_rate = rng.beta(rate * 20, (1 - rate) * 20, exposures.shape)
    return rng.binomial(exposures.astype(np.int64), user_rate).astype(np.float64), exposures


def test_error_rate_guardrail_checked_continuously_rarely_stops_a_healthy_variant() -> None:
    rng = np.random.default_rng(20240615)
    result = monitor(error_counts(rng, 0.02), error_counts(rng, 0.02), margin=0.0)

    # Harmful is one side of a two-sided sequence at alpha: at most alpha / 2 over all looks.
    assert result.harmful.mean() <= binomial_interval(EXPERIMENTS, 0.025)[1]


def test_error_rate_guardrail_stops_a_failing_variant_early() -> None:
    rng = np.random.default_rng(20240616)
    result = monitor(error_counts(rng, 0.02), error_counts(rng, 0.04), margin=0.005)

    assert result.harmful.mean() > 0.95
    assert np.median(result.first_look) <= USERS / 2


REQUESTS = 5


def latencies(rng: np.random.Generator, users: int, slowdown: float = 1.0) -> NDArray[np.float64]:
    """Milliseconds, (experiment, user, request): a per-user network factor times per-request noise."""
    user = rng.lognormal(0.0, 0.3, (EXPERIMENTS, users, 1))
    return np.asarray(20.0 * user * rng.lognormal(0.0, 0.5, (EXPERIMENTS, users, REQUESTS)) * slowdown, np.float64)


def slow_shares(
    control: NDArray[np.float64], treatment: NDArray[np.float64], margin: float
) -> tuple[Monitored, NDArray[np.float64]]:
    """Monitor the slow-request share with the threshold re-estimated as the control's p99 at every look."""
    experiments, users, _ = control.shape
    harmful = np.zeros(experiments, dtype=bool)
    first = np.full(experiments, users)
    for k in np.linspace(users / LOOKS, users, LOOKS).astype(int):
        threshold = np.quantile(control[:, :k].reshape(experiments, -1), 0.99, axis=1)[:, None, None]
        control_arm, treatment_arm = (
            moments(np.sum(x[:, :k] > threshold, axis=-1).astype(np.float64), np.full((experiments, k), REQUESTS))
            for x in (control, treatment)
        )
        batch = difference_batch(control_arm, treatment_arm, SEQUENTIAL)
        new = (classify(*worse_bounds(batch.low, batch.high, "higher_is_worse"), margin) == HARMFUL) & ~harmful
        first[new] = k
        harmful |= new
    return Monitored(harmful, first), threshold[:, 0, 0]


def test_latency_guardrail_with_the_controls_p99_rarely_stops_a_healthy_variant() -> None:
    rng = np.random.default_rng(20240617)
    result, _ = slow_shares(latencies(rng, USERS), latencies(rng, USERS), margin=0.0)

    assert result.harmful.mean() <= binomial_interval(EXPERIMENTS, 0.025)[1]


def test_slow_share_against_the_controls_own_p99_has_an_honest_variance() -> None:
    # The threshold is estimated from the control, so the control's share is 1 % by construction; its
    # delta-method variance then stands for the threshold's estimation error. A single fixed-horizon look
    # at an A/A shows it is the right size (neither inflated nor conservative).
    rng = np.random.default_rng(20240619)
    control, treatment = latencies(rng, USERS), latencies(rng, USERS)
    threshold = np.quantile(control.reshape(EXPERIMENTS, -1), 0.99, axis=1)[:, None, None]
    arms = [
        moments(np.sum(x > threshold, axis=-1).astype(np.float64), np.full(x.shape[:2], 5.0))
        for x in (control, treatment)
    ]
    rate = float(np.mean(difference_batch(arms[0], arms[1], Analysis(sequential=False)).significant))
    low, high = binomial_interval(EXPERIMENTS, 0.05)

    assert float(np.mean(arms[0].value)) == pytest.approx(0.01, abs=1e-4)
    assert low <= rate <= high, f"A/A rejection rate {rate:.3f} outside [{low:.3f}, {high:.3f}]"


def test_latency_guardrail_stops_a_variant_whose_tail_is_a_quarter_slower() -> None:
    rng = np.random.default_rng(20240618)
    result, _ = slow_shares(latencies(rng, USERS), latencies(rng, USERS, slowdown=1.25), margin=0.005)

    assert result.harmful.mean() > 0.95


def test_slow_requests_and_threshold_agree_with_the_vectorised_definition() -> None:
    rng = np.random.default_rng(3)
    lat = latencies(rng, 50)[0]
    user = np.repeat(np.arange(50), REQUESTS)
    threshold = latency_threshold(lat.ravel())
    assert isinstance(threshold, float)
    data = slow_requests(user, lat.ravel(), threshold)

    assert threshold == pytest.approx(float(np.quantile(lat, 0.99)))
    np.testing.assert_array_equal(data.numerator, np.sum(lat > threshold, axis=1))
    np.testing.assert_array_equal(data.denominator, np.full(50, REQUESTS))
    assert isinstance(latency_threshold([]), Unavailable)
    assert slow_requests([1], [np.nan], 10.0).numerator.tolist() == [1.0]  # no answer counts as slow
