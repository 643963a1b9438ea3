"""Identifier formats shared by the router and the model servers, so both reject the same input."""

from __future__ import annotations

#: A user id is 1-64 characters of letters, digits, '_', '.', '-', not starting with '.': no slashes,
#: spaces, control characters or dot-segments, so it can never change the path or headers of a
#: forwarded request.
USER_ID_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$"

#: Largest list a client may ask for.
MAX_K = 100
