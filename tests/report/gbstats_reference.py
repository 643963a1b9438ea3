"""Reference values from GrowthBook's gbstats 0.8.0 for tests/report/test_sequential.py (documentation only).

gbstats 0.8.0 pins numpy<2 and pandas<2, so it cannot share the project's environment. The golden values in
test_sequential.py were produced, once, with:

    python3 -m venv /tmp/gbstats-venv
    /tmp/gbstats-venv/bin/pip install gbstats==0.8.0
    /tmp/gbstats-venv/bin/python tests/report/gbstats_reference.py

The inputs are built from integer arithmetic only (no random numbers), so both environments build the very
same arrays: ``cases()`` is imported by the test too. Each arm goes to gbstats as a ``RatioStatistic`` of two
``SampleMeanStatistic`` (numerator, denominator) sums, which is the delta method with n - 1 in the variance;
with equal denominators in an arm that is exactly the CR2 variance the project uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Case:
    name: str
    control: tuple[NDArray[np.float64], NDArray[np.float64]]
    treatment: tuple[NDArray[np.float64], NDArray[np.float64]]
    alpha: float
    tuning: float


def arm(
    units: int, exposures: int | None, permille: int, offset: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per unit: ``exposures`` each (or 1 + (5 i + offset) mod 7 when None) and a click count.

    Exposure j of unit i is clicked when a multiplicative hash of (i, j, offset) mod 1000 falls below the
    unit's rate: ``permille`` times (i mod 4 + 1) / 2.5, so units differ and the mean rate is ``permille``.
    """
    i = np.arange(units, dtype=np.int64)
    denominator = np.full(units, exposures) if exposures is not None else 1 + (i * 5 + offset) % 7
    j = np.arange(int(denominator.max()), dtype=np.int64)
    hashed = (i[:, None] * 2654435761 + j[None, :] * 40503 + offset * 7919) % 2**32 % 1000
    rate = permille * (i % 4 + 1) / 2.5
    hits = (hashed < rate[:, None]) & (j[None, :] < denominator[:, None])
    return hits.sum(axis=1).astype(np.float64), denominator.astype(np.float64)


def cases() -> list[Case]:
    return [
        Case("ctr 4 exposures per user", arm(400, 4, 100, 0), arm(400, 4, 150, 1), 0.05, 5000),
        Case("ctr unequal exposures", arm(900, None, 100, 0), arm(1100, None, 120, 2), 0.05, 5000),
        Case("per request, tuning 1000, alpha 0.1", arm(3000, 1, 80, 3), arm(2500, 1, 110, 4), 0.10, 1000),
        Case("large effect, small arms", arm(60, 5, 50, 5), arm(50, 5, 400, 6), 0.05, 5000),
    ]


def main() -> None:
    from gbstats.frequentist.tests import (  # type: ignore[import-not-found]
        FrequentistConfig,
        SequentialConfig,
        SequentialTwoSidedTTest,
        TwoSidedTTest,
    )
    from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic  # type: ignore[import-not-found]

    def statistic(numerator: NDArray[np.float64], denominator: NDArray[np.float64]) -> RatioStatistic:
        n = int(numerator.size)
        return RatioStatistic(
            n=n,
            m_statistic=SampleMeanStatistic(n=n, sum=float(numerator.sum()), sum_squares=float(np.sum(numerator**2))),
            d_statistic=SampleMeanStatistic(
                n=n, sum=float(denominator.sum()), sum_squares=float(np.sum(denominator**2))
            ),
            m_d_sum_of_products=float(np.sum(numerator * denominator)),
        )

    for case in cases():
        a, b = statistic(*case.control), statistic(*case.treatment)
        for kind in ("absolute", "relative"):
            sequential = SequentialTwoSidedTTest(
                a, b, SequentialConfig(difference_type=kind, alpha=case.alpha, sequential_tuning_parameter=case.tuning)
            )
            result = sequential.compute_result()
            fixed = TwoSidedTTest(a, b, FrequentistConfig(difference_type=kind, alpha=case.alpha)).compute_result()
            print(
                f"{case.name!r} {kind}: estimate {result.expected!r} variance {sequential.variance!r}\n"
                f"  sequential ci {result.ci!r} p {result.p_value!r}\n"
                f"  fixed ci {fixed.ci!r} p {fixed.p_value!r} dof {sequential.dof!r}"
            )


if __name__ == "__main__":
    main()
