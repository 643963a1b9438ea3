"""Both models learn: on the holdout they beat a random list by far and the popularity baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recsys.data import holdout_split, load_dataset
from recsys.evaluation import evaluate, popularity_scorer, random_scorer
from recsys.recommender import ArtefactError, FactorModel, top_k
from recsys.training import MODEL_NAMES, trainer


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_beats_random_by_far_and_popularity_on_precision_at_10(name: str) -> None:
    data = load_dataset("synthetic")
    split = holdout_split(data)
    model_trainer = trainer(name)
    model = model_trainer.train(data, split, seed=42)
    learned = evaluate(model.score_matrix, data, split, predicts_ratings=model_trainer.PREDICTS_RATINGS)
    popular = evaluate(popularity_scorer(data, split), data, split)
    rand = evaluate(random_scorer(data), data, split)
    print(
        f"\n{name}: precision@10 {learned.precision_at_10:.4f} vs popularity {popular.precision_at_10:.4f}"
        f" vs random {rand.precision_at_10:.4f}; recall@10 {learned.recall_at_10:.4f}, coverage {learned.coverage:.3f}"
    )
    assert learned.precision_at_10 > 10 * rand.precision_at_10
    assert learned.precision_at_10 > popular.precision_at_10
    assert learned.coverage > popular.coverage  # it personalises: more of the catalogue reaches someone


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_recommends_what_users_truly_like_more_than_popularity_does(name: str) -> None:
    data = load_dataset("synthetic")
    split = holdout_split(data)
    model = trainer(name).train(data, split, seed=42)
    assert data.truth is not None
    users = np.arange(0, data.n_users, 10)
    learned = [data.truth.affinity(int(u), _item_rows(model, int(u))).mean() for u in users]
    counts = np.bincount(data.item_index[split.train], minlength=data.n_items).astype(float)
    popular = []
    for u in users:
        scores = counts.copy()
        scores[model.seen.indices[model.seen.indptr[u] : model.seen.indptr[u + 1]]] = -np.inf
        popular.append(data.truth.affinity(int(u), top_k(scores, 10)).mean())
    assert np.mean(learned) > np.mean(popular) + 0.5


def _item_rows(model: FactorModel, user: int) -> np.ndarray:
    items = model.recommend(str(model.user_ids[user]), 10).items
    return np.searchsorted(model.item_ids, items)


def test_recommendations_never_include_items_the_user_rated(models_dir: Path) -> None:
    for name in MODEL_NAMES:
        model = FactorModel.load(models_dir / name)
        for user in range(0, len(model.user_ids), 50):
            rated = set(model.item_ids[model.seen.indices[model.seen.indptr[user] : model.seen.indptr[user + 1]]])
            items = model.recommend(str(model.user_ids[user]), 100).items
            assert len(items) == 100 and len(set(items)) == 100
            assert rated.isdisjoint(items)


def test_unknown_user_gets_the_most_popular_items_as_cold_start(models_dir: Path) -> None:
    model = FactorModel.load(models_dir / "model_a")
    result = model.recommend("never-seen", 5)
    assert result.cold_start
    assert result.items == model.item_ids[np.argsort(-model.popularity, kind="stable")[:5]].tolist()
    assert result.scores == sorted(result.scores, reverse=True)


def test_artefact_round_trip_serves_the_same_lists_and_records_metadata(models_dir: Path, tmp_path: Path) -> None:
    model = FactorModel.load(models_dir / "model_b")
    model.save(tmp_path / "copy")
    again = FactorModel.load(tmp_path / "copy")
    assert again.recommend("42", 10) == model.recommend("42", 10)
    meta = again.metadata
    assert meta["model"] == "model_b" and meta["version"].startswith("model_b-")
    assert meta["dataset"]["spec"].startswith("synthetic:seed=42")
    assert {"precision_at_10", "recall_at_10", "hit_rate_at_10", "coverage", "rmse"} <= set(meta["metrics"])
    assert meta["training_seconds"] > 0 and meta["trained_at"]


def test_incomplete_artefact_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{}", encoding="utf-8")
    np.savez(tmp_path / "broken.npz", user_ids=np.array(["1"]))
    with pytest.raises(ArtefactError, match="lacks arrays"):
        FactorModel.load(tmp_path / "broken")
    with pytest.raises(ArtefactError, match="missing"):
        FactorModel.load(tmp_path / "missing")


@given(
    scores=arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    k=st.integers(1, 320),
)
def test_top_k_equals_a_full_sort(scores: np.ndarray, k: int) -> None:
    picked = top_k(scores, k)
    assert len(picked) == min(k, len(scores))
    expected = np.sort(scores)[::-1][: len(picked)]
    np.testing.assert_array_equal(scores[picked], expected)
