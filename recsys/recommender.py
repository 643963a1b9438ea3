"""The servable form both models export: a factor model with vectorised top-k, saved without pickle.

    score(u, i) = offset + user_bias[u] + item_bias[i] + user_factors[u] . item_factors[i]

Training uses the real libraries (scikit-learn, Surprise); serving is numpy, because Surprise's
per-pair `predict` over every item would be a Python loop per request. Items a user already rated are
never recommended; an unknown user gets the most popular items (`cold_start`).

    model = FactorModel.load(Path("models/model_a"))
    model.recommend("42", k=3)
    Recommendation(items=[50, 181, 100], scores=[...], cold_start=False)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

ARRAY_NAMES = (
    "user_ids",
    "item_ids",
    "user_bias",
    "item_bias",
    "user_factors",
    "item_factors",
    "seen_indptr",
    "seen_indices",
    "popularity",
)


class ArtefactError(RuntimeError):
    """An artefact that is missing, incomplete or unreadable; the message names the file."""


@dataclass(frozen=True)
class Recommendation:
    """A ranked list for one user, best first."""

    items: list[int]
    scores: list[float]
    cold_start: bool


@dataclass
class FactorModel:
    """A trained recommender in servable form plus its metadata (what `/info` shows)."""

    user_ids: NDArray[np.str_]
    item_ids: NDArray[np.int64]
    offset: float
    user_bias: NDArray[np.float32]
    item_bias: NDArray[np.float32]
    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]
    seen: sparse.csr_matrix  # users x items, the training ratings: never recommended again
    popularity: NDArray[np.float32]  # training ratings per item: the cold-start ranking
    metadata: dict[str, Any] = field(default_factory=dict)
    _user_lookup: dict[str, int] = field(init=False, repr=False)
    _popular_order: NDArray[np.intp] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._user_lookup = {str(user): index for index, user in enumerate(self.user_ids)}
        self._popular_order = np.argsort(-self.popularity, kind="stable")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, user_id: str) -> int | None:
        """The model's row for a user id, or None for a user it has never seen."""
        return self._user_lookup.get(user_id)

    def scores_for(self, user: int) -> NDArray[np.float32]:
        """Predicted score of every item for one known user (index, not id)."""
        scores = self.item_factors @ self.user_factors[user] + self.item_bias + (self.offset + self.user_bias[user])
        return np.asarray(scores, dtype=np.float32)

    def score_matrix(self, users: NDArray[np.intp]) -> NDArray[np.float32]:
        """Scores for many users at once (offline evaluation)."""
        return np.asarray(
            self.user_factors[users] @ self.item_factors.T
            + self.item_bias[None, :]
            + (self.offset + self.user_bias[users])[:, None],
            dtype=np.float32,
        )

    def recommend(self, user_id: str, k: int) -> Recommendation:
        """Top-k unseen items for `user_id`; the most popular items if the user is unknown."""
        user = self.user_index(user_id)
        if user is None:
            top = self._popular_order[:k]
            return Recommendation(self.item_ids[top].tolist(), _rounded(self.popularity[top]), cold_start=True)
        scores = self.scores_for(user)
        seen = self.seen.indices[self.seen.indptr[user] : self.seen.indptr[user + 1]]
        scores[seen] = -np.inf
        top = top_k(scores, min(k, self.n_items - len(seen)))
        return Recommendation(self.item_ids[top].tolist(), _rounded(scores[top]), cold_start=False)

    def save(self, stem: Path) -> None:
        """Write `stem.npz` (arrays, no pickle) and `stem.json` (metadata, with a content version)."""
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "user_ids": self.user_ids.astype(np.str_),
            "item_ids": self.item_ids,
            "user_bias": self.user_bias,
            "item_bias": self.item_bias,
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "seen_indptr": self.seen.indptr,
            "seen_indices": self.seen.indices,
            "popularity": self.popularity,
            "offset": np.array([self.offset]),
        }
        npz = stem.with_suffix(".npz")
        partial = npz.with_suffix(".npz.partial")
        with partial.open("wb") as handle:
            np.savez(handle, **arrays)
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()[:12]
        self.metadata["version"] = f"{self.metadata.get('model', stem.name)}-{digest}"
        meta = stem.with_suffix(".json")
        meta_partial = meta.with_suffix(".json.partial")
        meta_partial.write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(npz)  # rename last, so a reader never sees half an artefact
        meta_partial.replace(meta)

    @classmethod
    def load(cls, stem: Path) -> FactorModel:
        """Read an artefact written by `save`; ArtefactError names what is wrong."""
        npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
        try:
            metadata = json.loads(meta.read_text(encoding="utf-8"))
            with np.load(npz, allow_pickle=False) as arrays:
                missing = [name for name in (*ARRAY_NAMES, "offset") if name not in arrays]
                if missing:
                    raise ArtefactError(f"{npz} lacks arrays {missing}: retrain with `abtest train`")
                loaded = {name: arrays[name] for name in (*ARRAY_NAMES, "offset")}
        except (OSError, ValueError) as exc:
            raise ArtefactError(f"cannot read artefact {stem}: {exc}") from exc
        n_users, n_items = len(loaded["user_ids"]), len(loaded["item_ids"])
        seen = sparse.csr_matrix(
            (np.ones(len(loaded["seen_indices"]), np.float32), loaded["seen_indices"], loaded["seen_indptr"]),
            shape=(n_users, n_items),
        )
        return cls(
            user_ids=loaded["user_ids"],
            item_ids=loaded["item_ids"],
            offset=float(loaded["offset"][0]),
            user_bias=loaded["user_bias"],
            item_bias=loaded["item_bias"],
            user_factors=loaded["user_factors"],
            item_factors=loaded["item_factors"],
            seen=seen,
            popularity=loaded["popularity"],
            metadata=metadata,
        )


def _rounded(scores: NDArray[np.floating[Any]]) -> list[float]:
    """Scores as JSON-friendly floats: float32 noise beyond 5 decimals means nothing."""
    return [round(score, 5) for score in scores.astype(np.float64).tolist()]


def top_k(scores: NDArray[np.floating[Any]], k: int) -> NDArray[np.intp]:
    """Indices of the k largest scores, best first: O(n) argpartition, then a sort of only k values.

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.7]), 2).tolist()
    [1, 3]
    """
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    candidates = np.argpartition(-scores, k - 1)[:k]
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def top_k_rows(scores: NDArray[np.floating[Any]], k: int) -> NDArray[np.intp]:
    """Row-wise top-k of a score matrix, best first (offline evaluation over all users)."""
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)
