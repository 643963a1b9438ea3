"""Identifier formats shared by the router and the model servers, so both reject the same input."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

#: A user id is 1-64 characters of letters, digits, '_', '.', '-', not starting with '.': no slashes,
#: spaces, control characters or dot-segments, so it can never change the path or headers of a
#: forwarded request.
USER_ID_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$"

#: Largest list a client may ask for.
MAX_K = 100

#: The `user_id` path parameter of every `/recommend/{user_id}` route (router and model servers).
UserId = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        description="1-64 letters, digits, '_', '.', '-' (not starting with '.').",
        examples=["42"],
    ),
]

#: The `k` query parameter: how many items to recommend.
TopK = Annotated[int, Query(ge=1, le=MAX_K, description=f"How many items, 1..{MAX_K}.")]
