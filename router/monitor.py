"""Background watch over the backends: health every few seconds, and each backend's /info once per phase.

The router does not wait for backends at start-up (they may come up later); the monitor keeps asking
`/info` until each variant has answered for the current phase, then stores it in `variant_info`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from router.config import ExperimentConfig
from router.errors import BackendError
from router.metrics import Metrics
from router.proxy import BackendClient
from router.store.records import VariantInfo

log = logging.getLogger(__name__)


class InfoRecorder(Protocol):
    """Where the monitor records each backend's /info (the outcome store)."""

    def record_variant_info(self, info: VariantInfo) -> bool:
        """Queue the info; False if it could not be queued (counted as lost by the store)."""


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the last health check of one variant's backend found."""

    status: Literal["unknown", "up", "down"]
    checked_at: float | None = None
    error: str | None = None
    model: str | None = None
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked_at": self.checked_at,
            "error": self.error,
            "model": self.model,
            "version": self.version,
        }


class BackendMonitor:
    """Polls every variant's /health and fetches /info once per (phase, variant)."""

    def __init__(
        self,
        client: Callable[[], BackendClient],
        current: Callable[[], tuple[ExperimentConfig, int]],
        store: InfoRecorder,
        metrics: Metrics,
        *,
        interval: float,
    ) -> None:
        self._client = client
        self._current = current
        self._store = store
        self._metrics = metrics
        self._interval = interval
        self._states: dict[str, BackendState] = {}
        self._info_done: set[tuple[int, str]] = set()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the polling loop as a task of the running event loop."""
        self._task = asyncio.create_task(self._run(), name="backend-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """Check now (after a reload) instead of at the next interval."""
        self._poke.set()

    def states(self) -> dict[str, BackendState]:
        """The latest state of each variant of the live config ('unknown' until first checked)."""
        config, _ = self._current()
        return {v.name: self._states.get(v.name, BackendState("unknown")) for v in config.variants}

    async def check_once(self) -> None:
        """One round: every variant's health, and /info where it is still missing for this phase."""
        config, phase = self._current()
        await asyncio.gather(*(self._check(variant_name, config, phase) for variant_name in _names(config)))

    async def _run(self) -> None:
        while True:
            await self.check_once()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives as the
            # poke completes (a reload just before stop), and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._poke.wait()
            self._poke.clear()

    async def _check(self, name: str, config: ExperimentConfig, phase: int) -> None:
        variant = config.variant(name)
        client = self._client()
        previous = self._states.get(name)
        try:
            health = await client.fetch_json(variant, "/health")
        except BackendError as exc:
            self._states[name] = BackendState("down", time.time(), exc.detail)
            self._metrics.backend_up(name, False)
            if previous is None or previous.status != "down":
                log.warning("backend down", extra={"variant": name, "url": variant.base_url, "error": exc.detail})
            return
        self._states[name] = BackendState(
            "up", time.time(), None, _text(health.get("model")), _text(health.get("version"))
        )
        self._metrics.backend_up(name, True)
        if previous is None or previous.status != "up":
            log.info("backend up", extra={"variant": name, "url": variant.base_url})
        if (phase, name) in self._info_done:
            return
        try:
            info = await client.fetch_json(variant, "/info")
        except BackendError as exc:
            log.warning("backend /info failed; will retry", extra={"variant": name, "error": exc.detail})
            return
        if self._store.record_variant_info(VariantInfo(phase=phase, variant=name, info=info, fetched_at=time.time())):
            self._info_done.add((phase, name))


def _names(config: ExperimentConfig) -> list[str]:
    return [v.name for v in config.variants]


def _text(value: object) -> str | None:
    return None if value is None else str(value)
