"""Request ids that cannot be guessed and that any replica can check without asking the others.

    ids = RequestIds(secret)                 # the same secret on every replica of one store
    request_id = ids.issue("42")             # 48 hex digits: 128 random bits, then a 64-bit tag
    ids.verify(request_id, "42")             # True: issued by a replica with this secret, for user 42
    ids.verify(request_id, "43")             # False: the same answer as for an id nobody issued

The tag is HMAC-SHA256(secret, random bits || user id), truncated to 64 bits. So a feedback event's id is
checked in memory, before any lookup: a forged or guessed id, or another user's, is refused without touching
the store, and a genuine id is worth waiting for while the replica that served it has not written it yet
(docs/router.md, "Several replicas"). The tag binds the user only: variant, phase and items live in the store,
where the exposure is found by its id.

The secret is `ROUTER_REQUEST_ID_SECRET` when set (every replica must get the same), else one generated with
the store and kept in its `meta` table (`OutcomeStore.shared_secret`), so every replica on one store agrees on it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

#: Request ids the router issues: 32 hex digits of random bits, then 16 of the tag.
REQUEST_ID_PATTERN = r"^[0-9a-f]{48}$"

#: The name of the store-held secret (`meta.key`).
SECRET_NAME = "request_id_secret"  # noqa: S105 - the name of a meta row, not a secret

_RANDOM_BYTES = 16
_TAG_BYTES = 8
_POOL_IDS = 256  # random bytes are drawn for this many ids at once: one getrandom() call, not one per request
_ID = re.compile(REQUEST_ID_PATTERN)


class RequestIds:
    """Issues and verifies signed request ids (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the request id key must have at least 16 bytes")
        self._key = key
        self._pool = b""

    def issue(self, user_id: str) -> str:
        """A new id for an exposure served to `user_id`."""
        if not self._pool:
            self._pool = os.urandom(_RANDOM_BYTES * _POOL_IDS)
        nonce, self._pool = self._pool[:_RANDOM_BYTES], self._pool[_RANDOM_BYTES:]
        return (nonce + self._tag(nonce, user_id)).hex()

    def verify(self, request_id: str, user_id: str) -> bool:
        """True if a replica with this secret issued `request_id` to `user_id` (constant time in the tag)."""
        if not _ID.match(request_id):
            return False
        raw = bytes.fromhex(request_id)
        nonce, tag = raw[:_RANDOM_BYTES], raw[_RANDOM_BYTES:]
        return hmac.compare_digest(tag, self._tag(nonce, user_id))

    def _tag(self, nonce: bytes, user_id: str) -> bytes:
        return hmac.digest(self._key, nonce + user_id.encode(), hashlib.sha256)[:_TAG_BYTES]


def new_secret() -> str:
    """A fresh secret for a store's meta table: 32 random bytes as hex."""
    return os.urandom(32).hex()
