"""What the router answers, built in one place for the FastAPI routes and the fast path alike.

    status, headers, body = recommend_response(answer)       # 200 with X-Variant and X-Request-ID
    status, headers, body = error_response(exc)              # any RouterError: its status, headers and JSON

Headers are (name, value) byte pairs, as ASGI sends them; `as_response` wraps a triple for FastAPI.
No answer names a file of the server: `redact_paths` shortens absolute paths to `.../name` in every error.
The answers' shapes, for the OpenAPI document, are the pydantic models at the end (routes return raw bytes,
so they document and are checked by tests against real answers; they never re-validate at run time).
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

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
    """The answer to any error of the tree: its status, its headers, its JSON body (server paths redacted)."""
    headers = [
        JSON,
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers().items()),
    ]
    body = {key: redact_paths(value) if isinstance(value, str) else value for key, value in exc.body().items()}
    return exc.status_code, headers, orjson.dumps(body)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/([\w.@+-]+)((?:/[\w.@+-]+)*)")


def redact_paths(text: str) -> str:
    """`text` with every absolute path of this machine shortened to `.../<last part>`.

    A path counts when its first part is a top-level folder that exists here (/srv, /tmp, /work, ...), so a URL's
    path (`http://host/x`) or an endpoint (`/recommend/42`) is left alone.

    >>> redact_paths("cannot open the outcome store /tmp/results/outcomes.sqlite3: disk I/O error")
    'cannot open the outcome store .../outcomes.sqlite3: disk I/O error'
    >>> redact_paths("GET /recommend/42 or http://model_a:8000/health")
    'GET /recommend/42 or http://model_a:8000/health'
    """

    def shorten(match: re.Match[str]) -> str:
        if not os.path.isdir("/" + match.group(1)):
            return match.group(0)
        return ".../" + match.group(0).rsplit("/", 1)[-1]

    return _ABSOLUTE_PATH.sub(shorten, text)


def internal_error_response() -> Triple:
    """The answer to an error nobody expected: 500, JSON, no details."""
    return 500, [JSON], INTERNAL_ERROR


def as_response(triple: Triple) -> Response:
    """A (status, headers, body) triple as a starlette Response (content-length is added by it)."""
    status, headers, body = triple
    response = Response(body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


# -- the answers' shapes (OpenAPI) ---------------------------------------------------------------------


class ErrorAnswer(BaseModel):
    """Every error: `detail` says what is wrong; some errors add fields."""

    model_config = ConfigDict(extra="allow")

    detail: str = Field(description="What went wrong, in words (never a server path)")
    variant: str | None = Field(default=None, description="/recommend errors: the variant that failed")
    request_id: str | None = Field(default=None, description="/recommend errors: the logged exposure's id")
    errors: list[dict[str, Any]] | None = Field(default=None, description="422 on invalid input: each problem")


class RecommendationAnswer(BaseModel):
    """GET /recommend: the backend's answer (the model contract) plus the router's `variant` and `request_id`."""

    model_config = ConfigDict(extra="allow")

    user_id: str
    items: list[int] = Field(description="Item ids, best first")
    scores: list[float] = Field(description="One score per item (the model's scale)")
    model: str
    version: str
    cold_start: bool
    variant: str = Field(description="The variant that served (also the X-Variant header)")
    request_id: str = Field(description="The exposure's id: send it with POST /feedback (also X-Request-ID)")


class FeedbackAccepted(BaseModel):
    """POST /feedback, 202: the event is queued for the outcome store, tied to this exposure."""

    status: Literal["accepted"]
    request_id: str = Field(description="The exposure the event was attributed to")
    variant: str = Field(description="Credited variant (on an interleaved exposure: the team that placed the item)")
    phase: int
    assignment: str = Field(description="How the exposure got its variant: strategy, override or fallback")
    attributed_by: Literal["request_id", "user"]
    position: int | None = Field(description="The item's position in the list shown (null: not in it)")


class ReloadAnswer(BaseModel):
    """POST /admin/reload: the config now live, and whether it started a new phase."""

    status: Literal["reloaded"]
    phase: int
    new_phase: bool
    previous_phase: int
    config: dict[str, Any] = Field(description="As GET /config shows it")


class ResumeAnswer(BaseModel):
    """POST /admin/resume/{variant}: the variant has its configured weight again, in a new phase."""

    status: Literal["resumed"]
    variant: str
    phase: int
    previous_phase: int
    config: dict[str, Any] = Field(description="As GET /config shows it")
