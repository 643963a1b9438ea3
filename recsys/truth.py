"""Which model the ground truth prefers: each model's expected CTR when the click model judges its lists.

The expectation is exact for the simulated population, not a simulation: for every user, the list the model
serves (`FactorModel.recommend`, so seen items and cold start are as in production), the true affinities of
its items, and P(at least one click) = 1 - prod(1 - P(click at p)) averaged over the user's click
propensity with Gauss-Hermite quadrature. Users are weighted equally: the simulator's visit rates are drawn
independently of taste, so that is the expected CTR per exposure as the report measures it.

    models = {name: FactorModel.load(Path("models") / name) for name in ("model_a", "model_b")}
    truth = ground_truth_preference(models, load_dataset())
    truth.preferred, truth.of("model_b").ctr
    ('model_b', 0.4176...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recsys.clicks import ClickModel
from recsys.data import Dataset
from recsys.recommender import FactorModel

QUADRATURE_NODES = 40  # Gauss-Hermite nodes over the propensity: exact to ~1e-12 for these smooth integrands
DEFAULT_K = 10


@dataclass(frozen=True)
class ModelTruth:
    """One model under the ground truth: expected CTR (P(>= 1 click) per exposure) and clicks per exposure."""

    name: str
    ctr: float
    clicks_per_exposure: float


@dataclass(frozen=True)
class TruthPreference:
    """Every model's expected outcome on the same population; `preferred` has the highest expected CTR."""

    models: tuple[ModelTruth, ...]
    k: int
    users: int

    @property
    def preferred(self) -> str | None:
        """The model with the highest expected CTR; None if the best two are equal (to 1e-12)."""
        ranked = sorted(self.models, key=lambda m: m.ctr, reverse=True)
        if not ranked or (len(ranked) > 1 and ranked[0].ctr - ranked[1].ctr <= 1e-12):
            return None
        return ranked[0].name

    def of(self, name: str) -> ModelTruth:
        """The entry for model `name` (KeyError if it was not evaluated)."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def as_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "users": self.users,
            "preferred": self.preferred,
            "models": {m.name: {"ctr": m.ctr, "clicks_per_exposure": m.clicks_per_exposure} for m in self.models},
        }


def served_rows(model: FactorModel, data: Dataset, k: int = DEFAULT_K) -> NDArray[np.intp]:
    """The data set's item rows of the list `model` serves each user (users x k; -1 pads a short list or an
    item the data set does not know)."""
    row_of = {int(item): row for row, item in enumerate(data.item_ids)}
    rows = np.full((data.n_users, k), -1, dtype=np.intp)
    for user, user_id in enumerate(data.user_ids):
        items = model.recommend(str(user_id), k).items
        rows[user, : len(items)] = [row_of.get(int(item), -1) for item in items]
    return rows


def true_affinities(data: Dataset, rows: NDArray[np.intp]) -> NDArray[np.float64]:
    """Each user's true affinity for the items at `rows` (users x k); -inf where the row is -1 (never clicked)."""
    if data.truth is None:
        raise ValueError(f"data set {data.name} has no ground truth")
    affinities = np.full(rows.shape, -np.inf)
    for user in range(rows.shape[0]):
        known = rows[user] >= 0
        affinities[user, known] = data.truth.affinity(user, rows[user, known])
    return affinities


def expected_outcomes(affinities: NDArray[np.float64], click_model: ClickModel) -> tuple[float, float]:
    """Expected (CTR, clicks per exposure) of lists with these true affinities (one list per row), averaged over
    the rows and over the click propensity's normal distribution."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    weights = weights / weights.sum()
    propensities = nodes * click_model.user_spread
    users, k = affinities.shape
    stacked = np.repeat(affinities, len(nodes), axis=0)  # row u * nodes + j: user u at propensity node j
    p = click_model.click_probability_rows(stacked, np.tile(propensities, users)).reshape(users, len(nodes), k)
    ctr = (1.0 - np.prod(1.0 - p, axis=2)) @ weights
    clicks = p.sum(axis=2) @ weights
    return float(ctr.mean()), float(clicks.mean())


def ground_truth_preference(
    models: Mapping[str, FactorModel],
    data: Dataset,
    *,
    k: int = DEFAULT_K,
    click_model: ClickModel | None = None,
) -> TruthPreference:
    """Every model's expected CTR on all of `data`'s users under its ground truth (see the module docstring)."""
    click_model = click_model or ClickModel()
    entries = []
    for name, model in models.items():
        ctr, clicks = expected_outcomes(true_affinities(data, served_rows(model, data, k)), click_model)
        entries.append(ModelTruth(name, ctr, clicks))
    return TruthPreference(tuple(entries), k, data.n_users)


class ListAffinity:
    """The mean true affinity of a served list for its user: how good the list is by the ground truth.

    For the report's shadow section in simulation (`abtest report --truth`): the same truth the simulator's
    clicks follow, applied to the live and the shadow list of one request.

        affinity = ListAffinity(load_dataset("synthetic"))
        affinity("42", [50, 172, 3])     # mean over the items the data set knows; None for an unknown user
    """

    def __init__(self, data: Dataset) -> None:
        if data.truth is None:
            raise ValueError(f"data set {data.name} has no ground truth")
        self.data = data
        self.description = f"{data.spec} ({data.n_users:,} users, {data.n_items:,} items)"
        self._truth = data.truth
        self._user = {str(user_id): index for index, user_id in enumerate(data.user_ids)}
        self._item = {int(item_id): index for index, item_id in enumerate(data.item_ids)}

    def __call__(self, user_id: str, items: Sequence[int]) -> float | None:
        """The mean affinity of `user_id` for the known items of `items`; None if the user or every item is unknown."""
        user = self._user.get(user_id)
        rows = [row for row in (self._item.get(int(item)) for item in items) if row is not None]
        if user is None or not rows:
            return None
        return float(np.mean(self._truth.affinity(user, np.asarray(rows, dtype=np.intp))))
