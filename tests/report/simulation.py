"""Many simulated experiments at once, vectorised, with the ground-truth click model (no servers).

Each user has a fixed click propensity (``ClickModel.draw_propensities``) and makes a random number of
requests; each request shows a list of ``k`` items with random true affinities, best first. So clicks of
one user, within a list and across lists, are correlated, as the simulator produces them.

    batch = simulate(np.random.default_rng(1), experiments=100, users_per_arm=200, lift=0.0)
    batch.experiment_rows(0)      # the exposure rows of the first experiment
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from recsys.clicks import ClickModel

ITEMS_PER_LIST = 10
MEAN_REQUESTS = 4.0


@dataclass(frozen=True)
class Batch:
    """Exposure rows of many experiments, sorted by experiment; arm 0 is the control, 1 the treatment."""

    experiment: NDArray[np.int64]
    user: NDArray[np.int64]
    arm: NDArray[np.int64]
    item_clicks: NDArray[np.bool_]
    """One row per exposure, one column per shown item."""
    clicked: NDArray[np.int64]
    """Per exposure: 1 if at least one shown item was clicked (what the report's ``clicked`` means)."""
    bounds: NDArray[np.int64]
    """Rows of experiment e are bounds[e]:bounds[e + 1]."""

    def experiment_rows(self, e: int) -> slice:
        return slice(int(self.bounds[e]), int(self.bounds[e + 1]))


def click_probabilities(
    model: ClickModel, affinities: NDArray[np.float64], propensities: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``ClickModel.click_probabilities`` for many lists at once: rows are lists, one propensity per row.

    Same formula (DCG examination times a sigmoid of base + propensity + weight * affinity); a test checks
    it against the model's own per-list method.
    """
    positions = np.arange(affinities.shape[1], dtype=np.float64)
    examination = 1.0 / np.log2(positions + 2.0)
    attraction = expit(model.base + propensities[:, None] + model.affinity_weight * affinities)
    return np.asarray(examination[None, :] * attraction, dtype=np.float64)


def simulate(
    rng: np.random.Generator,
    *,
    experiments: int,
    users_per_arm: int,
    lift: float = 0.0,
    assignment: str = "hash",
    model: ClickModel | None = None,
) -> Batch:
    """Simulate ``experiments`` independent experiments of ``2 * users_per_arm`` users each.

    ``hash``: each user belongs to one arm (half the users each). ``random``: each request is assigned on
    its own with probability 1/2. The treatment adds ``lift`` to every shown item's true affinity.
    """
    model = model or ClickModel()
    users = experiments * 2 * users_per_arm
    propensity = model.draw_propensities(rng, users)
    requests = 1 + rng.poisson(MEAN_REQUESTS - 1.0, users)
    user = np.repeat(np.arange(users, dtype=np.int64), requests)
    experiment = user // (2 * users_per_arm)
    if assignment == "hash":
        arm = (user % (2 * users_per_arm) >= users_per_arm).astype(np.int64)
    else:
        arm = (rng.random(user.size) < 0.5).astype(np.int64)
    affinities = -np.sort(-rng.normal(0.0, 1.0, (user.size, ITEMS_PER_LIST)), axis=1) + lift * arm[:, None]
    probabilities = click_probabilities(model, affinities, propensity[user])
    item_clicks = rng.random(probabilities.shape) < probabilities
    bounds = np.searchsorted(experiment, np.arange(experiments + 1))
    clicked = np.asarray(item_clicks.any(axis=1), dtype=np.int64)
    return Batch(experiment, user, arm, item_clicks, clicked, bounds.astype(np.int64))
