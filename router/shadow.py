"""Shadow traffic: a candidate model answers real requests after the live answer is sent; nobody sees its answers.

    shadow = ShadowVariant(name="model_c", url="http://model_c:8000", fraction=0.2)
    is_shadowed(shadow, "42")        # the same answer for user 42 on every replica and after every restart
    pool = ShadowPool(backend_call(client), store.record_shadow_call)
    await pool.configure([shadow])   # start-up and every reload: adds, updates and closes dispatchers
    jobs = pool.jobs_for(request_id=..., phase=..., user_id="42", k=10, variant="model_a")
    ... await send(last body message) ...
    pool.submit(jobs)                # after the live body is sent; never blocks, never raises
    await pool.aclose(grace=1.0)     # before the backend client and the store close

The off-path guarantee (docs/shadow.md): each shadow variant has its own `ShadowDispatcher` with at most
`concurrency` calls in flight and `queue_size` waiting, so a hung shadow holds `concurrency` coroutines and
`queue_size` small jobs, no more, and cannot starve another shadow. `submit` appends to a deque or creates one
task; when both are full the job is dropped and counted. A shadow call that fails is counted by its error kind
(router.proxy's `BackendError.kind`: timeout, unavailable, bad_response; `internal` for a bug in the call).

Membership is per user: the user's GrowthBook point under the salt `shadow/<name>/` (not the experiment's salt)
below `fraction`. Changing a fraction or a URL moves nobody between variants, so it never starts a phase.
`ShadowVariant` and the name checks live in router.config (the experiment file's `shadow:` field).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from router.config import ShadowVariant, Variant, check_shadow_names, shadow_salt
from router.errors import BackendError
from router.proxy import BackendClient
from router.strategies import unit_point

log = logging.getLogger(__name__)

#: Calls one shadow variant may have in flight: enough for fraction 1.0 at a few thousand requests a second
#: with shadow latencies of a few milliseconds (Little's law: 2000/s x 4 ms = 8).
DEFAULT_CONCURRENCY = 16

#: Jobs one shadow variant may have waiting for a free slot (a burst of about 0.1 s at 2000 requests a second).
DEFAULT_QUEUE_SIZE = 256

#: Seconds one shadow call may take before the dispatcher gives up on it: a backstop above the backend
#: client's own timeouts (at most pool + connect + read), for a call that ignores them.
DEFAULT_CALL_TIMEOUT = 30.0

#: Seconds `aclose` waits for cancelled calls to unwind before leaving them behind.
CANCEL_GRACE = 1.0

#: The error kind of a shadow call that raised something other than a BackendError (a bug, not the backend).
INTERNAL_ERROR = "internal"

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


_SHADOW_LIST = TypeAdapter(tuple[ShadowVariant, ...])


def is_shadowed(shadow: ShadowVariant, user_id: str) -> bool:
    """Whether `user_id`'s requests are copied to `shadow`: their point under the shadow's salt < fraction.

    The point is `router.strategies.unit_point` (GrowthBook v2), so membership is sticky per user, agrees
    across replicas, and is independent of the A/B split (a different salt).
    """
    return unit_point(shadow.salt, user_id) < shadow.fraction


def parse_shadows(raw: object, variant_names: Collection[str] = ()) -> tuple[ShadowVariant, ...]:
    """The config's `shadow:` list validated: each entry, distinct names, no name shared with a variant.

    `raw` None means no shadows. Raises pydantic's ValidationError for a bad entry and ValueError for a
    clash, each naming the shadow (ExperimentConfig runs the same checks on its `shadow` field).
    """
    if raw is None:
        return ()
    shadows = _SHADOW_LIST.validate_python(raw)
    check_shadow_names(shadows, variant_names)
    return shadows


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One shadow call to make: the live request it copies (by the live exposure's request id) and where to."""

    shadow: ShadowVariant
    request_id: str  # the live exposure's request id
    phase: int
    user_id: str
    k: int
    variant: str  # the live variant that served the request


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """A finished shadow call, as the recorder receives it (one store row)."""

    job: ShadowJob
    ts: float  # Unix seconds when the call started
    items: tuple[int, ...]  # the shadow's items, best first; () on error
    latency_ms: float  # the call alone
    wait_ms: float  # from submit to the start of the call (time in the queue)
    status: int  # 200, or the BackendError's status (502/503/504); 504 for the backstop, 500 for internal
    error: str | None  # None, or the error kind


#: Performs one shadow call and returns the shadow's items; raises a BackendError subclass on failure.
ShadowCall = Callable[[ShadowJob], Awaitable[Sequence[int]]]

#: Receives every finished call (success or failure); must not block (e.g. a store's queue put).
ResultSink = Callable[[ShadowResult], None]


def backend_call(client: BackendClient) -> ShadowCall:
    """The ShadowCall over the router's one backend client: `GET {shadow.url}/recommend/{user}?k={k}`."""

    variants: dict[ShadowVariant, Variant] = {}  # as_variant validates a URL: do it once per shadow config

    async def call(job: ShadowJob) -> Sequence[int]:
        variant = variants.get(job.shadow)
        if variant is None:
            if len(variants) >= 64:  # reloads that keep changing a URL must not grow this without bound
                variants.clear()
            variant = variants[job.shadow] = job.shadow.as_variant()
        recommendation = await client.recommend(variant, job.user_id, job.k)
        return recommendation.items

    return call


@dataclass(frozen=True)
class ShadowStats:
    """A dispatcher's counters. Always `submitted == completed + failed_total + dropped + abandoned + in_flight
    + queued`; `dropped` counts jobs refused by `submit` (queue full, or closed), `abandoned` jobs given up at
    `aclose` (queued, or in flight and cancelled)."""

    submitted: int
    completed: int
    failed: Mapping[str, int]  # by error kind
    dropped: int
    abandoned: int
    in_flight: int
    queued: int
    callback_errors: int  # results the sink raised on (the call itself is counted as usual)
    concurrency: int
    queue_size: int
    closed: bool

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass
class _Counters:
    submitted: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    abandoned: int = 0
    in_flight: int = 0
    callback_errors: int = 0


class ShadowDispatcher:
    """A bounded, off-path runner of one shadow's calls: `concurrency` in flight, `queue_size` waiting.

    `submit` is synchronous and O(1): it starts a task if a slot is free, else queues the job if there is
    room, else drops it. A task that finishes a call takes the next queued job, so there are never more than
    `concurrency` tasks and never an idle one. Memory is bounded by `concurrency` calls plus `queue_size`
    jobs whatever the backend does. Call `submit` from the event loop's thread (inside a running loop).
    """

    def __init__(
        self,
        call: ShadowCall,
        on_result: ResultSink,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be 0 or more, got {queue_size}")
        if call_timeout is not None and not call_timeout > 0:
            raise ValueError(f"call_timeout must be positive or None, got {call_timeout}")
        self._call = call
        self._on_result = on_result
        self.concurrency = concurrency
        self.queue_size = queue_size
        self._call_timeout = call_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self._queue: deque[tuple[ShadowJob, float]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = _Counters()
        self._closed = False  # submit refuses new jobs
        self._final = False  # aclose gave up: late results are discarded, counters are frozen
        self._last_sink_log = -1e9

    def submit(self, job: ShadowJob) -> bool:
        """Queue `job` for a shadow call; True if accepted, False if dropped (counted). Never blocks or raises."""
        counts = self._counts
        counts.submitted += 1
        if self._closed:
            counts.dropped += 1
            return False
        now = self._clock()
        if counts.in_flight < self.concurrency:
            counts.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._work(job, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        if len(self._queue) < self.queue_size:
            self._queue.append((job, now))
            return True
        counts.dropped += 1
        return False

    def stats(self) -> ShadowStats:
        counts = self._counts
        return ShadowStats(
            submitted=counts.submitted,
            completed=counts.completed,
            failed=dict(counts.failed),
            dropped=counts.dropped,
            abandoned=counts.abandoned,
            in_flight=counts.in_flight,
            queued=len(self._queue),
            callback_errors=counts.callback_errors,
            concurrency=self.concurrency,
            queue_size=self.queue_size,
            closed=self._closed,
        )

    async def aclose(self, grace: float = 1.0) -> ShadowStats:
        """Refuse new jobs, let queued and running calls finish for `grace` seconds, then abandon the rest.

        Abandoned jobs (still queued, or in flight and cancelled) are counted, not passed to the sink: the
        store may be closing. Returns the final counters.
        """
        self._closed = True
        if self._final:
            return self.stats()
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        counts = self._counts
        counts.abandoned += counts.in_flight + len(self._queue)
        counts.in_flight = 0
        self._queue.clear()
        self._final = True
        for task in pending:
            task.cancel()
        if pending:
            # A call that swallows cancellation is left behind; its late result is discarded (_final).
            await asyncio.wait(pending, timeout=CANCEL_GRACE)
        return self.stats()

    async def _work(self, job: ShadowJob, submitted: float) -> None:
        while True:
            await self._run(job, submitted)
            if self._final:
                return
            if not self._queue:
                self._counts.in_flight -= 1  # no await between the check and here: submit sees a free slot
                return
            job, submitted = self._queue.popleft()

    async def _run(self, job: ShadowJob, submitted: float) -> None:
        ts = self._wall_clock()
        started = self._clock()
        items: tuple[int, ...] = ()
        status, error = 200, None
        try:
            async with asyncio.timeout(self._call_timeout):
                items = tuple(await self._call(job))
        except BackendError as exc:
            status, error = exc.status_code, exc.kind
        except TimeoutError:  # the backstop fired; the backend client's own timeouts raise BackendTimeoutError
            status, error = 504, "timeout"
        except Exception:  # the outermost handler of a background task: a bug must not stop the worker
            log.exception("shadow call raised an unexpected error", extra={"shadow": job.shadow.name})
            status, error = 500, INTERNAL_ERROR
        finished = self._clock()
        if self._final:
            return
        counts = self._counts
        if error is None:
            counts.completed += 1
        else:
            counts.failed[error] = counts.failed.get(error, 0) + 1
        result = ShadowResult(
            job, ts, items, (finished - started) * 1000.0, (started - submitted) * 1000.0, status, error
        )
        try:
            self._on_result(result)
        except Exception:  # the sink is the recorder's code; count its failures, keep serving
            counts.callback_errors += 1
            if finished - self._last_sink_log >= 1.0:  # at most one log line a second
                self._last_sink_log = finished
                log.exception("recording a shadow result failed", extra={"shadow": job.shadow.name})


class ShadowPool:
    """One `ShadowDispatcher` per shadow variant, kept in step with the config by `configure`.

    A reload that keeps a shadow keeps its dispatcher and counters (new jobs carry the new URL and
    fraction); one that removes a shadow closes its dispatcher (in-flight calls get `close_grace`).
    """

    def __init__(
        self,
        call: ShadowCall,
        on_result: ResultSink,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        self._call = call
        self._on_result = on_result
        self._options: dict[str, Any] = {
            "concurrency": concurrency,
            "queue_size": queue_size,
            "call_timeout": call_timeout,
        }
        self._shadows: tuple[ShadowVariant, ...] = ()
        self._dispatchers: dict[str, ShadowDispatcher] = {}

    @property
    def shadows(self) -> tuple[ShadowVariant, ...]:
        return self._shadows

    async def configure(self, shadows: Sequence[ShadowVariant], *, close_grace: float = 1.0) -> dict[str, ShadowStats]:
        """Use `shadows` from now on: new ones get a dispatcher, removed ones are closed (their final counters)."""
        check_shadow_names(shadows, ())
        wanted = {s.name for s in shadows}
        removed = [name for name in self._dispatchers if name not in wanted]
        for shadow in shadows:
            if shadow.name not in self._dispatchers:
                self._dispatchers[shadow.name] = ShadowDispatcher(self._call, self._on_result, **self._options)
        self._shadows = tuple(shadows)  # before closing: no new job names a removed shadow
        closing = [self._dispatchers.pop(name) for name in removed]
        finals = await asyncio.gather(*(dispatcher.aclose(close_grace) for dispatcher in closing))
        return dict(zip(removed, finals, strict=True))

    def jobs_for(self, *, request_id: str, phase: int, user_id: str, k: int, variant: str) -> tuple[ShadowJob, ...]:
        """The shadow calls a served live request gets: one per shadow whose fraction holds the user."""
        return tuple(
            ShadowJob(shadow, request_id, phase, user_id, k, variant)
            for shadow in self._shadows
            if is_shadowed(shadow, user_id)
        )

    def submit(self, jobs: Iterable[ShadowJob]) -> int:
        """Submit each job to its shadow's dispatcher; the number accepted. Never blocks or raises."""
        accepted = 0
        for job in jobs:
            dispatcher = self._dispatchers.get(job.shadow.name)
            if dispatcher is not None and dispatcher.submit(job):
                accepted += 1
        return accepted

    async def submit_in_background(self, jobs: Iterable[ShadowJob]) -> int:
        """`submit` as a coroutine, for starlette's `BackgroundTask` (which runs plain functions in a thread)."""
        return self.submit(jobs)

    def stats(self) -> dict[str, ShadowStats]:
        """The current shadows' counters by name (a removed shadow's last counters are what `configure` returned)."""
        return {name: dispatcher.stats() for name, dispatcher in self._dispatchers.items()}

    async def aclose(self, grace: float = 1.0) -> dict[str, ShadowStats]:
        """Close every dispatcher (concurrently, each within `grace` seconds); their final counters by name."""
        names = list(self._dispatchers)
        finals = await asyncio.gather(*(self._dispatchers[name].aclose(grace) for name in names))
        self._dispatchers.clear()
        self._shadows = ()
        return dict(zip(names, finals, strict=True))


def after_response(send: Send, then: Callable[[], object]) -> Send:
    """Wrap an ASGI `send` so that `then()` runs once, right after the last body message has been sent.

    uvicorn's `send` returns once the bytes are handed to the transport, so the client has its answer (or
    the kernel has it) before `then` starts a shadow call:

        async def _serve(self, scope, send, user_id, k):           # router.fastpath, sketched
            answer = await service.recommend(user_id, k, forced)
            send = after_response(send, lambda: pool.submit(answer.shadow_jobs))
            await send({"type": "http.response.start", ...})
            await send({"type": "http.response.body", "body": answer.body})   # then() runs here, after it
    """
    fired = False

    async def send_then(message: Message) -> None:
        nonlocal fired
        await send(message)
        if not fired and message["type"] == "http.response.body" and not message.get("more_body", False):
            fired = True
            then()

    return send_then


__all__ = [
    "INTERNAL_ERROR",
    "ShadowCall",
    "ShadowDispatcher",
    "ShadowJob",
    "ShadowPool",
    "ShadowResult",
    "ShadowStats",
    "ShadowVariant",
    "after_response",
    "backend_call",
    "check_shadow_names",
    "is_shadowed",
    "parse_shadows",
    "shadow_salt",
]
