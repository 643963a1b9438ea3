"""Start the project's services as child processes and know when they are really serving.

Used by `abtest up`, the benchmark and the tests, so all three start services the same way.

    proc = start_service(["python", "-m", "model_a", "--port", "8001"], log=sys.stderr)
    wait_healthy("http://127.0.0.1:8001", proc, timeout=60)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO

import httpx


class ServiceError(RuntimeError):
    """A service exited or did not become healthy in time."""


#: Runs before the service's own program, in the child: ask Linux to SIGTERM this process when the thread that
#: started it dies (however it dies, SIGKILL included), then exec the service in place (same pid; the request
#: survives exec). If that parent is already gone, exit instead of running unsupervised.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    sys.exit("the process that started this service is gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def can_die_with_parent() -> bool:
    """Whether `start_service(..., die_with_parent=True)` is backed by the kernel here (Linux only)."""
    return sys.platform.startswith("linux")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def start_service(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: IO[str] | int | None = None,
    cwd: str | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[str]:
    """Start a service in its own process group, so stopping it stops everything it started.

    `die_with_parent=True` (Linux): the kernel SIGTERMs the service when the calling *thread* ends, even if
    this process is SIGKILLed or crashes, so nothing is left running on its port (PR_SET_PDEATHSIG, set in
    the child before it execs the service; the pid stays the service's). Call it from a thread that lives as
    long as the service should (the main thread). Elsewhere the flag does nothing: stop the service yourself.
    """
    merged = {**os.environ, **(env or {})}
    command = list(argv)
    if die_with_parent and can_die_with_parent():
        command = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
    return subprocess.Popen(  # noqa: S603 - argv is built by this project, never from user input
        command,
        env=merged,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        text=True,
        start_new_session=True,
    )


def wait_healthy(
    base_url: str, proc: subprocess.Popen[str] | None = None, *, timeout: float = 60.0, path: str = "/health"
) -> None:
    """Poll `GET base_url + path` until it answers 200; fail early if the process dies.

    Raises ServiceError naming the URL, the last error and the exit code.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(f"{base_url}: process exited with code {proc.returncode} before it was healthy")
            try:
                response = client.get(base_url + path)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)  # a readiness poll with a deadline, not a synchronisation sleep
    raise ServiceError(f"{base_url}{path} not healthy after {timeout:.0f}s ({last_error})")


#: Exit codes of a service that stopped cleanly on SIGTERM: uvicorn finishes its shutdown, then
#: re-raises the signal, so a clean stop usually shows as -SIGTERM.
CLEAN_EXIT_CODES = (0, -signal.SIGTERM)


def stop_service(proc: subprocess.Popen[str], *, timeout: float = 15.0) -> int:
    """SIGTERM the service's process group, wait, then SIGKILL if it has not stopped. Returns the exit code.

    A code in CLEAN_EXIT_CODES means it shut down on its own; -SIGKILL means it had to be killed.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited between poll() and now
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
