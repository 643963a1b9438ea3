"""The ground-truth click model: what a simulated user clicks, decided by true affinity, never by a model.

A user looks down the list with decreasing attention (position bias) and clicks an item with a
probability that rises with their true affinity for it. Each user also has a fixed propensity to click
at all, so clicks from one user (within a list and across lists) are correlated - as in real traffic,
and exactly why the report never tests per shown item.

    >>> model = ClickModel()
    >>> rng = np.random.default_rng(7)
    >>> propensity = model.draw_propensities(rng, 1)[0]
    >>> clicked = model.sample_clicks(rng, np.array([2.0, 0.1, -1.0]), propensity)
    >>> clicked.shape
    (3,)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit


@dataclass(frozen=True)
class ClickModel:
    """A position-based model: P(click at p) = examination(p) * sigmoid(base + propensity + affinity_weight * affinity).

    examination(p) = 1 / log2(p + 2) for the 0-based position p, the DCG discount: the first item is always
    looked at, then 0.63, 0.50, 0.43, 0.39, 0.36, 0.33, 0.32, 0.30, 0.29 down a list of ten. Whether an item is
    looked at depends only on where it is, whether it is clicked once seen only on the user and the item, so
    a better item placed lower loses clicks - the bias interleaving's coin flips average out.
    propensity ~ Normal(0, user_spread), fixed per user.
    """

    base: float = -4.0
    affinity_weight: float = 1.0
    user_spread: float = 1.0

    def draw_propensities(self, rng: np.random.Generator, n_users: int) -> NDArray[np.float64]:
        """One click propensity per user; draw once per simulated user and keep it."""
        return rng.normal(0.0, self.user_spread, n_users)

    @staticmethod
    def examination(positions: int) -> NDArray[np.float64]:
        """Probability that each of the first `positions` positions is looked at.

        >>> ClickModel.examination(3).round(2).tolist()
        [1.0, 0.63, 0.5]
        """
        return np.asarray(1.0 / np.log2(np.arange(positions, dtype=np.float64) + 2.0), dtype=np.float64)

    def click_probabilities(self, affinities: NDArray[np.floating], propensity: float) -> NDArray[np.float64]:
        """Probability of a click on each shown item, best-ranked first."""
        attraction = expit(self.base + propensity + self.affinity_weight * np.asarray(affinities, np.float64))
        return np.asarray(self.examination(len(affinities)) * attraction, dtype=np.float64)

    def click_probability_rows(
        self, affinities: NDArray[np.floating], propensities: NDArray[np.floating]
    ) -> NDArray[np.float64]:
        """`click_probabilities` for many lists at once: one list per row of `affinities`, one propensity per row.

        Affinity -inf (an item the truth does not know) gives probability 0, as in the simulator.
        """
        scores = np.asarray(affinities, np.float64)
        attraction = expit(self.base + np.asarray(propensities, np.float64)[:, None] + self.affinity_weight * scores)
        return np.asarray(self.examination(scores.shape[-1])[None, :] * attraction, dtype=np.float64)

    def sample_clicks(
        self, rng: np.random.Generator, affinities: NDArray[np.floating], propensity: float
    ) -> NDArray[np.bool_]:
        """Which of the shown items the user clicks (independent given the user's propensity)."""
        probabilities = self.click_probabilities(affinities, propensity)
        return rng.random(len(probabilities)) < probabilities
