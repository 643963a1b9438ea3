"""Guardrails that act: a watcher that judges the live phase's guardrails every few seconds and stops harm.

    watcher = GuardrailWatcher(store, current, service.stop_variant, metrics, interval=5.0, timeout=30.0)
    watcher.start()                     # a task of the running event loop
    await watcher.check_once()          # one round (tests)
    await watcher.stop()

Each round reads the phase's per-(user, variant) totals from a store snapshot and judges every guardrail of
every treatment (router.report.checks, the same code the report shows) in a worker thread, never on the event
loop. Checking this often is valid because guardrails are judged on the sequential analysis only: its
confidence sequence holds at every look at once.

- **stop** (a guardrail harmful with ``action: stop``): the service moves the variant's weight to the control
  as a new phase, recorded in the phase row (``stopped``: which guardrail, when, on which phase's data, the
  numbers), logged, counted, shown in /config, /metrics and the report, without a restart. Only the stopped
  variant's users move (its bucket range is served by the control).
- **alert**: logged (once each time it becomes harmful) and counted, nothing else.

Bounded: one round at a time; a round that takes longer than ``timeout`` is logged and counted, and no new
round starts until it ends; after each round the watcher waits long enough that rounds use at most
``MAX_DUTY`` of the wall clock (a big store is checked less often rather than taking the router's CPU).
The report's libraries are imported inside the worker thread on the first round, so a router without
guardrails never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from router.config import ExperimentConfig
from router.errors import NoDataError, ReportError, StoreError
from router.metrics import Metrics
from router.store.reader import PhaseSnapshot

if TYPE_CHECKING:
    from router.report.document import GuardrailCheck

log = logging.getLogger(__name__)

MAX_DUTY = 0.1
"""At most this share of the wall clock goes to guardrail rounds."""

STATE_CODES = {"healthy": -1, "inconclusive": 0, "harmful": 1}


class SnapshotSource(Protocol):
    def snapshot(self) -> AbstractContextManager[PhaseSnapshot]: ...


@dataclass(frozen=True)
class Harm:
    """A treatment's guardrail found harmful on one phase's data: what a stop records."""

    variant: str
    guardrail: str
    action: str
    phase: int
    detail: str
    at: float

    def record(self, moved_to: str) -> dict[str, Any]:
        """The JSON-able record the new phase stores under `stopped` (read back by the report)."""
        return {
            "guardrail": self.guardrail,
            "at": self.at,
            "phase": self.phase,
            "moved_to": moved_to,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Round:
    """One round's result: every check by treatment, and the time it took."""

    phase: int
    checks: Mapping[str, tuple[GuardrailCheck, ...]]
    details: Mapping[tuple[str, str], str]
    seconds: float


def judge_phase(store: SnapshotSource, phase: int) -> Round:
    """Read the phase's outcomes and judge its guardrails (blocking: run it in a worker thread)."""
    from router.report.checks import check_guardrails, describe  # loaded on first use: see the module docstring
    from router.report.load import read_outcomes

    started = time.perf_counter()
    with store.snapshot() as snapshot:
        outcomes = read_outcomes(snapshot, phase)
    checks = check_guardrails(outcomes)
    details = {(name, c.metric): describe(c) for name, found in checks.items() for c in found}
    return Round(phase, checks, details, time.perf_counter() - started)


StopAction = Callable[[Harm], Awaitable[object]]


class GuardrailWatcher:
    """Judges the live phase's guardrails every `interval` seconds (see the module docstring)."""

    def __init__(
        self,
        store: SnapshotSource,
        current: Callable[[], tuple[ExperimentConfig, int]],
        stop: StopAction,
        metrics: Metrics,
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._store = store
        self._current = current
        self._stop_variant = stop
        self._metrics = metrics
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[Round] | None = None
        self._harmful: set[tuple[int, str, str]] = set()  # (phase, variant, guardrail) already reported

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="guardrail-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            seconds = await self.check_once()
            # Rounds take at most MAX_DUTY of the time: a slow round pushes the next one out.
            await asyncio.sleep(max(self._interval, seconds * (1 / MAX_DUTY - 1)))

    async def check_once(self) -> float:
        """One round, if the live config has guardrails; the seconds it took (0 when skipped).

        Skipped under an adaptive strategy: its arms' comparisons assume fixed weights, which a bandit does not
        keep (docs/bandits.md); errors score no reward there, so the bandit itself moves traffic off a failing
        variant.
        """
        config, phase = self._current()
        if not config.guardrails or config.adaptive:
            return 0.0
        if self._running is not None and not self._running.done():
            self._metrics.guardrail_check("busy")  # the previous round overran its timeout and still runs
            return 0.0
        self._running = asyncio.ensure_future(asyncio.to_thread(judge_phase, self._store, phase))
        done, _ = await asyncio.wait({self._running}, timeout=self._timeout)
        if not done:
            self._metrics.guardrail_check("timeout")
            log.warning("guardrail check overran its timeout", extra={"phase": phase, "timeout": self._timeout})
            return self._timeout
        try:
            result = self._running.result()
        except NoDataError:
            self._metrics.guardrail_check("no_data")
            return 0.0
        except (StoreError, ReportError) as exc:
            self._metrics.guardrail_check("failed")
            log.warning("guardrail check failed", extra={"phase": phase, "error": str(exc)})
            return 0.0
        self._metrics.guardrail_check("ok")
        await self._act(result)
        return result.seconds

    async def _act(self, result: Round) -> None:
        for variant, checks in result.checks.items():
            for check in checks:
                self._metrics.guardrail_state(variant, check.metric, STATE_CODES[check.state])
                key = (result.phase, variant, check.metric)
                if check.state != "harmful":
                    self._harmful.discard(key)
                    continue
                harm = Harm(
                    variant,
                    check.metric,
                    check.action,
                    result.phase,
                    result.details[(variant, check.metric)],
                    time.time(),
                )
                if check.action == "stop":
                    await self._stop_variant(harm)
                    break  # the variant is stopped: its other guardrails no longer matter in this phase
                if key not in self._harmful:
                    self._harmful.add(key)
                    self._metrics.guardrail_alert(variant, check.metric)
                    log.warning(
                        "guardrail harmful (alert)",
                        extra={
                            "variant": variant,
                            "guardrail": check.metric,
                            "phase": result.phase,
                            "detail": harm.detail,
                        },
                    )
