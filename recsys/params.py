"""The contract's path and query parameters as FastAPI types, for the web layers (router and model servers).

Kept apart from `recsys.contract` so that cores which only need the patterns do not import FastAPI.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from recsys.contract import MAX_K, USER_ID_PATTERN, USER_ID_RULE

#: The `user_id` path parameter of every `/recommend/{user_id}` route (router and model servers).
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description=f"{USER_ID_RULE}.", examples=["42"])]

#: The `k` query parameter: how many items to recommend.
TopK = Annotated[int, Query(ge=1, le=MAX_K, description=f"How many items, 1..{MAX_K}.")]
