"""The ground truth's preference (recsys/truth.py) and the position-based click model's batch form."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.clicks import ClickModel
from recsys.data import LatentTruth, holdout_split, interaction_matrix, load_dataset
from recsys.recommender import FactorModel
from recsys.truth import ModelTruth, TruthPreference, expected_outcomes, ground_truth_preference, served_rows


def test_examination_curve_is_the_dcg_discount() -> None:
    expected = [1.0, 0.6309, 0.5, 0.4307, 0.3869, 0.3562, 0.3333, 0.3155, 0.3010, 0.2890]
    assert ClickModel.examination(10) == pytest.approx(expected, abs=1e-4)


def test_click_probability_rows_match_the_per_list_method() -> None:
    model, rng = ClickModel(), np.random.default_rng(4)
    affinities = rng.normal(0.0, 1.5, (50, 10))
    affinities[3, 7:] = -np.inf  # unknown items are never clicked
    propensities = rng.normal(0.0, 1.0, 50)
    rows = model.click_probability_rows(affinities, propensities)
    for row in range(50):
        assert rows[row] == pytest.approx(model.click_probabilities(affinities[row], float(propensities[row])))
    assert (rows[3, 7:] == 0).all()


def test_expected_outcomes_match_a_monte_carlo_of_the_click_model() -> None:
    """400,000 simulated exposures of 4 lists, propensities drawn per exposure: the quadrature's CTR and clicks
    per exposure agree within 4 standard errors."""
    model, rng = ClickModel(), np.random.default_rng(9)
    lists = rng.normal(1.0, 1.0, (4, 10))
    ctr, clicks = expected_outcomes(lists, model)
    draws = 100_000
    affinities = np.repeat(lists, draws, axis=0)
    probabilities = model.click_probability_rows(affinities, model.draw_propensities(rng, affinities.shape[0]))
    clicked = rng.random(probabilities.shape) < probabilities
    any_click, count = clicked.any(axis=1), clicked.sum(axis=1)
    assert abs(any_click.mean() - ctr) < 4 * any_click.std() / np.sqrt(any_click.size)
    assert abs(count.mean() - clicks) < 4 * count.std() / np.sqrt(count.size)


def _factor_model(truth: LatentTruth, sign: float, data_spec: str) -> FactorModel:
    """A model that scores with the true factors (sign 1: the oracle) or against them (sign -1)."""
    data = load_dataset(data_spec)
    seen = interaction_matrix(data, holdout_split(data).train)
    return FactorModel(
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        offset=0.0,
        user_bias=np.zeros(data.n_users, np.float32),
        item_bias=(sign * truth.item_bias).astype(np.float32),
        user_factors=truth.user_factors.astype(np.float32),
        item_factors=(sign * truth.item_factors).astype(np.float32),
        seen=seen,
        popularity=np.asarray(seen.sum(axis=0), dtype=np.float32).ravel(),
    )


def test_ground_truth_prefers_the_model_that_ranks_by_true_affinity() -> None:
    spec = "synthetic:users=200,items=300,ratings=6000,seed=1"
    data = load_dataset(spec)
    assert isinstance(data.truth, LatentTruth)
    models = {"anti": _factor_model(data.truth, -1.0, spec), "oracle": _factor_model(data.truth, 1.0, spec)}
    truth = ground_truth_preference(models, data, k=10)
    assert truth.preferred == "oracle"
    assert truth.of("oracle").ctr > truth.of("anti").ctr
    assert truth.of("oracle").clicks_per_exposure > truth.of("oracle").ctr  # several clicks on some exposures
    assert truth.users == 200 and truth.k == 10
    rows = served_rows(models["oracle"], data, 10)
    seen = holdout_split(data).train
    for user in (0, 17, 199):
        rated = set(data.item_index[seen & (data.user_index == user)].tolist())
        assert not rated & set(rows[user].tolist())  # the served list, seen items excluded, as in production


def test_truth_preference_is_none_on_a_tie_and_names_a_clear_winner() -> None:
    tied = TruthPreference((ModelTruth("a", 0.3, 0.4), ModelTruth("b", 0.3, 0.4)), k=10, users=5)
    assert tied.preferred is None
    clear = TruthPreference((ModelTruth("a", 0.3, 0.4), ModelTruth("b", 0.31, 0.4)), k=10, users=5)
    assert clear.preferred == "b"
    assert clear.as_dict()["preferred"] == "b"
    with pytest.raises(KeyError):
        clear.of("c")
