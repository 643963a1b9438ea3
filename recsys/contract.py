"""The model REST contract's identifiers, shared by the router and both model servers (pure: no web framework).

    GET /recommend/{user_id}?k=10 -> {"user_id", "items", "scores", "model", "version", "cold_start"}

Both sides reject the same input because both read these definitions.

    >>> import re
    >>> bool(re.fullmatch(USER_ID_PATTERN, "42")), bool(re.fullmatch(USER_ID_PATTERN, "../x"))
    (True, False)
"""

from __future__ import annotations

#: A user id is 1-64 characters of letters, digits, '_', '.', '-', not starting with '.': no slashes,
#: spaces, control characters or dot-segments, so it can never change the path or headers of a
#: forwarded request.
USER_ID_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$"

#: What USER_ID_PATTERN allows, in words (for error messages and API docs).
USER_ID_RULE = "1-64 letters, digits, '_', '.', '-' (not starting with '.')"

#: Largest list a client may ask for.
MAX_K = 100

#: The list length when a request does not say.
DEFAULT_K = 10
