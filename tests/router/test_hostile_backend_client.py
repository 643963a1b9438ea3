"""Both backend clients against a backend that breaks HTTP framing or the model contract, over real sockets.

What is pinned, the same for aiohttp and httpx: a user is never handed a list the backend meant for someone
else (or the smuggled one), every refused answer is a BackendError (never an exception of the library), and a
connection that carried a refused answer is not reused, so the next user is served again.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from router.config import Timeouts, Variant
from router.errors import BackendError
from router.proxy import open_client
from tests.support.hostile_backend import (
    CONTRACT_MODES,
    FRAMING_MODES,
    SMUGGLED_ITEMS,
    HostileBackend,
    items_for,
)

Kind = Literal["aiohttp", "httpx"]
KINDS: list[Kind] = ["aiohttp", "httpx"]
TIMEOUTS = Timeouts(connect=0.5, read=0.5, pool=0.5)
USERS = [f"user-{i}" for i in range(6)]

#: The error kind each framing mode gives (the same for both clients, except where HTTP itself is ambiguous).
EXPECTED_KINDS = {
    "extra": {"bad_response"},
    "late_extra": {"bad_response"},
    "short_length": {"bad_response"},
    "long_length": {"timeout"},
    "length_and_chunked": {"bad_response"},
    # No status line and then EOF: aiohttp reads the body as a bad status line, h11 as "disconnected".
    "http09": {"bad_response", "unavailable"},
    "bad_status": {"bad_response"},
    "huge_header": {"bad_response"},
}


def ask_each(kind: Kind, backend: HostileBackend, k: int = 3) -> list[tuple[str, list[int] | str]]:
    """Ask for USERS one after another on one pooled client: (user, items served or the error kind)."""

    async def main() -> list[tuple[str, list[int] | str]]:
        client = open_client(kind, TIMEOUTS)
        target = Variant.model_validate({"name": "model_b", "url": backend.url, "weight": 1})
        answers: list[tuple[str, list[int] | str]] = []
        try:
            for user in USERS:
                try:
                    answers.append((user, (await client.recommend(target, user, k)).items))
                except BackendError as exc:
                    answers.append((user, exc.kind))
        finally:
            await client.aclose()
        return answers

    return asyncio.run(main())


@pytest.mark.parametrize("mode", FRAMING_MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_framing_never_crosses_users_answers(kind: Kind, mode: str) -> None:
    with HostileBackend(mode) as backend:
        answers = ask_each(kind, backend)
    for user, got in answers:
        assert got != SMUGGLED_ITEMS, f"{user} was served the smuggled list"
        if isinstance(got, list):
            assert got == items_for(user), f"{user} was served another user's list {got}"
        else:
            assert got in EXPECTED_KINDS[mode], (user, got)
    if mode in ("extra", "late_extra"):
        # The first answer is honest; a connection that then carried a smuggled answer is dropped, so honest
        # answers keep coming (at least every other one), instead of every later answer being off by one.
        served = [user for user, got in answers if isinstance(got, list)]
        assert answers[0][1] == items_for(USERS[0])
        assert len(served) >= len(USERS) // 2, answers


@pytest.mark.parametrize("mode", CONTRACT_MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_breaking_the_contract_is_a_bad_response(kind: Kind, mode: str) -> None:
    """More than k items, a repeated item, strings, booleans, floats, nested lists: all refused, never served."""
    with HostileBackend(mode) as backend:
        answers = ask_each(kind, backend)
    assert answers == [(user, "bad_response") for user in USERS]


@pytest.mark.parametrize("kind", KINDS)
def test_an_honest_backend_on_the_same_harness_is_served(kind: Kind) -> None:
    """The control: the harness itself answers correctly, so the refusals above are the client's checks."""
    with HostileBackend("honest") as backend:
        answers = ask_each(kind, backend)
    assert answers == [(user, items_for(user)) for user in USERS]
