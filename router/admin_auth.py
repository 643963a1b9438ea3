"""Admin authentication: the bearer token, checked in constant time, with wrong guesses throttled per address.

    guard = AdminGuard(token)
    guard.check(client="10.0.0.7", authorization="Bearer s3cret")   # None, or raises the admin errors

After `max_failures` wrong tokens from one client address within `window` seconds, that address is refused
(429, AdminThrottledError) without a comparison until the window has passed since its first failure: a
guesser gets `max_failures` tries per window instead of thousands a second. Memory is bounded: at most
`max_clients` addresses are remembered (the oldest forgotten first). Every failure is logged, at most once a
second per address with the count since (a flood is one line a second, never silent).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from router.errors import AdminDisabledError, AdminForbiddenError, AdminThrottledError, AdminUnauthorizedError

log = logging.getLogger(__name__)


@dataclass
class _Failures:
    first: float
    count: int
    logged_at: float = float("-inf")
    unlogged: int = 0


class AdminGuard:
    """Checks admin requests' bearer token; throttles and logs wrong ones (see the module docstring)."""

    def __init__(
        self,
        token: SecretStr | None,
        *,
        max_failures: int = 10,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = None if token is None else token.get_secret_value().encode()
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, client: str, authorization: str | None) -> None:
        """Pass, or raise AdminDisabledError, AdminThrottledError, AdminUnauthorizedError or AdminForbiddenError."""
        if self._token is None:
            raise AdminDisabledError("admin endpoints are disabled: set ROUTER_ADMIN_TOKEN to enable them")
        now = self._clock()
        record = self._failures.get(client)
        if record is not None and now - record.first >= self.window:
            del self._failures[client]
            record = None
        if record is not None and record.count >= self.max_failures:
            self._log(client, record, now, "admin authentication throttled")
            raise AdminThrottledError(
                f"too many wrong admin tokens from {client}: retry later", record.first + self.window - now
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AdminUnauthorizedError("admin endpoints need 'Authorization: Bearer <ROUTER_ADMIN_TOKEN>'")
        token = self._token
        if hmac.compare_digest(given.strip().encode(), token):
            return
        if record is None:
            record = self._failures[client] = _Failures(now, 0)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        record.count += 1
        self._log(client, record, now, "wrong admin token")
        raise AdminForbiddenError("wrong admin token")

    def tracked(self) -> int:
        """How many client addresses have recent failures (bounded by `max_clients`)."""
        return len(self._failures)

    @staticmethod
    def _log(client: str, record: _Failures, now: float, message: str) -> None:
        record.unlogged += 1
        if now - record.logged_at < 1.0:
            return
        log.warning(message, extra={"client": client, "failures": record.count, "since_last_line": record.unlogged})
        record.logged_at, record.unlogged = now, 0
