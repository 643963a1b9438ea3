"""AdminGuard (pure): the throttle's window, its memory bound, and what it answers."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from router.admin_auth import AdminGuard
from router.errors import AdminDisabledError, AdminForbiddenError, AdminThrottledError, AdminUnauthorizedError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_gets_max_failures_guesses_per_window_then_waits_it_out() -> None:
    clock = Clock()
    guard = AdminGuard(SecretStr("s3cret-token"), max_failures=3, window=60.0, clock=clock)
    for _ in range(3):
        with pytest.raises(AdminForbiddenError):
            guard.check("10.0.0.1", "Bearer guess")
    with pytest.raises(AdminThrottledError) as throttled:
        guard.check("10.0.0.1", "Bearer s3cret-token")
    assert throttled.value.headers() == {"Retry-After": "60"}
    guard.check("10.0.0.2", "Bearer s3cret-token")  # another address is not affected
    clock.now += 60.0
    guard.check("10.0.0.1", "Bearer s3cret-token")  # the window has passed
    with pytest.raises(AdminUnauthorizedError):
        guard.check("10.0.0.1", None)


def test_the_failures_remembered_are_bounded() -> None:
    guard = AdminGuard(SecretStr("s3cret-token"), max_clients=100)
    for n in range(10_000):
        with pytest.raises(AdminForbiddenError):
            guard.check(f"10.{n // 256 // 256}.{n // 256 % 256}.{n % 256}", "Bearer guess")
    assert guard.tracked() == 100


def test_no_token_disables_admin() -> None:
    with pytest.raises(AdminDisabledError):
        AdminGuard(None).check("10.0.0.1", "Bearer anything")
