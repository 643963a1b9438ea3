"""Offline metrics on the holdout: how well a model's top-k lists predict what each user rated next.

Every user with at least one held-out rating counts once. Precision@k = hits / k, recall@k = hits /
held-out items, hit-rate@k = share of users with at least one hit, coverage = share of the catalogue that
appears in anybody's top-k. RMSE is on the held-out star ratings, for models whose scores are ratings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from recsys.data import Dataset, Split, interaction_matrix
from recsys.recommender import top_k_rows

ScoreFunction = Callable[[NDArray[np.intp]], NDArray[np.floating]]


@dataclass(frozen=True)
class OfflineMetrics:
    """The offline figures a model's `/info` reports (k = 10 unless said otherwise)."""

    precision_at_10: float
    recall_at_10: float
    hit_rate_at_10: float
    coverage: float
    rmse: float | None
    users_evaluated: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def evaluate(
    score: ScoreFunction,
    data: Dataset,
    split: Split,
    *,
    k: int = 10,
    predicts_ratings: bool = False,
    block: int = 2048,
) -> OfflineMetrics:
    """Rank all unseen items for each held-out user with `score(users) -> users x items` and compare.

    `score` is any vectorised scorer, so the same code measures the models and the baselines.
    """
    train_seen = interaction_matrix(data, split.train)
    held_out = interaction_matrix(data, split.test)
    users = np.flatnonzero(np.diff(held_out.indptr) > 0)
    hits = np.zeros(len(users))
    recommended = np.zeros(data.n_items, dtype=bool)
    for start in range(0, len(users), block):
        batch = users[start : start + block]
        scores = np.array(score(batch), dtype=np.float64, copy=True)
        _mask_rows(scores, train_seen[batch])
        top = top_k_rows(scores, k)
        recommended[np.unique(top)] = True
        truth = held_out[batch]
        hits[start : start + len(batch)] = np.asarray(truth[np.arange(len(batch))[:, None], top].sum(axis=1)).ravel()
    held_out_counts = np.diff(held_out.indptr)[users]
    rmse = _rmse(score, data, split) if predicts_ratings else None
    return OfflineMetrics(
        precision_at_10=float(np.mean(hits / k)),
        recall_at_10=float(np.mean(hits / held_out_counts)),
        hit_rate_at_10=float(np.mean(hits > 0)),
        coverage=float(recommended.mean()),
        rmse=rmse,
        users_evaluated=len(users),
    )


def _mask_rows(scores: NDArray[np.float64], seen: sparse.csr_matrix) -> None:
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf


def _rmse(score: ScoreFunction, data: Dataset, split: Split, block: int = 2048) -> float:
    users, items = data.user_index[split.test], data.item_index[split.test]
    unique, row = np.unique(users.astype(np.intp), return_inverse=True)
    predicted = np.empty(len(users))
    for start in range(0, len(unique), block):
        in_block = (row >= start) & (row < start + block)
        scores = np.asarray(score(unique[start : start + block]))
        predicted[in_block] = scores[row[in_block] - start, items[in_block]]
    errors = np.clip(predicted, 1, 5) - data.rating[split.test]
    return float(np.sqrt(np.mean(errors**2)))


def popularity_scorer(data: Dataset, split: Split) -> ScoreFunction:
    """The popularity baseline: every user gets the most-rated items they have not rated."""
    counts = np.bincount(data.item_index[split.train], minlength=data.n_items).astype(np.float64)
    return lambda users: np.tile(counts, (len(users), 1))


def random_scorer(data: Dataset, seed: int = 0) -> ScoreFunction:
    """The random baseline: a fresh random ranking per user (seeded)."""
    rng = np.random.default_rng(seed)
    return lambda users: rng.random((len(users), data.n_items))
