"""The only module that talks HTTP to backends; it turns every failure into a BackendError (router.errors):

    BackendError (502, kind 'bad_response')        the base: something went wrong with a variant's backend
    ├── BackendTimeoutError (504, 'timeout')            no connection or no answer within the configured timeout
    ├── BackendUnavailableError (503, 'unavailable')    connection refused/reset, DNS failure, backend said 503
    └── BadBackendResponseError (502, 'bad_response')   a non-200 status, or a body that breaks the model contract

Requests are built here from configuration only: `GET {variant.url}/recommend/{quoted user_id}?k={k}`,
`GET {variant.url}/health` and `GET {variant.url}/info`. No header, host or path comes from the client, and
redirects are not followed.

Two clients implement `BackendClient` (config `backend_client`): aiohttp (default; several times faster than
httpx's default transport on this hot path) and httpx. Both keep one keep-alive pool per process, opened in
the app's lifespan by `open_client`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
import orjson
from yarl import URL

from router.config import Timeouts, Variant
from router.errors import BackendError, BackendTimeoutError, BackendUnavailableError, BadBackendResponseError

#: Most connections the router opens to one backend (aiohttp: per backend, so a hung variant cannot take the
#: other's connections; httpx: in total).
MAX_CONNECTIONS = 512

#: Seconds allowed for a /health or /info probe (never longer than the configured timeouts).
PROBE_TIMEOUT = 2.0

#: Largest backend answer the router reads (after decompression); a 100-item list with scores is about 4 KB.
#: A backend that sends more (an endless stream, a gzip bomb, a padded answer) gets a 502 instead of filling
#: the router's memory: at most MAX_CONNECTIONS x this per backend in flight.
MAX_RESPONSE_BYTES = 65_536

InfoPath = Literal["/health", "/info"]


NativeTimeout = TypeVar("NativeTimeout")
Parsed = TypeVar("Parsed")


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A backend's answer: its JSON body as received (passed through, not re-encoded) and the items in it."""

    body: bytes
    items: list[int]


class BackendClient(Protocol):
    """Talks to model servers over one pooled, keep-alive client."""

    def configure(self, timeouts: Timeouts) -> None:
        """Use `timeouts` for every later request (a reload may change them)."""

    async def recommend(self, variant: Variant, user_id: str, k: int) -> Recommendation:
        """`GET {variant.url}/recommend/{user_id}?k={k}`; raises a BackendError subclass on any failure."""

    async def fetch_json(self, variant: Variant, path: InfoPath) -> dict[str, Any]:
        """`GET {variant.url}{path}` as a JSON object; raises a BackendError subclass on any failure."""

    async def aclose(self) -> None:
        """Close the pool."""


def recommend_url(base_url: str, user_id: str, k: int) -> str:
    """The one URL a recommendation is forwarded to. `user_id` is percent-quoted, so it stays one segment.

    >>> recommend_url("http://model_a:8000", "42", 10)
    'http://model_a:8000/recommend/42?k=10'
    """
    return f"{base_url}/recommend/{quote(user_id, safe='')}?k={int(k)}"


def parse_recommendation(variant: str, status: int, body: bytes, *, user_id: str, k: int) -> Recommendation:
    """Check a /recommend answer against the model contract; raise BadBackendResponseError/BackendUnavailableError.

    The answer must name the user it was asked for (`user_id`): a pooled connection that a broken backend
    desynchronised (an extra or mis-framed response) then gives an error, never another user's list. Its
    `items` must be at most `k` distinct integer ids: a longer list is refused, not truncated (a backend that
    ignores `k` is broken, and its answer is not what the experiment measures).

    >>> parse_recommendation("a", 200, b'{"user_id": "u", "items": [3, 1]}', user_id="u", k=2).items
    [3, 1]
    """
    parsed = parse_object(variant, status, body)
    if parsed.get("user_id") != user_id:
        raise BadBackendResponseError(variant, "backend answer is not for the user it was asked for")
    items = parsed.get("items")
    if not isinstance(items, list) or not all(type(item) is int for item in items):
        raise BadBackendResponseError(variant, "backend answer has no 'items' list of integer ids")
    if len(items) > k:
        raise BadBackendResponseError(variant, f"backend answered {len(items)} items for k={k}")
    if len(set(items)) != len(items):
        raise BadBackendResponseError(variant, "backend answer repeats an item")
    return Recommendation(body=body, items=items)


def parse_object(variant: str, status: int, body: bytes) -> dict[str, Any]:
    """A /health or /info answer as a JSON object; raise a BackendError subclass otherwise."""
    if status != 200:
        raise _status_error(variant, status)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBackendResponseError(variant, "backend answered with invalid JSON") from exc
    if not isinstance(parsed, dict):
        raise BadBackendResponseError(variant, "backend answered with JSON that is not an object")
    return parsed


def _status_error(variant: str, status: int) -> BackendError:
    if status == 503:
        return BackendUnavailableError(variant, "backend answered HTTP 503 (not ready)")
    return BadBackendResponseError(variant, f"backend answered HTTP {status}")


class _PooledClient(Generic[NativeTimeout]):
    """What both clients share: the timeouts in force, the two requests, and checking the answers.

    A subclass says how its library spells a timeout (`_native_timeout`) and how it GETs a URL (`_get`).
    """

    def __init__(self, timeouts: Timeouts) -> None:
        self.configure(timeouts)

    def configure(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._probe_timeouts = _probe_timeouts(timeouts)
        self._timeout = self._native_timeout(timeouts)
        self._probe_timeout = self._native_timeout(self._probe_timeouts)

    async def recommend(self, variant: Variant, user_id: str, k: int) -> Recommendation:
        url = recommend_url(variant.base_url, user_id, k)
        name = variant.name

        def parse(status: int, body: bytes) -> Recommendation:
            return parse_recommendation(name, status, body, user_id=user_id, k=k)

        return await self._get(name, url, self._timeout, self._timeouts, parse)

    async def fetch_json(self, variant: Variant, path: InfoPath) -> dict[str, Any]:
        url = variant.base_url + path
        name = variant.name

        def parse(status: int, body: bytes) -> dict[str, Any]:
            return parse_object(name, status, body)

        return await self._get(name, url, self._probe_timeout, self._probe_timeouts, parse)

    def _native_timeout(self, timeouts: Timeouts) -> NativeTimeout:
        raise NotImplementedError

    async def _get(
        self,
        variant: str,
        url: str,
        library_timeout: NativeTimeout,
        timeouts: Timeouts,
        parse: Callable[[int, bytes], Parsed],
    ) -> Parsed:
        """GET `url` and `parse` the answer while the connection is held: a refused answer closes the
        connection instead of returning it to the pool (whatever follows on it is not to be trusted)."""
        raise NotImplementedError


class AiohttpClient(_PooledClient[aiohttp.ClientTimeout]):
    """BackendClient over one `aiohttp.ClientSession` (create it inside a running event loop)."""

    def __init__(self, timeouts: Timeouts, *, max_connections: int = MAX_CONNECTIONS) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=max_connections, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
        super().__init__(timeouts)

    def _native_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        return _aiohttp_timeout(timeouts)

    async def _get(
        self,
        variant: str,
        url: str,
        library_timeout: aiohttp.ClientTimeout,
        timeouts: Timeouts,
        parse: Callable[[int, bytes], Parsed],
    ) -> Parsed:
        try:
            # encoded=True: the URL is already quoted (recommend_url); yarl must not re-quote or normalise it
            async with self._session.get(
                URL(url, encoded=True), timeout=library_timeout, allow_redirects=False
            ) as response:
                try:
                    length = response.content_length
                    if (
                        length is not None
                        and length <= MAX_RESPONSE_BYTES
                        and "Content-Encoding" not in response.headers
                    ):
                        body = await response.read()  # the usual case: small, declared, plain
                    else:
                        body = await _read_limited(variant, response.content.iter_any(), length)
                    return parse(response.status, body)
                except BackendError:
                    # A small answer is read with its headers, and its connection is back in the pool before
                    # we see it: close the connection's protocol itself, so the pool finds it closed.
                    protocol = getattr(response, "_protocol", None)  # aiohttp sets it in start(); no public name
                    if protocol is not None:
                        protocol.close()
                    response.close()
                    raise
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors
            raise BackendTimeoutError(variant, _timeout_detail(timeouts, type(exc).__name__)) from exc
        except aiohttp.ClientConnectorError as exc:
            raise BackendUnavailableError(
                variant, f"cannot connect to the backend ({exc.os_error.strerror or type(exc.os_error).__name__})"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise BackendUnavailableError(variant, f"connection to the backend failed ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            raise BadBackendResponseError(variant, f"broken response from the backend ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient(_PooledClient[httpx.Timeout]):
    """BackendClient over one `httpx.AsyncClient`."""

    def __init__(self, timeouts: Timeouts, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self._client = httpx.AsyncClient(
            timeout=_httpx_timeout(timeouts),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
        )
        super().__init__(timeouts)

    def _native_timeout(self, timeouts: Timeouts) -> httpx.Timeout:
        return _httpx_timeout(timeouts)

    async def _get(
        self,
        variant: str,
        url: str,
        library_timeout: httpx.Timeout,
        timeouts: Timeouts,
        parse: Callable[[int, bytes], Parsed],
    ) -> Parsed:
        try:
            async with (
                asyncio.timeout(_total_seconds(timeouts)),  # httpx's timeouts are per phase: bound the whole
                self._client.stream("GET", url, timeout=library_timeout) as response,
            ):
                try:
                    length = response.headers.get("Content-Length")
                    declared = int(length) if length is not None and length.isdigit() else None
                    body = await _read_limited(variant, response.aiter_bytes(), declared)
                    return parse(response.status_code, body)
                except BackendError:
                    stream = response.extensions.get("network_stream")
                    if stream is not None:
                        await stream.aclose()  # the pool then sees the connection closed and never reuses it
                    raise
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise BackendTimeoutError(variant, _timeout_detail(timeouts, type(exc).__name__)) from exc
        except httpx.ConnectError as exc:
            raise BackendUnavailableError(variant, f"cannot connect to the backend ({exc})") from exc
        except httpx.RemoteProtocolError as exc:
            if "disconnected" in str(exc):  # h11's "Server disconnected without sending a response": as aiohttp
                raise BackendUnavailableError(variant, "connection to the backend failed (disconnected)") from exc
            # The backend broke HTTP (a bad status line, HTTP/0.9, a header too large): aiohttp's answer too.
            raise BadBackendResponseError(variant, f"broken response from the backend ({type(exc).__name__})") from exc
        except httpx.NetworkError as exc:
            raise BackendUnavailableError(variant, f"connection to the backend failed ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise BadBackendResponseError(variant, f"broken response from the backend ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def open_client(kind: Literal["aiohttp", "httpx"], timeouts: Timeouts) -> BackendClient:
    """The configured client. Call inside the running event loop (the app's lifespan); close with aclose()."""
    if kind == "httpx":
        return HttpxClient(timeouts)
    return AiohttpClient(timeouts)


def _probe_timeouts(timeouts: Timeouts) -> Timeouts:
    return Timeouts(
        connect=min(timeouts.connect, PROBE_TIMEOUT),
        read=min(timeouts.read, PROBE_TIMEOUT),
        pool=min(timeouts.pool, PROBE_TIMEOUT),
    )


async def _read_limited(variant: str, chunks: AsyncIterator[bytes], declared: int | None) -> bytes:
    """The body from `chunks`, refused (BadBackendResponseError) once it exceeds MAX_RESPONSE_BYTES."""
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        raise BadBackendResponseError(variant, f"backend answer larger than {MAX_RESPONSE_BYTES} bytes ({declared})")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise BadBackendResponseError(variant, f"backend answer larger than {MAX_RESPONSE_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _total_seconds(timeouts: Timeouts) -> float:
    """The most one backend request may take: each phase's limit may be used once, no more."""
    return timeouts.pool + timeouts.connect + timeouts.read


def _aiohttp_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    # aiohttp's `connect` covers waiting for a pooled connection plus connecting; `sock_connect` only the latter.
    # `total` stops a backend that drips bytes slower than it takes to reach the end but never long enough
    # for `sock_read` to fire.
    return aiohttp.ClientTimeout(
        total=_total_seconds(timeouts),
        connect=timeouts.pool + timeouts.connect,
        sock_connect=timeouts.connect,
        sock_read=timeouts.read,
    )


def _httpx_timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.pool)


def _timeout_detail(timeouts: Timeouts, what: str) -> str:
    return (
        f"backend did not answer in time ({what}; limits: connect {timeouts.connect:g}s, "
        f"read {timeouts.read:g}s, pool {timeouts.pool:g}s)"
    )
