"""Witnesses for what crossed the wire: a recording wrapper for a stand-in backend, a canary, a raw HTTP client.

recorder = Recorder(create_fake_model("model_a", FakeModelControl()))
with serve(recorder) as url, Canary() as canary:
    ...                                  # point a router at `url` only; try to make it reach the canary
    recorder.received                    # every request the backend got: method, raw path, query, headers
    canary.connections                   # must stay empty: nothing may ever connect to it
raw_http(port, b"GET //evil/x HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")   # exactly these bytes, no normalising
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    """One HTTP request as the backend's server saw it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    @property
    def target(self) -> str:
        """The request target as sent: raw path plus query."""
        return (self.raw_path + (b"?" + self.query if self.query else b"")).decode("latin-1")

    def header_names(self) -> set[str]:
        return {name.decode("latin-1").lower() for name, _ in self.headers}

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        return next((value.decode("latin-1") for key, value in self.headers if key.lower() == wanted), None)


class Recorder:
    """ASGI middleware that records every HTTP request before passing it to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.received: list[Received] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            self.received.append(
                Received(scope["method"], raw_path, scope.get("query_string", b""), tuple(scope["headers"]))
            )
        await self.app(scope, receive, send)

    def recommendations(self) -> list[Received]:
        return [r for r in self.received if r.raw_path.startswith(b"/recommend/")]


@dataclass
class Canary:
    """A TCP listener on loopback that nobody may ever connect to; it records whoever does, and what they sent."""

    connections: list[bytes] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="canary", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    self.connections.append(conn.recv(4096) or b"<connected, sent nothing>")
                except OSError:
                    self.connections.append(b"<connected, sent nothing>")


def raw_http(port: int, request: bytes, *, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """Send `request` byte for byte to 127.0.0.1:port; (status or None if no HTTP answer, whole answer)."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    parts = answer.split(b" ", 2)
    status = int(parts[1]) if answer.startswith(b"HTTP/1.") and len(parts) > 1 and parts[1].isdigit() else None
    return status, answer
