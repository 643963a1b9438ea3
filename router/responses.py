"""What the router answers, built in one place for the FastAPI routes and the fast path alike.

    status, headers, body = recommend_response(answer)       # 200 with X-Variant and X-Request-ID
    status, headers, body = error_response(exc)              # any RouterError: its status, headers and JSON

Headers are (name, value) byte pairs, as ASGI sends them; `as_response` wraps a triple for FastAPI.
"""

from __future__ import annotations

import orjson
from fastapi.responses import Response

from router.errors import RouterError
from router.service import Answer

Headers = list[tuple[bytes, bytes]]
Triple = tuple[int, Headers, bytes]

JSON = (b"content-type", b"application/json")

#: The body of an unexpected failure (the details go to the log, never to the client).
INTERNAL_ERROR = orjson.dumps({"detail": "internal error in the router"})


def recommend_response(answer: Answer) -> Triple:
    """The 200 answer to /recommend: the backend's body with `variant` and `request_id`, and the same in headers."""
    headers = [JSON, (b"x-variant", answer.variant.encode()), (b"x-request-id", answer.request_id.encode())]
    return 200, headers, answer.body


def error_response(exc: RouterError) -> Triple:
    """The answer to any error of the tree: its status, its headers, its JSON body."""
    headers = [
        JSON,
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers().items()),
    ]
    return exc.status_code, headers, orjson.dumps(exc.body())


def internal_error_response() -> Triple:
    """The answer to an error nobody expected: 500, JSON, no details."""
    return 500, [JSON], INTERNAL_ERROR


def as_response(triple: Triple) -> Response:
    """A (status, headers, body) triple as a starlette Response (content-length is added by it)."""
    status, headers, body = triple
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response
