"""The sensitivity simulation (abtest/bench/sensitivity.py), small and fast: it simulates what the router does,
and interleaving beats the A/B test at the same users."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from abtest.bench.sensitivity import (
    Arms,
    Users,
    _expected_credit,
    _interleaved_credits,
    ab_rates,
    binomial_band,
    build_arms,
    interleaving_rates,
    sign_test_size,
    users_for_power,
)
from recsys.clicks import ClickModel
from recsys.truth import expected_outcomes
from router.interleaving import request_coins, team_draft

K = 10


def _population(seed: int = 1, tastes: int = 120, items: int = 250) -> tuple[NDArray[np.float64], Arms]:
    """A latent-taste population and two rankers of it: model_b ranks by true affinity plus a little noise,
    model_a with more noise (so model_b is the better one)."""
    rng = np.random.default_rng(seed)
    affinity = rng.normal(0.0, 1.0, (tastes, 4)) @ rng.normal(0.0, 0.6, (4, items)) + rng.normal(0, 0.5, items)
    noisy = np.argsort(-(affinity + rng.normal(0.0, 1.2, affinity.shape)), axis=1)[:, :K]
    sharp = np.argsort(-(affinity + rng.normal(0.0, 0.4, affinity.shape)), axis=1)[:, :K]
    return affinity, build_arms(("model_a", "model_b"), (noisy, sharp), affinity)


def test_precomputed_interleaves_are_what_the_router_serves() -> None:
    """For real request ids, team_draft's list is the precomputed list of the pattern made of the request's
    first coins: the simulation shows users exactly the router's interleaves."""
    rng = np.random.default_rng(3)
    affinity = rng.normal(0.0, 1.0, (30, 60))
    first = np.argsort(-(affinity + rng.normal(0.0, 1.0, affinity.shape)), axis=1)[:, :K]
    second = np.argsort(-(affinity + rng.normal(0.0, 1.0, affinity.shape)), axis=1)[:, :K]
    second[::3, -3:] = -1  # some short lists
    arms = build_arms(("model_a", "model_b"), (first, second), affinity)
    rounds = (K + 1) // 2
    for n in range(600):
        taste, request_id = n % 30, f"{n:032x}"
        ranked = {"model_a": first[taste].tolist(), "model_b": [i for i in second[taste].tolist() if i >= 0]}
        merged = team_draft(ranked, K, request_id)
        coins = request_coins(request_id)
        pattern = sum(int(next(coins)) << r for r in range(rounds))
        shown = len(merged.items)
        assert arms.interleaved[taste, pattern, :shown] == pytest.approx(affinity[taste, list(merged.items)])
        assert arms.teams[taste, pattern, :shown].tolist() == [0 if t == "model_a" else 1 for t in merged.teams]
        assert (arms.teams[taste, pattern, shown:] == -1).all()


def test_simulated_credit_matches_its_expectation() -> None:
    """Mean credited clicks per interleaved request, over ~400,000 simulated requests, agree with the exact
    expectation (quadrature over propensity, average over tastes and coin patterns) within 4 standard errors."""
    _, arms = _population()
    users = Users(mean_requests=20.0)
    rng = np.random.default_rng(6)
    count = 20_000
    first, second = _interleaved_credits(rng, arms, users, count)
    rng_again = np.random.default_rng(6)  # the same draws again, to know each user's number of requests
    _, _, requests = users.draw(rng_again, count, arms.tastes)
    expected = _expected_credit(arms, users.click_model)
    for credit, name in ((first, "model_a"), (second, "model_b")):
        per_request = credit.sum() / requests.sum()
        ratio_se = np.std(credit - per_request * requests) / requests.mean() / np.sqrt(count)  # delta method
        assert abs(per_request - expected[name]) < 4 * ratio_se


def test_interleaving_finds_the_better_model_with_fewer_users_than_the_ab_test() -> None:
    """40 users per arm, 200 experiments each: interleaving names the ground truth's better model (model_b)
    more often than the A/B test on CTR, by more than the two estimates' binomial noise, and neither names the
    worse one more than alpha allows."""
    _, arms = _population()
    model = ClickModel()
    ctr_a, _ = expected_outcomes(arms.served[0], model)
    ctr_b, _ = expected_outcomes(arms.served[1], model)
    assert ctr_b > ctr_a  # the ground truth prefers model_b
    users, rng = Users(mean_requests=10.0), np.random.default_rng(7)
    ab = ab_rates(rng, arms, users, users_per_arm=40, experiments=200)
    interleaved = interleaving_rates(rng, arms, users, users_per_arm=40, experiments=200)
    ab_power, interleaving_power = ab.named(1), interleaved.fixed.named(1)
    noise = np.sqrt((ab_power * (1 - ab_power) + interleaving_power * (1 - interleaving_power)) / 200)
    assert interleaving_power - ab_power > 3 * noise
    wrong_high = stats.binom.ppf(0.995, 200, 0.05) / 200
    assert ab.named(0) <= wrong_high and interleaved.fixed.named(0) <= wrong_high


def test_users_for_power_interpolates_in_log_users() -> None:
    assert users_for_power([10, 100], [0.6, 1.0]) == pytest.approx(10 * 10**0.5)
    assert users_for_power([10, 20], [0.5, 0.7]) is None
    assert users_for_power([10, 20], [0.9, 1.0]) is None  # already past the target at the smallest size
    assert users_for_power([10, 20], [0.8, 1.0]) == 10


def test_sign_test_size_is_the_exact_rejection_probability() -> None:
    """Reference: sum of Binomial(voting, 1/2) probabilities of the outcomes scipy's binomtest rejects."""
    for voting in (1, 5, 6, 17, 40, 101):
        rejected = [w for w in range(voting + 1) if stats.binomtest(w, voting, 0.5).pvalue < 0.05]
        assert sign_test_size(voting) == pytest.approx(stats.binom.pmf(rejected, voting, 0.5).sum())
        assert sign_test_size(voting) <= 0.05


def test_binomial_band() -> None:
    low, high = binomial_band(1000)
    assert (low, high) == (stats.binom.ppf(0.005, 1000, 0.05) / 1000, stats.binom.ppf(0.995, 1000, 0.05) / 1000)
    assert low < 0.05 < high
