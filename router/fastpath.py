"""The hot route, GET /recommend/{user_id}?k=N, served as a raw ASGI layer in front of FastAPI's routing.

FastAPI's routing, dependency solving and middleware layers cost about as much CPU per request as the
proxying itself. This layer answers requests whose input is plainly valid (the user id matches
`USER_ID_PATTERN`, the query is empty or `k=<1..MAX_K>`) by calling the same `RouterService.recommend`;
everything else - invalid input, other query parameters, other routes - falls through to the FastAPI app,
which declares the same route (for OpenAPI) and answers with the usual 422s. Behaviour is identical
either way; only the cost differs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from recsys.contract import MAX_K, USER_ID_PATTERN
from router.proxy import BackendError
from router.service import RequestRefusedError, RouterService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/recommend/"
DEFAULT_K = 10

_USER_ID = re.compile(USER_ID_PATTERN)
_JSON = (b"content-type", b"application/json")


def backend_error_response(exc: BackendError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body for a failed variant: `{"detail", "variant", "request_id"}`."""
    headers = {"X-Variant": exc.variant}
    if exc.request_id is not None:
        headers["X-Request-ID"] = exc.request_id
    body = {
        "detail": f"variant {exc.variant} failed: {exc.detail}",
        "variant": exc.variant,
        "request_id": exc.request_id,
    }
    return exc.status, headers, orjson.dumps(body)


def parse_recommend(scope: Scope) -> tuple[str, int] | None:
    """(user_id, k) if this is a plainly valid GET /recommend request, else None (FastAPI will handle it).

    >>> parse_recommend({"path": "/recommend/42", "query_string": b"k=5"})
    ('42', 5)
    >>> parse_recommend({"path": "/recommend/42", "query_string": b"k=500"}) is None
    True
    """
    user_id = scope["path"][len(PREFIX) :]
    if _USER_ID.fullmatch(user_id) is None:
        return None
    query: bytes = scope["query_string"]
    if not query:
        return user_id, DEFAULT_K
    if not query.startswith(b"k=") or len(query) > 5 or not query[2:].isdigit():
        return None
    k = int(query[2:])
    return (user_id, k) if 1 <= k <= MAX_K else None


class RecommendFastPath:
    """ASGI middleware: serves plainly valid GET /recommend requests through `service`, passes the rest on."""

    def __init__(self, app: ASGIApp, service: RouterService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            parsed = parse_recommend(scope)
            if parsed is not None:
                await self._serve(scope, send, *parsed)
                return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, send: Send, user_id: str, k: int) -> None:
        service = self.service
        override = service.live.config.override
        forced = _header(scope, override.header.lower().encode("latin-1")) if override.enabled else None
        try:
            answer = await service.recommend(user_id, k, forced)
        except BackendError as exc:
            status, named, body = backend_error_response(exc)
            headers = [_JSON, *((name.lower().encode(), value.encode()) for name, value in named.items())]
        except RequestRefusedError as exc:
            service.metrics.rejected("recommend", exc.status)
            status, headers, body = exc.status, [_JSON], orjson.dumps({"detail": exc.detail})
        else:
            status, body = 200, answer.body
            headers = [_JSON, (b"x-variant", answer.variant.encode()), (b"x-request-id", answer.request_id.encode())]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
