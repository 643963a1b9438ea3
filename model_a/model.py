"""model_a: PureSVD with scikit-learn - a truncated SVD of the user x item rating matrix.

Unrated cells are zeros, so the low-rank reconstruction scores an item high when users like this one
rated it (and rated it well): it learns both taste and what people tend to rate. Cremonesi et al.
(RecSys 2010) showed this simple model is strong at top-N ranking. Its scores are not star ratings,
so it has no RMSE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn
from sklearn.decomposition import TruncatedSVD

from recsys.data import Dataset, Split, interaction_matrix
from recsys.recommender import FactorModel

NAME = "model_a"
ALGORITHM = "PureSVD (sklearn.decomposition.TruncatedSVD)"
LIBRARY = f"scikit-learn {sklearn.__version__}"
PREDICTS_RATINGS = False
PARAMS: dict[str, Any] = {"n_components": 20, "algorithm": "randomized", "n_iter": 7}


def train(data: Dataset, split: Split, *, seed: int) -> FactorModel:
    """Fit the SVD on the training ratings and export it as a FactorModel."""
    ratings = interaction_matrix(data, split.train, values="stars")
    svd = TruncatedSVD(random_state=seed, **PARAMS)
    user_factors = svd.fit_transform(ratings)  # U * Sigma
    seen = interaction_matrix(data, split.train)
    return FactorModel(
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        offset=0.0,
        user_bias=np.zeros(data.n_users, np.float32),
        item_bias=np.zeros(data.n_items, np.float32),
        user_factors=user_factors.astype(np.float32),
        item_factors=svd.components_.T.astype(np.float32),
        seen=seen,
        popularity=np.asarray(seen.sum(axis=0), dtype=np.float32).ravel(),
    )
