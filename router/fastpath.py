"""The router's outermost ASGI layer: plainly valid GET /recommend/{user_id}?k=N is served here, the rest by FastAPI.

FastAPI's routing, dependency solving and middleware layers cost about as much CPU per request as the
proxying itself. This layer answers requests whose input is plainly valid (the user id matches
`USER_ID_PATTERN`, the query is empty or `k=<1..MAX_K>`) by calling the same `RouterService.recommend` and the
same response builders (router.responses) as the FastAPI route; everything else - invalid input, other query
parameters, other routes, lifespan - goes to the FastAPI app, which declares the same route (for OpenAPI) and
answers with the usual 422s. It has its own catch-all that answers 500 in JSON exactly like the app's, so the
answer is the same whichever layer serves it; only the cost differs.

    app = RecommendFastPath(api, service)      # what create_app returns and uvicorn serves
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from recsys.contract import DEFAULT_K, MAX_K, USER_ID_PATTERN
from router.errors import RequestRefusedError, RouterError
from router.responses import Triple, error_response, internal_error_response, recommend_response
from router.service import RouterService
from router.shadow import ShadowJob

log = logging.getLogger(__name__)

PREFIX = "/recommend/"

_USER_ID = re.compile(USER_ID_PATTERN)


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
    """ASGI app: serves plainly valid GET /recommend requests through `service`, passes the rest to `api`.

    `api` is the router's FastAPI app and `service` its RouterService (tests reach both through here).
    """

    def __init__(self, api: FastAPI, service: RouterService) -> None:
        self.api = api
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # lifespan (and websockets, which the router has none of)
            return
        if scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            parsed = parse_recommend(scope)
            if parsed is not None:
                await self._serve(scope, send, *parsed)
                return
        await self._pass_on(scope, receive, send)

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let FastAPI answer; catch what its error middleware re-raises after answering 500.

        Starlette re-raises an unexpected error once its handler has sent the 500, so that the server logs it;
        uvicorn then drops the connection under the client. The handler has logged it already, so here it ends.
        """
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.api(scope, receive, tracked)
        except Exception:
            if not started:  # nothing was answered yet: answer like the app would
                log.error("unhandled error", exc_info=True, extra={"path": scope["path"]})
                await _send(send, internal_error_response())

    async def _serve(self, scope: Scope, send: Send, user_id: str, k: int) -> None:
        service = self.service
        triple: Triple
        shadow_jobs: tuple[ShadowJob, ...] = ()
        try:
            override = service.live.config.override
            forced = _header(scope, override.header.lower().encode("latin-1")) if override.enabled else None
            answer = await service.recommend(user_id, k, forced)
            triple, shadow_jobs = recommend_response(answer), answer.shadow_jobs
        except RouterError as exc:
            if isinstance(exc, RequestRefusedError):
                service.metrics.rejected("recommend", exc.status_code)
            triple = error_response(exc)
        except Exception:  # this layer's outermost handler, like the app's: a JSON 500, details in the log only
            log.error("unhandled error", exc_info=True, extra={"path": scope["path"]})
            triple = internal_error_response()
        await _send(send, triple)
        if shadow_jobs:  # after the body is sent: the client has its answer before a shadow call starts
            service.submit_shadows(shadow_jobs)


async def _send(send: Send, triple: Triple) -> None:
    status, headers, body = triple
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
