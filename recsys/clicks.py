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
    """P(click at position p) = examination(p) * sigmoid(base + propensity + affinity_weight * affinity).

    examination(p) = 1 / log2(p + 2), the DCG discount: the first item is always looked at.
    propensity ~ Normal(0, user_spread), fixed per user.
    """

    base: float = -4.0
    affinity_weight: float = 1.0
    user_spread: float = 1.0

    def draw_propensities(self, rng: np.random.Generator, n_users: int) -> NDArray[np.float64]:
        """One click propensity per user; draw once per simulated user and keep it."""
        return rng.normal(0.0, self.user_spread, n_users)

    def click_probabilities(self, affinities: NDArray[np.floating], propensity: float) -> NDArray[np.float64]:
        """Probability of a click on each shown item, best-ranked first."""
        positions = np.arange(len(affinities), dtype=np.float64)
        examination = 1.0 / np.log2(positions + 2.0)
        attraction = expit(self.base + propensity + self.affinity_weight * np.asarray(affinities, np.float64))
        return np.asarray(examination * attraction, dtype=np.float64)

    def sample_clicks(
        self, rng: np.random.Generator, affinities: NDArray[np.floating], propensity: float
    ) -> NDArray[np.bool_]:
        """Which of the shown items the user clicks (independent given the user's propensity)."""
        probabilities = self.click_probabilities(affinities, propensity)
        return rng.random(len(probabilities)) < probabilities
