"""Intention to treat: a variant that fails for some kind of users must not win by losing them.

An A/A experiment in which the treatment fails for low-propensity users (cold-start users who rarely
click), and each failed request is served by the control instead (a fallback). Analysed per protocol (by
the variant that served, the treatment's failed requests dropped, as the report did before issue 12) the
treatment keeps only its easy users' exposures and "wins". Analysed by the *assigned* variant, every
randomised exposure counted, it is the A/A it is.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

from router.report.comparison import Analysis, DifferenceBatch, difference_batch
from router.report.ratio import moments
from tests.report.population import Population

EXPERIMENTS = 500
USERS = 1000
FAILURE = 0.6
"""Share of a low-propensity user's treatment requests that fail over to the control."""


def binomial_interval(n: int, p: float, confidence: float = 0.99) -> tuple[float, float]:
    low, high = scipy_stats.binom.interval(confidence, n, p)
    return low / n, high / n


def test_failures_served_by_the_control_win_per_protocol_but_not_by_intention_to_treat() -> None:
    population = Population()
    rng = np.random.default_rng(20240611)
    shape = (EXPERIMENTS, USERS)
    control = population.draw(rng, shape)
    treatment = population.draw(rng, shape)
    low_propensity = treatment.propensity < scipy_stats.beta.ppf(0.3, population.a, population.b)
    failed = rng.binomial(treatment.exposures.astype(np.int64), FAILURE * low_propensity).astype(np.float64)
    served = treatment.exposures - failed
    # The treatment's clicks split into those on its own lists and those on the control's lists shown
    # in their place; in an A/A both come from the same user with the same propensity.
    own_clicks = rng.binomial(served.astype(np.int64), treatment.propensity).astype(np.float64)
    fallback_clicks = rng.binomial(failed.astype(np.int64), treatment.propensity).astype(np.float64)

    fixed = Analysis(sequential=False)
    arm = moments(control.clicks, control.exposures)
    per_protocol = difference_batch(arm, moments(own_clicks, served), fixed)
    itt = difference_batch(arm, moments(own_clicks + fallback_clicks, treatment.exposures), fixed)
    # The stricter reading: a failure is the treatment's, so its exposure counts as unclicked.
    itt_unclicked = difference_batch(arm, moments(own_clicks, treatment.exposures), fixed)

    def wins(batch: DifferenceBatch) -> float:
        return float(np.mean(batch.significant & (batch.difference > 0)))

    low, high = binomial_interval(EXPERIMENTS, 0.05)
    assert wins(per_protocol) > 0.5, f"per-protocol wins in {wins(per_protocol):.3f} of the A/A experiments"
    assert low <= float(np.mean(itt.significant)) <= high
    assert wins(itt_unclicked) <= binomial_interval(EXPERIMENTS, 0.025)[1]
