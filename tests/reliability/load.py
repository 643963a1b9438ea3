"""A load client that remembers every request it sent and every answer it got, to check the store against.

    with Load(router.url, users=USERS, concurrency=8, clicks=1.0) as load:
        load.wait_for(lambda t: t.answered >= 200, what="warm-up")
        ...                                  # break something while the load runs
    load.tally.answered, load.tally.transport_errors, load.tally.acked_feedback

It runs in its own thread (an asyncio loop with one aiohttp session and `concurrency` workers), so the test's
thread is free to kill, stop and restart services meanwhile. Workers take user ids round-robin from `users`.
A share `clicks` of the 200 answers (all of them by default) is followed by a click on the list's first item
(POST /feedback); which ones is deterministic (every n-th).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp


@dataclass(frozen=True, slots=True)
class Answer:
    """One /recommend request that got an HTTP answer."""

    user: str
    status: int
    variant: str | None  # X-Variant: who served (or failed)
    request_id: str | None  # X-Request-ID
    started: float  # time.monotonic() when sent
    seconds: float  # until the whole answer was read
    item: int | None  # the first item of a 200 answer


@dataclass
class Tally:
    """Everything the client saw. Lists only grow; read them from any thread."""

    sent: int = 0
    answers: list[Answer] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    feedback_sent: int = 0
    acked_feedback: list[tuple[str, int]] = field(default_factory=list)  # (request_id, item) answered 202
    acked_feedback_at: list[float] = field(default_factory=list)  # time.monotonic() of each 202, same order
    feedback_refused: Counter[int] = field(default_factory=Counter)
    feedback_errors: Counter[str] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        return len(self.answers)

    def statuses(self) -> Counter[tuple[str | None, int]]:
        """Answers by (variant, status)."""
        return Counter((a.variant, a.status) for a in list(self.answers))

    def request_ids(self) -> list[str]:
        return [a.request_id for a in list(self.answers) if a.request_id is not None]


class Load:
    """Sends GET /recommend (and clicks) from `concurrency` workers until stopped, `requests` or `seconds` is hit."""

    def __init__(
        self,
        url: str,
        *,
        users: Sequence[str],
        concurrency: int = 8,
        clicks: float = 0.0,
        k: int = 10,
        requests: int | None = None,
        seconds: float | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.url = url
        self.users = list(users)
        self.concurrency = concurrency
        self.clicks = clicks
        self.k = k
        self.requests = requests
        self.seconds = seconds
        self.timeout = timeout
        self.tally = Tally()
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-client", daemon=True)
        self._failure: BaseException | None = None

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Tally:
        """Stop sending; wait for requests in flight to finish. Re-raises a crash of the client itself."""
        self._stop.set()
        self._thread.join(self.timeout + 30)
        assert not self._thread.is_alive(), "the load client did not stop"
        if self._failure is not None:
            raise self._failure
        return self.tally

    def join(self) -> Tally:
        """Wait until the load stops by itself (`requests` or `seconds`)."""
        self._thread.join()
        return self.stop()

    def wait_for(self, condition: Callable[[Tally], bool], *, timeout: float = 30.0, what: str = "condition") -> None:
        """Poll the tally until `condition` holds; fail after `timeout` s (or if the client died)."""
        deadline = time.monotonic() + timeout
        while not condition(self.tally):
            if not self._thread.is_alive():
                raise AssertionError(f"load client stopped before {what}: {self._failure!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({self.summary()})")
            time.sleep(0.02)  # a poll with a deadline, not a synchronisation sleep

    def summary(self) -> str:
        tally = self.tally
        return (
            f"sent {tally.sent}, answered {tally.answered} {dict(tally.statuses())}, "
            f"transport errors {dict(tally.transport_errors)}, feedback sent {tally.feedback_sent} "
            f"acked {len(tally.acked_feedback)} refused {dict(tally.feedback_refused)}"
        )

    # -- the client's own thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()/wait_for() in the test's thread
            self._failure = exc

    async def _main(self) -> None:
        started = time.monotonic()
        deadline = started + self.seconds if self.seconds is not None else float("inf")
        numbers = itertools.count()
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(self.url, connector=connector, timeout=timeout) as session:

            async def worker() -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    number = next(numbers)
                    if self.requests is not None and number >= self.requests:
                        return
                    click = int((number + 1) * self.clicks) > int(number * self.clicks)
                    await self._visit(session, self.users[number % len(self.users)], click)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        self.elapsed = time.monotonic() - started

    async def _visit(self, session: aiohttp.ClientSession, user: str, click: bool) -> None:
        tally = self.tally
        tally.sent += 1
        sent = time.monotonic()
        try:
            async with session.get(f"/recommend/{user}", params={"k": str(self.k)}) as response:
                body = await response.json(content_type=None) if response.status == 200 else await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.transport_errors[type(exc).__name__] += 1
            return
        item = body["items"][0] if status == 200 and isinstance(body, dict) and body.get("items") else None
        request_id = headers.get("X-Request-ID")
        tally.answers.append(
            Answer(user, status, headers.get("X-Variant"), request_id, sent, time.monotonic() - sent, item)
        )
        if not click or item is None or request_id is None:
            return
        tally.feedback_sent += 1
        event = {"request_id": request_id, "user_id": user, "item_id": item, "event": "click"}
        try:
            async with session.post("/feedback", json=event) as response:
                await response.read()
                accepted = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.feedback_errors[type(exc).__name__] += 1
            return
        if accepted == 202:
            tally.acked_feedback.append((request_id, item))
            tally.acked_feedback_at.append(time.monotonic())
        else:
            tally.feedback_refused[accepted] += 1
