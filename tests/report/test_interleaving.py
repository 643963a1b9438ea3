"""The interleaving analysis (router/report/interleaving.py): votes, the sign test, Δ's interval, the confidence
sequence, odd data, verdicts, and A/A calibration through simulated clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from abtest.bench.sensitivity import Users, build_arms, interleaving_rates
from router.report.interleaving import (
    DegradedCounts,
    Preference,
    UserCredits,
    always_valid_p_value,
    asymptotic_confidence_sequence,
    compare_interleaved,
    degraded_counts,
    sign_test,
    user_credits,
)

A, B = "model_a", "model_b"


def _numbers(result: Preference) -> list[float]:
    values: list[float] = []
    for estimate in (result.delta, result.sequential.interval if result.sequential else None):
        if estimate is not None:
            values += [estimate.value, estimate.low, estimate.high]
    values += [v for v in (result.p_value, result.sequential.p_value if result.sequential else None) if v is not None]
    return values


def test_sign_test_matches_scipy_binomtest_and_clopper_pearson() -> None:
    """Reference: scipy.stats.binomtest(wins, wins + losses, 0.5) and its exact (Clopper-Pearson) interval
    (slow, ~10 ms a call: a spread of cases, both tails and the middle)."""
    for voting in (1, 2, 3, 4, 5, 10, 25, 60, 150, 400):
        for wins in sorted({*range(0, voting + 1, max(1, voting // 10)), voting}):
            clicking = voting + 7
            estimate, p_value, reason = sign_test(wins, voting - wins, clicking)
            reference = stats.binomtest(wins, voting, 0.5)
            interval = reference.proportion_ci(0.95, method="exact")
            scale = voting / clicking
            assert reason is None and estimate is not None and p_value is not None
            assert p_value == pytest.approx(reference.pvalue, abs=1e-12)
            assert estimate.value == pytest.approx((2 * wins - voting) / clicking)
            assert estimate.low == pytest.approx(scale * (2 * interval.low - 1), abs=1e-10)
            assert estimate.high == pytest.approx(scale * (2 * interval.high - 1), abs=1e-10)


def test_sign_test_interval_excludes_zero_exactly_when_p_is_below_alpha() -> None:
    for voting in range(1, 300):
        for wins in range(voting + 1):
            estimate, p_value, _ = sign_test(wins, voting - wins, voting + 3)
            assert estimate is not None and p_value is not None
            assert (p_value < 0.05) == (estimate.low > 0 or estimate.high < 0)


def test_sign_test_undefined_cases_give_reasons() -> None:
    assert sign_test(0, 0, 0) == (None, None, "no user has a credited click yet")
    assert sign_test(0, 0, 5) == (None, None, "all 5 users with a credited click are ties: no preference to test")
    with pytest.raises(ValueError, match="wins \\+ losses <= clicking"):
        sign_test(3, 2, 4)


def test_delta_interval_covers_the_true_preference() -> None:
    """2,000 phases of 300 clicking users with P(win, loss, tie) = (0.40, 0.25, 0.35), so Δ = 0.15: the 95%
    interval must cover Δ at least as often as the binomial 99% band's lower end (Clopper-Pearson is
    conservative, and fixing the ties' share costs ~0.3 pp of coverage at this Δ; the band allows both)."""
    rng = np.random.default_rng(5)
    counts = rng.multinomial(300, [0.40, 0.25, 0.35], size=2000)
    covered = 0
    for wins, losses, _ in counts:
        estimate, _, _ = sign_test(int(wins), int(losses), 300)
        assert estimate is not None
        covered += estimate.low <= 0.15 <= estimate.high
    low = stats.binom.ppf(0.005, 2000, 0.95)
    assert covered >= low


def test_compare_interleaved_counts_votes() -> None:
    credits = UserCredits.of(control=[0, 2, 1, 0, 3, 0], treatment=[1, 1, 4, 0, 3, 0])
    result = compare_interleaved(A, B, credits)
    assert (result.users, result.users_with_click) == (6, 4)
    assert (result.wins, result.losses, result.ties) == (2, 1, 1)
    assert (result.control_clicks, result.treatment_clicks) == (6, 9)
    assert result.delta is not None and result.delta.value == pytest.approx(0.25)


def test_compare_interleaved_verdicts() -> None:
    strong = compare_interleaved(A, B, UserCredits.of([0] * 60 + [2] * 20, [1] * 60 + [1] * 20))
    assert strong.significant
    assert strong.verdict.startswith("users prefer model_b's recommendations: Δ = +0.50 [")
    assert strong.verdict.endswith("p < 0.001")
    reverse = compare_interleaved(A, B, UserCredits.of([1] * 60 + [0] * 20, [0] * 60 + [1] * 20))
    assert reverse.verdict.startswith("users prefer model_a's recommendations: Δ = -0.50 [")
    weak = compare_interleaved(A, B, UserCredits.of([1] * 9 + [0] * 11, [0] * 9 + [1] * 11))
    assert not weak.significant
    assert (
        weak.verdict == "no significant preference yet between model_a and model_b (Δ = +0.10 [-0.37, 0.54], p = 0.824)"
    )
    assert strong.sequential is not None and strong.sequential.interval.high == 1.0  # clipped to Δ's range
    assert strong.sequential_verdict.startswith("no always-valid preference yet between model_a and model_b")
    many = compare_interleaved(A, B, UserCredits.of([0] * 1500 + [1] * 1000, [1] * 1500 + [0] * 1000))
    assert many.sequential_verdict.startswith(
        "users prefer model_b's recommendations at any stopping time: Δ = +0.20 ["
    )


def test_compare_interleaved_odd_data_gives_reasons_not_nan() -> None:
    cases = {
        "no users": UserCredits.of([], []),
        "no clicks": UserCredits.of([0, 0, 0], [0, 0, 0]),
        "one user": UserCredits.of([0], [2]),
        "all ties": UserCredits.of([1, 2, 1], [1, 2, 1]),
        "all one way": UserCredits.of([0] * 12, [1] * 12),
    }
    results = {name: compare_interleaved(A, B, credits) for name, credits in cases.items()}
    for result in results.values():
        assert all(math.isfinite(value) for value in _numbers(result))
        assert result.verdict and result.sequential_verdict
    assert results["no users"].verdict == (
        "not enough data yet to compare model_a and model_b by interleaving: no user has a credited click yet"
    )
    assert results["no clicks"].reason == "no user has a credited click yet"
    assert results["one user"].p_value == 1.0
    assert results["one user"].sequential_reason == "needs at least 2 users with a credited click, has 1"
    assert results["all ties"].delta is None and "ties" in (results["all ties"].reason or "")
    assert results["all ties"].sequential_reason == (
        "all 3 users with a credited click tie: no spread to bound the sequence with"
    )
    one_way = results["all one way"]
    assert one_way.p_value == pytest.approx(2 * 0.5**12) and one_way.significant  # finite: no variance needed
    assert one_way.sequential is None and "vote the same way" in (one_way.sequential_reason or "")


def test_credits_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        UserCredits.of([1, 2], [1])
    with pytest.raises(ValueError, match="negative"):
        UserCredits.of([-1], [1])


def test_user_credits_groups_exposures_and_leaves_out_degraded_ones() -> None:
    credits = user_credits(
        ["u1", "u2", "u1", "u3", "u3"], [1, 0, 0, 5, 0], [0, 1, 2, 0, 1], degraded=[False, False, False, True, False]
    )
    assert credits.control.tolist() == [1, 0, 0]
    assert credits.treatment.tolist() == [2, 1, 1]
    only_degraded = user_credits(["u1"], [3], [0], degraded=[True])
    assert only_degraded.users == 0
    with pytest.raises(ValueError, match="one flag per exposure"):
        user_credits(["u1"], [1], [0], degraded=[True, False])


def test_degraded_interleaves_are_counted_per_failing_variant_and_not_voted() -> None:
    counts = degraded_counts([A, B], [None, B, None, B, A, None, None, None])
    assert counts == DegradedCounts(8, ((A, 1), (B, 2)))
    assert counts.degraded == 3
    assert counts.note() == (
        "3 of 8 interleaved exposures (37.5%) were degraded (model_a failed in 1, model_b failed in 2): "
        "the other model's list was served alone; counted as availability loss, not as preference"
    )
    result = compare_interleaved(A, B, UserCredits.of([1], [0]), counts)
    assert result.degraded.degraded == 3 and result.users_with_click == 1
    assert DegradedCounts(5, ((A, 0), (B, 0))).note() == ""
    with pytest.raises(ValueError, match="not in"):
        degraded_counts([A, B], ["model_c"])


# Golden values from GrowthBook's stats engine (its SequentialTwoSidedTTest, absolute difference), made in a
# separate virtualenv with:
#   python3 -m venv /tmp/gb && /tmp/gb/bin/pip install gbstats==0.8.0
#   /tmp/gb/bin/python -c '
#   from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
#   from gbstats.models.statistics import SampleMeanStatistic
#   for ma, va, na, mb, vb, nb, tuning in [(0.30, 0.21, 120, 0.45, 0.26, 130, 5000),
#                                          (0.0, 1.0, 800, 0.12, 0.9, 900, 5000), (1.0, 2.0, 40, 1.3, 2.5, 60, 200)]:
#       a = SampleMeanStatistic(n=na, sum=ma * na, sum_squares=va * (na - 1) + ma * ma * na)
#       b = SampleMeanStatistic(n=nb, sum=mb * nb, sum_squares=vb * (nb - 1) + mb * mb * nb)
#       t = SequentialTwoSidedTTest(a, b, SequentialConfig(difference_type="absolute",
#                                                         sequential_tuning_parameter=tuning))
#       n = na + nb
#       print((t.point_estimate, t.variance * n, n, tuning, *t.confidence_interval, t.p_value))'
# GrowthBook's per-observation variance is the estimator's variance times n, which is what ours takes.
GROWTHBOOK_SEQUENTIAL = [
    (0.15000000000000002, 0.9375000000000002, 250, 5000, -0.13896590465544018, 0.4389659046554402, 0.5040141969096873),
    (0.12, 3.8250000000000006, 1700, 5000, -0.030033777663097783, 0.2700337776630978, 0.18622489542560783),
    (0.30000000000000004, 9.166666666666668, 100, 200, -0.6335967909941281, 1.2335967909941283, 1.0),
]


@pytest.mark.parametrize(("mean", "variance", "n", "tuning", "low", "high", "p_value"), GROWTHBOOK_SEQUENTIAL)
def test_confidence_sequence_matches_growthbook(
    mean: float, variance: float, n: int, tuning: float, low: float, high: float, p_value: float
) -> None:
    interval = asymptotic_confidence_sequence(mean, variance, n, 0.05, tuning)
    assert interval is not None
    assert interval.value == mean
    assert interval.low == pytest.approx(low, rel=1e-12)
    assert interval.high == pytest.approx(high, rel=1e-12)
    assert always_valid_p_value(mean, variance, n, 0.05, tuning) == pytest.approx(p_value, rel=1e-12)


def test_always_valid_p_is_below_alpha_exactly_when_the_sequence_excludes_zero() -> None:
    rng = np.random.default_rng(8)
    for _ in range(2000):
        mean, variance, n = rng.normal(0, 0.2), rng.uniform(0.1, 1.0), int(rng.integers(2, 20_000))
        interval = asymptotic_confidence_sequence(mean, variance, n)
        p_value = always_valid_p_value(mean, variance, n)
        assert interval is not None and p_value is not None
        assert (p_value < 0.05) == (interval.low > 0 or interval.high < 0)


def test_confidence_sequence_undefined_inputs() -> None:
    assert asymptotic_confidence_sequence(0.1, 1.0, 1) is None
    assert asymptotic_confidence_sequence(0.1, 0.0, 100) is None
    assert asymptotic_confidence_sequence(0.1, math.nan, 100) is None
    assert always_valid_p_value(0.1, math.inf, 100) is None
    with pytest.raises(ValueError, match="alpha"):
        asymptotic_confidence_sequence(0.1, 1.0, 100, alpha=1.5)


def test_confidence_sequence_is_valid_under_continuous_monitoring() -> None:
    """400 null phases of 3,000 users each, with ties (votes -1/0/+1 at 0.3/0.4/0.3), looked at after every
    10th user from the 50th: the share of phases whose sequence ever excludes 0 stays within the binomial 99%
    band's upper end of alpha (a fixed-horizon interval looked at this often would exceed it several times)."""
    rng = np.random.default_rng(21)
    votes = rng.choice([-1, 0, 1], p=[0.3, 0.4, 0.3], size=(400, 3000))
    looks = np.arange(50, 3001, 10)
    sums, squares = np.cumsum(votes, axis=1)[:, looks - 1], np.cumsum(votes**2, axis=1)[:, looks - 1]
    means = sums / looks
    variances = (squares - looks * means**2) / (looks - 1)
    ever, fixed_ever = 0, 0
    for phase in range(400):
        rejected = False
        for index, n in enumerate(looks):
            interval = asymptotic_confidence_sequence(
                float(means[phase, index]), float(variances[phase, index]), int(n)
            )
            assert interval is not None
            rejected = rejected or interval.low > 0 or interval.high < 0
        ever += rejected
        half = 1.96 * np.sqrt(variances[phase] / looks)
        fixed_ever += bool(np.any(np.abs(means[phase]) > half))
    upper = stats.binom.ppf(0.995, 400, 0.05)
    assert ever <= upper
    assert fixed_ever > upper  # the check has teeth: peeking at a fixed-horizon interval is not valid


def test_interleaving_aa_false_positive_rate_is_calibrated() -> None:
    """A/A through simulated clicks: both teams are the same model (same lists), 600 experiments of 300 users
    with ~6 requests each. The sign test's false-positive rate lies in the binomial 99% band of alpha, and in
    the band of its exact attainable size at the experiments' numbers of voters (~0.042: an exact test on a
    discrete statistic is a little conservative)."""
    rng = np.random.default_rng(2)
    tastes, items, k = 80, 150, 10
    affinity = rng.normal(0.0, 1.0, (tastes, items))
    ranking = np.argsort(-(affinity + rng.normal(0.0, 1.0, affinity.shape)), axis=1)[:, :k]
    arms = build_arms((A, A), (ranking, ranking), affinity)
    rates = interleaving_rates(rng, arms, Users(mean_requests=6.0), users_per_arm=150, experiments=600)
    low, high = stats.binom.ppf([0.005, 0.995], 600, 0.05) / 600
    assert low <= rates.fixed.named(None) <= high
    exact_low, exact_high = stats.binom.ppf([0.005, 0.995], 600, rates.attainable_size) / 600
    assert exact_low <= rates.fixed.named(None) <= exact_high
    assert 0.035 <= rates.attainable_size <= 0.05
    assert rates.sequential.named(None) <= high
