"""A service's signals, handled from its first instruction to its last: SIGHUP is never fatal, a stop is graceful.

    from recsys.signals import ProcessSignals       # stdlib only: import it before anything heavy
    signals = ProcessSignals.install("router")      # from now on no SIGHUP, SIGTERM or SIGINT kills the process
    ...                                             # imports, config; a stop asked meanwhile: signals.stop_requested
    server = signals.server(uvicorn.Config(app))    # SIGTERM/SIGINT now stop it gracefully (a second one: ignored)
    signals.on_hup(reload, loop)                    # while serving: SIGHUP runs `reload` on the event loop
    signals.on_hup(None, "stopping")                # from here on SIGHUP is ignored again (and logged)
    server.run()

Why not uvicorn's own handling: uvicorn installs its SIGTERM/SIGINT handlers only while it serves and restores
the previous (default) ones for the rest, and asyncio's `remove_signal_handler` puts SIGHUP back to its default,
which terminates the process. A SIGHUP before start-up finished or during the final drain of the outcome store
then killed the router and lost what was queued. Here the handlers are installed once, at the top of the entry
point, and never removed; uvicorn's server is told to leave them alone (`capture_signals` does nothing), and
a second stop signal does not force an exit (the drain is bounded by itself: see docs/reliability.md).

A Python signal handler runs between two bytecodes of the main thread, which may be in the middle of writing a
log line; so the handler itself only records what happened, and a small thread writes the log lines.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

#: The signals a service handles: SIGHUP (reload, or ignored), SIGTERM and SIGINT (a graceful stop).
HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class _Loop(Protocol):
    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> Any: ...


class ProcessSignals:
    """The process's one set of handlers for SIGHUP, SIGTERM and SIGINT (see the module docstring)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.received: collections.Counter[str] = collections.Counter()  # by signal name
        self.ignored: collections.Counter[str] = collections.Counter()
        self.stop_requested: int | None = None  # the first stop signal, if any
        self._server: Any = None
        self._hup: tuple[Callable[[], object], _Loop] | None = None
        self._hup_state = "starting"
        self._notes: collections.deque[str] = collections.deque(maxlen=1000)  # bounded: a storm drops notes only
        self._wake = threading.Event()
        self._logger = threading.Thread(target=self._log_notes, name="signal-log", daemon=True)

    @classmethod
    def install(cls, service: str) -> ProcessSignals:
        """Handle SIGHUP, SIGTERM and SIGINT from now on, until the process ends (main thread only)."""
        signals = cls(service)
        signals._logger.start()
        for signum in HANDLED:
            signal.signal(signum, signals._handle)
        return signals

    def server(self, config: uvicorn.Config) -> uvicorn.Server:
        """A uvicorn server that a SIGTERM or SIGINT stops gracefully and that leaves these handlers installed."""
        import uvicorn  # here, not at the top: this module is imported before anything heavy

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # ours stay installed: see the module docstring
                yield

        server = Server(config)
        self._server = server
        if self.stop_requested is not None:  # asked to stop before the server existed: it stops once started
            server.should_exit = True
        return server

    def on_hup(self, callback: Callable[[], object] | None, loop: _Loop | None = None, state: str = "") -> None:
        """While serving, SIGHUP runs `callback` on `loop` (thread-safe); `None` ignores SIGHUP, logged as `state`."""
        if callback is None:
            self._hup, self._hup_state = None, state or "not serving"
        else:
            assert loop is not None, "a SIGHUP callback needs the event loop it runs on"
            self._hup = (callback, loop)
            if self.stop_requested is not None:  # a stop came first (checked after the assignment: no race)
                self._hup = None

    def release(self) -> None:
        """The work is done (the server has stopped): ignore the signals until the process has exited.

        Python puts its handlers back to the default while it shuts down, and the default SIGHUP terminates;
        an ignored signal stays ignored.
        """
        self._hup, self._hup_state = None, "exiting"
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_IGN)

    # -- the handler (the main thread, between two bytecodes) ------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received[name] += 1
        if signum == signal.SIGHUP:
            hup = self._hup
            if hup is not None:
                callback, loop = hup
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to reload
                    loop.call_soon_threadsafe(callback)
                    return
            self._ignore(name, self._hup_state if hup is None else "the event loop is closed")
            return
        if self.stop_requested is not None:
            self._ignore(name, "already stopping (the outcome store is being written; SIGKILL forces an exit)")
            return
        self.stop_requested = signum
        self._hup, self._hup_state = None, "stopping"
        if self._server is not None:
            self._server.should_exit = True
        self._note(f"{name}: stopping gracefully")

    def _ignore(self, name: str, why: str) -> None:
        self.ignored[name] += 1
        self._note(f"{name} ignored: {why} ({self.ignored[name]} ignored so far)")

    def _note(self, text: str) -> None:
        self._notes.append(text)
        self._wake.set()

    def _log_notes(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._notes:
                log.warning(self._notes.popleft())
