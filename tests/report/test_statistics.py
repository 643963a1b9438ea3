"""The report's statistical claims, tested over many simulated experiments with fixed seeds.

Tolerances come from the binomial distribution of the number of significant experiments: a rate measured
over n experiments must lie in scipy's 99% binomial interval around the rate the math promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportions_ztest

from recsys.clicks import ClickModel
from router.report import stats
from router.report.stats import UnitCounts
from tests.report.simulation import Batch, click_probabilities, simulate

ALPHA = 0.05
EXPERIMENTS = 500
USERS_PER_ARM = 200
CHUNK = 100


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[float, float]:
    """The central `confidence` interval of the share of successes in n trials of probability p."""
    low, high = scipy_stats.binom.interval(confidence, n, p)
    return low / n, high / n


@dataclass(frozen=True)
class PValues:
    """One p-value per simulated experiment, for each way of analysing it."""

    ctr: NDArray[np.float64]
    """The report's CTR comparison (``stats.compare_ctr``) at the unit of randomisation."""
    conversion: NDArray[np.float64]
    per_item: NDArray[np.float64]
    """The naive z-test over shown items that the report refuses to do."""


def arm_units(batch: Batch, rows: slice, arm: int, assignment: str) -> UnitCounts:
    """The experiment's units in one arm, built from exposure rows the way the report builds them."""
    mask = batch.arm[rows] == arm
    clicked = batch.clicked[rows][mask]
    if assignment == "hash":
        return stats.group_units(batch.user[rows][mask], clicked)
    return UnitCounts.per_request(clicked)


def analyse(assignment: str, seed: int, lift: float = 0.0, users_per_arm: int = USERS_PER_ARM) -> PValues:
    rng = np.random.default_rng(seed)
    unit: stats.Unit = "user" if assignment == "hash" else "request"
    ctr, conversion, per_item = [], [], []
    for _ in range(EXPERIMENTS // CHUNK):
        batch = simulate(rng, experiments=CHUNK, users_per_arm=users_per_arm, lift=lift, assignment=assignment)
        for e in range(CHUNK):
            rows = batch.experiment_rows(e)
            control, treatment = arm_units(batch, rows, 0, assignment), arm_units(batch, rows, 1, assignment)
            difference = stats.compare_ctr(control, treatment, unit)
            assert difference.p_value is not None and difference.absolute is not None
            # Detected means significant in the right direction; an A/A has no right direction.
            right_way = lift == 0 or difference.absolute.value > 0
            ctr.append(difference.p_value if right_way else 1.0)
            converted = [int(np.sum(units.clicked > 0)) for units in (control, treatment)]
            users = [control.units, treatment.units]
            conversion_p = stats.compare_proportions(converted[0], users[0], converted[1], users[1]).p_value
            conversion.append(conversion_p if conversion_p is not None else 1.0)
            items = batch.item_clicks[rows]
            arms = batch.arm[rows]
            _, item_p = proportions_ztest(
                [items[arms == 1].sum(), items[arms == 0].sum()], [items[arms == 1].size, items[arms == 0].size]
            )
            per_item.append(float(item_p))
    return PValues(np.array(ctr), np.array(conversion), np.array(per_item))


@pytest.fixture(scope="module")
def aa_hash() -> PValues:
    return analyse("hash", seed=20240501)


@pytest.fixture(scope="module")
def aa_random() -> PValues:
    return analyse("random", seed=20240502)


def test_simulation_click_probabilities_match_the_click_model() -> None:
    model = ClickModel()
    rng = np.random.default_rng(3)
    affinities = rng.normal(0, 1, (5, 10))
    propensities = model.draw_propensities(rng, 5)

    vectorised = click_probabilities(model, affinities, propensities)

    for row in range(5):
        expected = model.click_probabilities(affinities[row], float(propensities[row]))
        np.testing.assert_allclose(vectorised[row], expected, rtol=1e-12)


def test_simulation_clicks_within_a_user_are_correlated() -> None:
    batch = simulate(np.random.default_rng(9), experiments=1, users_per_arm=2000)
    per_user = stats.group_units(batch.user, batch.clicked)
    # Intra-user correlation shows as a design effect > 1: the clustered variance beats the binomial one.
    binomial = per_user.ratio * (1 - per_user.ratio) / per_user.total_exposures
    assert stats.ratio_variance(per_user) > 1.5 * binomial


def test_ctr_comparison_false_positive_rate_under_hash_is_nominal(aa_hash: PValues) -> None:
    rate = float(np.mean(aa_hash.ctr < ALPHA))
    low, high = binomial_interval(EXPERIMENTS, ALPHA)

    assert low <= rate <= high, f"A/A false-positive rate {rate:.3f} outside [{low:.3f}, {high:.3f}]"


def test_conversion_comparison_false_positive_rate_under_hash_is_nominal(aa_hash: PValues) -> None:
    rate = float(np.mean(aa_hash.conversion < ALPHA))
    low, high = binomial_interval(EXPERIMENTS, ALPHA)

    assert low <= rate <= high, f"A/A false-positive rate {rate:.3f} outside [{low:.3f}, {high:.3f}]"


def test_ctr_comparison_false_positive_rate_under_random_is_nominal(aa_random: PValues) -> None:
    rate = float(np.mean(aa_random.ctr < ALPHA))
    low, high = binomial_interval(EXPERIMENTS, ALPHA)

    assert low <= rate <= high, f"A/A false-positive rate {rate:.3f} outside [{low:.3f}, {high:.3f}]"


def test_per_item_z_test_inflates_false_positives(aa_hash: PValues) -> None:
    # The same A/A experiments as the report's analysis above, tested per shown item instead.
    rate = float(np.mean(aa_hash.per_item < ALPHA))
    _, high = binomial_interval(EXPERIMENTS, ALPHA)

    assert rate > high, f"per-item false-positive rate {rate:.3f} is not above {high:.3f}"


def test_ctr_comparison_detects_known_lift_with_predicted_power() -> None:
    lift = 0.3  # added to every shown item's true affinity in the treatment
    rng = np.random.default_rng(20240503)
    # Pilot: the true CTR difference and unit-level spread, from one very large experiment.
    controls, treatments = [], []
    for _ in range(4):
        batch = simulate(rng, experiments=1, users_per_arm=75_000, lift=lift)
        whole = slice(0, batch.user.size)
        controls.append(arm_units(batch, whole, 0, "hash"))
        treatments.append(arm_units(batch, whole, 1, "hash"))
    control = UnitCounts.of(*(np.concatenate([getattr(u, f) for u in controls]) for f in ("exposures", "clicked")))
    treatment = UnitCounts.of(*(np.concatenate([getattr(u, f) for u in treatments]) for f in ("exposures", "clicked")))
    effect = treatment.ratio - control.ratio
    sd = math.sqrt((stats.unit_sd(control) ** 2 + stats.unit_sd(treatment) ** 2) / 2)
    effect_se = math.sqrt(stats.ratio_variance(control) + stats.ratio_variance(treatment))
    n = math.ceil(stats.units_needed(effect, sd))  # the report's sample-size formula, for 80% power

    detected = float(np.mean(analyse("hash", seed=20240504, lift=lift, users_per_arm=n).ctr < ALPHA))

    # Tolerance: the binomial spread over EXPERIMENTS, widened by the pilot's own uncertainty about effect.
    low = binomial_interval(EXPERIMENTS, stats.power(effect - 2.58 * effect_se, sd, n))[0]
    high = binomial_interval(EXPERIMENTS, stats.power(effect + 2.58 * effect_se, sd, n))[1]
    assert 0.78 < stats.power(effect, sd, n) < 0.82
    assert low <= detected <= high, f"power {detected:.3f} outside [{low:.3f}, {high:.3f}] with {n} users/arm"


def test_sample_ratio_flags_a_45_55_split_configured_as_50_50() -> None:
    units, draws = 4000, 500
    rng = np.random.default_rng(20240505)
    counts = rng.multinomial(units, [0.45, 0.55], size=draws)
    flagged = np.mean([result.mismatch for c in counts if (result := stats.sample_ratio(c, [50, 50]))])
    # Power of the chi-square test at 0.001: noncentral chi-square with lambda = n * sum((p - q)^2 / q).
    noncentrality = units * ((0.45 - 0.5) ** 2 / 0.5 + (0.55 - 0.5) ** 2 / 0.5)
    predicted = scipy_stats.ncx2.sf(scipy_stats.chi2.isf(stats.SRM_THRESHOLD, 1), 1, noncentrality)
    low, high = binomial_interval(draws, predicted)

    assert predicted > 0.99
    assert low <= flagged <= high


def test_sample_ratio_rarely_flags_a_correct_split() -> None:
    draws = 5000
    rng = np.random.default_rng(20240506)
    weights = [20, 30, 50]
    counts = rng.multinomial(4000, np.array(weights) / 100, size=draws)
    flagged = np.mean([result.mismatch for c in counts if (result := stats.sample_ratio(c, weights))])
    _, high = binomial_interval(draws, stats.SRM_THRESHOLD)

    assert flagged <= high, f"false-alarm rate {flagged:.4f} above {high:.4f}"
