"""The bounds on what one client can make the server hold: connections, request heads, URLs, time to send them.

uvicorn's httptools protocol buffers a request head without limit (a header that never ends grows the
process by gigabytes), never times out a connection that sends nothing or drips its head, and accepts
connections until the process runs out of file descriptors, after which every new client is refused with no
log line. uvicorn's own settings cover none of this for httptools (`h11_max_incomplete_event_size` is for h11,
`limit_concurrency` answers 503 only once a head has arrived, so idle sockets still pile up), so this module
subclasses the protocol and refuses early, with a clear answer, a log line and a metric:

    bound                        answer                 reason label
    open connections             503 at connect         connections
    request head bytes           431                    head_too_large
    header lines                 431                    too_many_headers
    request target (URL) bytes   414                    url_too_long
    head not complete in time    408                    head_timeout

Idle keep-alive connections are closed by uvicorn's `timeout_keep_alive`; bodies are bounded by the app
(`max_body_bytes`). The connection limit stays below the file descriptor limit, whose soft value is raised to
the hard one at start (`raise_fd_limit`).

    options = server_options(app, settings)        # uvicorn.Config(app, ..., **options)
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from router.config import RouterSettings
    from router.fastpath import RecommendFastPath

log = logging.getLogger(__name__)

#: Largest request head (request line and headers) in bytes; nginx's default is 4 x 8 KiB, h11's 16 KiB.
MAX_HEAD_BYTES = 16_384
#: Most header lines in one request.
MAX_HEADERS = 64
#: Longest request target in bytes (a /recommend target is under 100).
MAX_URL_BYTES = 4_096
#: Seconds a connection may take, once open or once a request's first byte arrives, to send a whole head.
DEFAULT_HEAD_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection stays open between requests (uvicorn's timeout_keep_alive).
KEEP_ALIVE_TIMEOUT = 15
#: Most open client connections when the file descriptor limit allows more.
DEFAULT_MAX_CONNECTIONS = 8_192
#: Seconds between two log lines about the same kind of refusal (each line says how many since the last).
LOG_INTERVAL = 10.0

REASONS = ("connections", "head_too_large", "too_many_headers", "url_too_long", "head_timeout")


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one server process enforces (module constants, except the two from the environment)."""

    max_connections: int
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    max_url_bytes: int = MAX_URL_BYTES


@dataclass
class Guard:
    """The limits in force and what they refused (read by `GuardCollector` at scrape time)."""

    limits: Limits
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    connections: set[Any] = field(default_factory=set)  # uvicorn's set of open connections, once serving
    _unlogged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    _logged_at: dict[str, float] = field(default_factory=dict)

    def count(self, reason: str, detail: str) -> None:
        """Count a refusal; log it, at most once per LOG_INTERVAL per reason (saying how many since)."""
        self.refused[reason] += 1
        self._unlogged[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_INTERVAL) >= LOG_INTERVAL:
            log.warning(
                "client refused: %s (%d refused for this reason since the last such line)",
                detail,
                self._unlogged[reason],
                extra={"reason": reason, "open_connections": len(self.connections)},
            )
            self._logged_at[reason] = now
            self._unlogged[reason] = 0


class GuardCollector(Collector):
    """The guard's counters for Prometheus: refusals by reason, open connections and their limit."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        guard = self._guard
        refused = CounterMetricFamily(
            "router_clients_refused",
            "Client connections or requests refused by a bound: connections (the limit was reached), "
            "head_too_large, too_many_headers, url_too_long, head_timeout.",
            labels=["reason"],
        )
        for reason, count in guard.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily("router_connections_open", "Open client connections.", value=len(guard.connections))
        yield GaugeMetricFamily(
            "router_connections_limit",
            "Open client connections beyond which new ones are refused.",
            value=guard.limits.max_connections,
        )


class _RefusedError(Exception):
    """Raised inside a parser callback to stop parsing a request that was just refused."""


def answer(status: int, reason: str, detail: str, *, retry_after: bool = False) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, with the router's JSON error body."""
    body = orjson.dumps({"detail": detail})
    extra = b"retry-after: 1\r\n" if retry_after else b""
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n%s"
        % (
            status,
            reason.encode(),
            len(body),
            extra,
            body,
        )
    )


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of `guard` (a subclass per server sets it: `protocol_for`)."""

    guard: Guard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard.connections = self.connections
        self._in_head = True  # between the end of the last request (or the connect) and this one's headers
        self._head_bytes = 0
        self._heads_done = 0
        self._url_bytes = 0
        self._parsed_bytes = 0
        self._header_lines = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._refused_at_connect = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self.guard.limits
        if len(self.connections) >= limits.max_connections:
            self._refused = self._refused_at_connect = True
            self.guard.count("connections", f"{limits.max_connections} connections open, the limit")
            transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
            transport.write(answer(503, "Service Unavailable", "too many connections", retry_after=True))
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if not self._refused_at_connect:  # a connection refused at once was never registered with uvicorn
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head and self._head_timer is None:
            self._arm_head_timer()
        heads_before = self._heads_done
        super().data_received(data)  # httptools holds at most this one read (<= 256 KiB) beyond the bound
        if self._in_head and self._heads_done == heads_before and not self.transport.is_closing():
            self._head_bytes += len(data)  # no head was completed in this read: all of it is head
            if self._head_bytes > self.guard.limits.max_head_bytes:
                self._refuse(431, "Request Header Fields Too Large", "head_too_large", self._head_too_large())

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refusal raised in a callback surfaces here as a parser error: answered already
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        self._url_bytes = 0
        self._parsed_bytes = 0
        self._header_lines = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        limit = self.guard.limits.max_url_bytes
        if self._url_bytes > limit:
            self._refuse(414, "URI Too Long", "url_too_long", f"request target longer than {limit} bytes")
            raise _RefusedError
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        limits = self.guard.limits
        if self._header_lines > limits.max_headers:
            detail = f"more than {limits.max_headers} headers"
            self._refuse(431, "Request Header Fields Too Large", "too_many_headers", detail)
            raise _RefusedError
        # A head that arrived whole in one read is measured here; one still arriving, in data_received.
        self._parsed_bytes += len(name) + len(value) + 4
        if self._url_bytes + self._parsed_bytes > limits.max_head_bytes:
            self._refuse(431, "Request Header Fields Too Large", "head_too_large", self._head_too_large())
            raise _RefusedError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # whatever comes next on this connection is the next request's head
        self._head_bytes = 0

    def _head_too_large(self) -> str:
        return f"request head larger than {self.guard.limits.max_head_bytes} bytes"

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.guard.limits.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused and not self.transport.is_closing():
            limit = self.guard.limits.head_timeout
            self._refuse(408, "Request Timeout", "head_timeout", f"request head not received within {limit:g}s")

    def _refuse(self, status: int, phrase: str, reason: str, detail: str) -> None:
        """Answer `status` and close; count and log it. Mid-response (pipelining) it only closes."""
        self._refused = True
        self._cancel_head_timer()
        self.guard.count(reason, detail)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer(status, phrase, detail))
        self.transport.close()


def protocol_for(guard: Guard) -> type[GuardedProtocol]:
    """A GuardedProtocol subclass bound to `guard` (uvicorn builds protocols from a class, per connection)."""
    return type("BoundGuardedProtocol", (GuardedProtocol,), {"guard": guard})


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (logged); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit from %d to %d (%s)", soft, target, exc)
            return soft
        log.info("file descriptor limit raised from %d to %d", soft, target)
        return target
    return soft


def connection_limit(fd_limit: int, wanted: int | None) -> int:
    """The connection limit: `wanted` (or DEFAULT_MAX_CONNECTIONS), kept below the file descriptor limit.

    A quarter of the descriptors (at least 64) stay for backend connections, the store and the logs.

    >>> connection_limit(1024, None), connection_limit(1_048_576, None), connection_limit(1_048_576, 100)
    (768, 8192, 100)
    """
    ceiling = max(1, fd_limit - max(64, fd_limit // 4))
    return min(wanted or DEFAULT_MAX_CONNECTIONS, ceiling)


def server_options(app: RecommendFastPath, settings: RouterSettings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the bounds; registers the guard's metrics on the app's registry."""
    fd_limit = raise_fd_limit()
    wanted = settings.max_connections
    limits = Limits(max_connections=connection_limit(fd_limit, wanted), head_timeout=settings.head_timeout)
    if wanted is not None and limits.max_connections < wanted:
        log.warning(
            "ROUTER_MAX_CONNECTIONS=%d lowered to %d, below the file descriptor limit %d",
            wanted,
            limits.max_connections,
            fd_limit,
        )
    log.info(
        "client bounds: %d connections, head %d bytes / %d headers / %gs, target %d bytes, keep-alive %ds",
        limits.max_connections,
        limits.max_head_bytes,
        limits.max_headers,
        limits.head_timeout,
        limits.max_url_bytes,
        KEEP_ALIVE_TIMEOUT,
    )
    guard = Guard(limits)
    app.service.metrics.registry.register(GuardCollector(guard))
    return {"http": protocol_for(guard), "timeout_keep_alive": KEEP_ALIVE_TIMEOUT}
