"""Request ids (pure): unguessable, bound to their user, checked by any replica with the same secret."""

from __future__ import annotations

import re

from router.request_ids import REQUEST_ID_PATTERN, RequestIds


def test_ids_verify_for_their_user_only_and_under_the_same_secret() -> None:
    ids, replica = RequestIds(b"k" * 32), RequestIds(b"k" * 32)
    issued = ids.issue("alice")
    assert re.fullmatch(REQUEST_ID_PATTERN, issued)
    assert replica.verify(issued, "alice")  # another process with the same secret
    assert not replica.verify(issued, "alice2") and not replica.verify(issued, "bob")
    assert not RequestIds(b"x" * 32).verify(issued, "alice")  # another store's secret


def test_a_changed_digit_anywhere_fails_verification() -> None:
    ids = RequestIds(b"k" * 32)
    issued = ids.issue("42")
    for position in range(len(issued)):
        changed = issued[:position] + ("0" if issued[position] != "0" else "1") + issued[position + 1 :]
        assert not ids.verify(changed, "42")
    assert not ids.verify(issued.upper(), "42") and not ids.verify(issued[:-1], "42")


def test_ids_are_distinct_and_their_random_half_is_uniform() -> None:
    ids = RequestIds(b"k" * 32)
    issued = [ids.issue("u") for _ in range(20_000)]  # crosses the random pool's refills
    assert len(set(issued)) == len(issued)
    digits = "".join(rid[:32] for rid in issued)
    counts = [digits.count(d) for d in "0123456789abcdef"]
    expected = len(digits) / 16  # 40,000 per digit; sd ~194, so a 5-sd band
    assert all(abs(c - expected) < 5 * (expected * 15 / 16) ** 0.5 for c in counts), counts
