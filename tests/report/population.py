"""Simulated users for the statistical validations: per-user sums only, many experiments at once.

Each user has a fixed click propensity p ~ Beta(a, b) and ``d`` exposures; each exposure is clicked with
probability p, so one user's clicks go together (intra-user correlation 1 / (a + b + 1)). The exposure
count is independent of p, so the true CTR of the population is exactly the Beta mean a / (a + b), and
one user's variance of the linearised ratio has a closed form (``unit_variance``).

    users = Population().draw(np.random.default_rng(1), (300, 1000))   # 300 experiments x 1000 users
    users.clicks.shape                                                  # (300, 1000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Exposures = Literal["poisson", "heavy"]


@dataclass(frozen=True)
class Users:
    propensity: NDArray[np.float64]
    exposures: NDArray[np.float64]
    clicks: NDArray[np.float64]


@dataclass(frozen=True)
class Population:
    """Beta(a, b) click propensities (mean 0.10, intra-user correlation 1/6 by default) and exposure counts.

    ``poisson``: 1 + Poisson(mean_exposures - 1). ``heavy``: 1 + floor(LogNormal(1, 1.5)), median 4, mean ~8.9,
    a few users with hundreds of exposures.
    """

    a: float = 0.5
    b: float = 4.5
    exposures: Exposures = "poisson"
    mean_exposures: float = 4.0

    @property
    def ctr(self) -> float:
        return self.a / (self.a + self.b)

    def with_ctr(self, ctr: float) -> Population:
        """The same spread of propensities (a + b kept) around another mean."""
        total = self.a + self.b
        return Population(ctr * total, (1 - ctr) * total, self.exposures, self.mean_exposures)

    def draw_exposures(self, rng: np.random.Generator, shape: tuple[int, ...]) -> NDArray[np.float64]:
        if self.exposures == "heavy":
            return np.asarray(1.0 + np.floor(rng.lognormal(1.0, 1.5, shape)), dtype=np.float64)
        return np.asarray(1.0 + rng.poisson(self.mean_exposures - 1.0, shape), dtype=np.float64)

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> Users:
        propensity = rng.beta(self.a, self.b, shape)
        exposures = self.draw_exposures(rng, shape)
        clicks = rng.binomial(exposures.astype(np.int64), propensity).astype(np.float64)
        return Users(propensity, exposures, clicks)

    def unit_variance(self) -> float:
        """Var of one user's (clicks - ctr * exposures) / E[exposures], valid for ``poisson`` exposures.

        E[(m - R d)^2] = E[d] E[p (1 - p)] + E[d^2] Var(p), since d is independent of p and m | d, p is binomial.
        """
        if self.exposures != "poisson":
            raise ValueError("the closed form is for poisson exposures")
        mean_d = self.mean_exposures
        mean_d2 = (self.mean_exposures - 1.0) + mean_d**2
        total = self.a + self.b
        var_p = self.a * self.b / (total**2 * (total + 1))
        mean_p_1mp = self.ctr - (var_p + self.ctr**2)
        return (mean_d * mean_p_1mp + mean_d2 * var_p) / mean_d**2
