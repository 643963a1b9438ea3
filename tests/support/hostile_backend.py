"""A backend that breaks HTTP on purpose, on a raw socket: what a buggy or hostile model server could write.

    with HostileBackend("extra") as backend:        # listening on 127.0.0.1:backend.port, one thread per connection
        ... point a variant at backend.url ...
        backend.requests                               # the user ids asked for, in order

Every mode answers the user it was asked for with `items_for(user)` (when it answers at all) and, where the
mode smuggles, also writes `SMUGGLED_ITEMS`, which no honest answer contains. A client that hands a user
`SMUGGLED_ITEMS`, or another user's items, has crossed answers. `answer_items(mode, user)` gives the list a
mode's first answer carries (over-long, duplicated, wrong types), for the contract modes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import zlib
from types import TracebackType

import orjson

#: Items no honest answer holds: seeing them in any user's answer means a smuggled response was served.
SMUGGLED_ITEMS = [666_001, 666_002, 666_003]

#: Modes that break HTTP framing (the client must never cross answers, and must count the failure).
FRAMING_MODES = (
    "extra",  # a correct answer, then a second, unrequested response on the same keep-alive connection
    "late_extra",  # a correct answer, and a moment later an unrequested response (the connection idles in a pool)
    "short_length",  # Content-Length shorter than the body; the rest is a smuggled response
    "long_length",  # Content-Length longer than the body, then the connection stays open
    "length_and_chunked",  # Content-Length and Transfer-Encoding: chunked, the chunked body a smuggled list
    "http09",  # no status line or headers, just a body (HTTP/0.9 style), then close
    "bad_status",  # a status line that is not HTTP/1.x NNN
    "huge_header",  # a 1 MiB response header
)

#: Modes that speak HTTP correctly but break the model contract (items bounded by k, distinct, integers).
CONTRACT_MODES = ("too_many", "duplicates", "strings", "bools", "floats", "nested")

_TARGET = re.compile(rb"^GET /recommend/([^?\s]+)\?k=(\d+) HTTP/1\.1\r\n")


def items_for(user: str, k: int = 3) -> list[int]:
    """The list an honest backend gives `user`: distinct per user, never SMUGGLED_ITEMS."""
    base = zlib.crc32(user.encode()) % 100_000 * 1000
    return [base + i for i in range(k)]


def answer_items(mode: str, user: str, k: int) -> list[object]:
    """The `items` a contract mode answers with for `user` and `k`."""
    ids = items_for(user, k)
    honest: list[object] = list(ids)
    if mode == "too_many":
        return list(items_for(user, k * 50 + 1))
    if mode == "duplicates":
        return [honest[0]] * k
    if mode == "strings":
        return [str(item) for item in honest]
    if mode == "bools":
        return [True] * k
    if mode == "floats":
        return [float(item) + 0.5 for item in ids]
    if mode == "nested":
        return [honest]
    return honest


def _response(items: list[object], user: str, *, extra_headers: bytes = b"") -> bytes:
    body = orjson.dumps({"user_id": user, "items": items, "model": "hostile", "version": "0"})
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra_headers,
        body,
    )


class HostileBackend:
    """A loopback listener answering GET /recommend/{user}?k=N in `mode` ("honest", or one of FRAMING_MODES
    and CONTRACT_MODES; it may be changed while serving); /health and /info always answer honestly."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileBackend:
        thread = threading.Thread(target=self._accept, name=f"hostile-{self.mode}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                if not self._answer(conn, head + b"\r\n"):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, head: bytes) -> bool:
        """Write this mode's answer to one request; False when the connection must end."""
        match = _TARGET.match(head)
        if match is None:  # /health, /info: honest, so the router sees the backend up
            body = orjson.dumps({"status": "ok", "model": "hostile", "version": "0"})
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return True
        user, k = match.group(1).decode(), int(match.group(2))
        self.requests.append(user)
        mode = self.mode
        honest = _response(list(items_for(user, k)), user)
        smuggled = _response(list(SMUGGLED_ITEMS), "SMUGGLED")
        if mode == "honest":
            conn.sendall(honest)
        elif mode in CONTRACT_MODES:
            conn.sendall(_response(answer_items(mode, user, k), user))
        elif mode == "extra":
            conn.sendall(honest + smuggled)
        elif mode == "late_extra":
            conn.sendall(honest)
            self._stop.wait(0.05)  # the hostile part: the extra answer lands while the connection is pooled
            conn.sendall(smuggled)
        elif mode == "short_length":
            body = orjson.dumps({"user_id": user, "items": items_for(user, k)})
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s" % (len(body) - 1, body, smuggled))
        elif mode == "long_length":
            body = orjson.dumps({"user_id": user, "items": items_for(user, k)})
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) + 40, body))
            self._stop.wait(30)  # the rest never comes; the client's read timeout must end it
            return False
        elif mode == "length_and_chunked":
            body = orjson.dumps({"user_id": "SMUGGLED", "items": SMUGGLED_ITEMS})
            honest_body = orjson.dumps({"user_id": user, "items": items_for(user, k)})
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s%s"
                % (len(honest_body), chunked, honest_body)
            )
        elif mode == "http09":
            conn.sendall(orjson.dumps({"user_id": user, "items": items_for(user, k)}))
            return False
        elif mode == "bad_status":
            body = orjson.dumps({"user_id": user, "items": items_for(user, k)})
            conn.sendall(b"HTTP/1.1 2OO OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif mode == "huge_header":
            conn.sendall(_response(list(items_for(user, k)), user, extra_headers=b"X-Pad: " + b"a" * 2**20 + b"\r\n"))
        else:
            raise ValueError(f"unknown mode {mode!r}")
        return True
