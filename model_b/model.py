"""model_b: Surprise's SVD (Funk matrix factorisation with biases), trained for ranking.

Plain rating-prediction SVD ranks obscure items with a few five-star ratings first: it is never
told that people mostly do not rate (or watch) most items. Following Steck (KDD 2010, "Training and
testing of recommender systems on data missing not at random"), we add a sample of each user's
unrated items as rating 0 (five per real rating), so the model learns both taste and what users pick.
Its scores are on the star scale, but pulled down by the zeros: RMSE is reported, and is not its goal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import surprise
from scipy import sparse

from recsys.data import Dataset, Split, interaction_matrix
from recsys.recommender import FactorModel

NAME = "model_b"
ALGORITHM = "SVD with sampled missing-as-zero ratings (surprise.SVD)"
LIBRARY = f"scikit-surprise {surprise.__version__}"
PREDICTS_RATINGS = True
PARAMS: dict[str, Any] = {"n_factors": 20, "n_epochs": 30, "reg_all": 0.05, "lr_all": 0.005}
NEGATIVES_PER_RATING = 5


def train(data: Dataset, split: Split, *, seed: int) -> FactorModel:
    """Fit Surprise's SVD on the training ratings plus sampled zeros and export it as a FactorModel."""
    seen = interaction_matrix(data, split.train)
    frame = pd.concat([_observed(data, split), _sampled_missing(seen, np.random.default_rng(seed))])
    trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(0, 5))).build_full_trainset()
    algo = surprise.SVD(random_state=seed, **PARAMS)
    algo.fit(trainset)

    n_factors = PARAMS["n_factors"]
    user_factors = np.zeros((data.n_users, n_factors), np.float32)
    user_bias = np.zeros(data.n_users, np.float32)
    item_factors = np.zeros((data.n_items, n_factors), np.float32)
    never_trained = float(np.min(algo.bi)) - 1.0  # items absent from training rank last, not at 0
    item_bias = np.full(data.n_items, never_trained, np.float32)
    users = np.array([trainset.to_raw_uid(inner) for inner in trainset.all_users()], dtype=np.int64)
    items = np.array([trainset.to_raw_iid(inner) for inner in trainset.all_items()], dtype=np.int64)
    user_factors[users], user_bias[users] = algo.pu, algo.bu
    item_factors[items], item_bias[items] = algo.qi, algo.bi
    return FactorModel(
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        offset=float(trainset.global_mean),
        user_bias=user_bias,
        item_bias=item_bias,
        user_factors=user_factors,
        item_factors=item_factors,
        seen=seen,
        popularity=np.asarray(seen.sum(axis=0), dtype=np.float32).ravel(),
    )


def _observed(data: Dataset, split: Split) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": data.user_index[split.train].astype(np.int64),
            "item": data.item_index[split.train].astype(np.int64),
            "rating": data.rating[split.train].astype(np.float64),
        }
    )


def _sampled_missing(seen: sparse.csr_matrix, rng: np.random.Generator) -> pd.DataFrame:
    """About NEGATIVES_PER_RATING unrated items per rating for each user, drawn uniformly, as rating 0."""
    n_users, n_items = seen.shape
    rated_per_user = np.diff(seen.indptr)
    wanted = np.minimum(rated_per_user * NEGATIVES_PER_RATING, n_items - rated_per_user)
    # draw twice what is wanted (with replacement), drop rated items and repeats, keep the first `wanted`
    owners = np.repeat(np.arange(n_users), 2 * wanted)
    items = rng.integers(0, n_items, len(owners))
    first_draw = np.zeros(len(owners), dtype=bool)
    first_draw[np.unique(owners.astype(np.int64) * n_items + items, return_index=True)[1]] = True
    unrated = np.asarray(seen[owners, items]).ravel() == 0
    owners, items = owners[first_draw & unrated], items[first_draw & unrated]
    rank_within_user = pd.Series(owners).groupby(owners).cumcount().to_numpy()
    keep = rank_within_user < wanted[owners]
    return pd.DataFrame({"user": owners[keep], "item": items[keep], "rating": 0.0})
