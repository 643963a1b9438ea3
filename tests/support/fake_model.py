"""A stand-in model server honouring the model contract (docs/models.md), with controllable faults.

    control = FakeModelControl()
    with serve_fake_model("model_b", control) as url:
        control.delay = 2.0          # every /recommend now takes 2 s
        control.status = 500         # ... or fails
        control.shift = 3            # recommend the list 3 places further along (another model's taste)
        control.fail_every = 20      # ... or fails every 20th /recommend (a 5 % error rate)
        control.seen                 # the /recommend paths it was asked for, in order
        control.arrived              # time.monotonic() when each /recommend arrived
        control.held.add("/recommend/7?k=3")   # that request waits until the path is discarded again

Items are a deterministic function of the user id (and the shift), so tests can predict them; the body carries
the model's name, so a test can tell which backend answered.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam

from recsys.contract import MAX_K, USER_ID_PATTERN
from tests.support.servers import serve

N_ITEMS = 1682  # MovieLens 100k's item count


@dataclass
class FakeModelControl:
    """Switches a test flips while the fake serves (plain attributes: safe to set from the test thread)."""

    delay: float = 0.0  # seconds before answering /recommend
    status: int = 200  # HTTP status of /recommend answers
    garbage: bool = False  # answer /recommend with a body that is not JSON
    healthy: bool = True  # /health answers 200 (else 503)
    shift: int = 0  # /recommend answers items_for(user_id, k, shift): k - shift items in common with shift 0
    fail_every: int = 0  # when > 0, every fail_every-th /recommend answers 500
    seen: list[str] = field(default_factory=list)  # "/recommend/{user_id}?k=N" for every call, in order
    headers: list[dict[str, str]] = field(default_factory=list)  # the request headers of every /recommend
    arrived: list[float] = field(default_factory=list)  # time.monotonic() at each /recommend's arrival
    held: set[str] = field(default_factory=set)  # "/recommend/{user_id}?k=N" paths that wait while listed here

    def reset(self) -> None:
        self.delay, self.status, self.garbage, self.healthy = 0.0, 200, False, True
        self.shift, self.fail_every = 0, 0
        self.seen.clear()
        self.headers.clear()
        self.arrived.clear()
        self.held.clear()


def items_for(user_id: str, k: int, shift: int = 0) -> list[int]:
    """The list the fake recommends to `user_id`: k distinct ids in 1..N_ITEMS, fixed per user.

    `shift` starts the same sequence `shift` places later, so two lists share all but `shift` items.
    """
    start = zlib.crc32(user_id.encode()) % N_ITEMS
    return [(start + 7 * (i + shift)) % N_ITEMS + 1 for i in range(k)]


def create_fake_model(name: str, control: FakeModelControl) -> FastAPI:
    """A FastAPI app answering /recommend, /health and /info like a real model server."""
    app = FastAPI(title=f"fake {name}")

    @app.get("/recommend/{user_id}")
    async def recommend(
        request: Request,
        user_id: Annotated[str, PathParam(pattern=USER_ID_PATTERN)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    ) -> Response:
        control.arrived.append(time.monotonic())
        control.seen.append(f"{request.url.path}?{request.url.query}")
        control.headers.append(dict(request.headers))
        if control.delay:
            await asyncio.sleep(control.delay)  # the fault being simulated, not synchronisation
        while f"{request.url.path}?{request.url.query}" in control.held:  # noqa: ASYNC110 - set by another thread
            await asyncio.sleep(0.01)  # held by the test until it releases the path (answers out of order)
        if control.garbage:
            return Response(b"<html>not json", media_type="text/html")
        if control.status != 200 or (control.fail_every and len(control.seen) % control.fail_every == 0):
            return Response(
                b'{"detail": "injected failure"}',
                status_code=control.status if control.status != 200 else 500,
                media_type="application/json",
            )
        items = items_for(user_id, k, control.shift)
        body: dict[str, Any] = {
            "user_id": user_id,
            "items": items,
            "scores": [round(1.0 / (i + 1), 4) for i in range(k)],
            "model": name,
            "version": "fake-1",
            "cold_start": False,
        }
        return Response(_dumps(body), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        if not control.healthy:
            return Response(b'{"detail": "not ready"}', status_code=503, media_type="application/json")
        return Response(_dumps({"status": "ok", "model": name, "version": "fake-1"}), media_type="application/json")

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "algorithm": f"fake-{name}",
            "version": "fake-1",
            "metrics": {"rmse": None, "precision_at_10": 0.1, "recall_at_10": 0.05, "hit_rate_at_10": 0.5},
        }

    return app


@contextmanager
def serve_fake_model(name: str, control: FakeModelControl | None = None) -> Iterator[str]:
    """Serve a fake model on a free loopback port; yield its base URL."""
    with serve(create_fake_model(name, control or FakeModelControl())) as url:
        yield url


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)
