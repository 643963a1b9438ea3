"""`python -m router --workers N`: N router processes on one host, sharing the port and the outcome store.

    supervise(["--config", "exp.yaml"], workers=4, host="0.0.0.0", port=8080)   # returns the exit code

The supervisor reserves the port (a bound, not listening, SO_REUSEPORT socket, so port 0 picks one port for
all), then starts N children: `python -m router ... --worker I:DIR`. Each child binds its own SO_REUSEPORT
listening socket on that port and the kernel spreads new connections over them (no shared accept queue, no
thundering herd). The children are ordinary routers on one store: they agree on the phase and on the request
ids' secret through it (router/store/phases.py, router/request_ids.py), exactly like replicas on several hosts.

Signals: SIGTERM and SIGINT are passed on as SIGTERM (each child stops gracefully, draining its store queue),
SIGHUP as SIGHUP (each child reloads). A child that exits on its own with 2 or 3 (bad config, start-up
failed) stops them all with that code; one that crashes later is restarted (at most `MAX_RESTARTS` a minute).
Children die with the supervisor (PR_SET_PDEATHSIG), so a killed supervisor leaves no orphans serving.

Metrics: every child writes its exposition to DIR every second; GET /metrics on any child answers all of
them, each sample labelled `worker="I"` (`merge_expositions`), so a scrape through the shared port sees every
process. Sum over the label for the host's totals (`sum without (worker) (...)`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Crashed children restarted per minute before the supervisor gives up (exit code 1).
MAX_RESTARTS = 5

#: Seconds between a child's metric snapshots (how stale a sibling's numbers can be in a scrape).
METRICS_INTERVAL = 1.0

_START_FAILED = (2, 3)  # router/__main__.py's exit codes for a bad config and a failed start-up


@dataclass(frozen=True)
class Worker:
    """A child's identity: its index and the supervisor's shared folder (the `--worker I:DIR` argument)."""

    index: int
    folder: Path

    @classmethod
    def parse(cls, text: str) -> Worker:
        index, _, folder = text.partition(":")
        if not index.isdigit() or not folder:
            raise ValueError(f"--worker wants INDEX:FOLDER, got {text!r}")
        return cls(int(index), Path(folder))

    @property
    def metrics_file(self) -> Path:
        return self.folder / f"worker-{self.index}.prom"

    def write_metrics(self, exposition: bytes) -> None:
        """Publish this worker's exposition for its siblings (atomically: a reader never sees half a file)."""
        partial = self.folder / f".worker-{self.index}.prom.tmp"
        partial.write_bytes(exposition)
        os.replace(partial, self.metrics_file)

    def all_metrics(self, own: bytes) -> bytes:
        """Every worker's exposition merged, `own` fresh and the siblings' as last published."""
        texts = {str(self.index): own}
        for path in self.folder.glob("worker-*.prom"):
            name = path.stem.removeprefix("worker-")
            if name != str(self.index):
                with contextlib.suppress(FileNotFoundError):
                    texts[name] = path.read_bytes()
        return merge_expositions(texts)


def listening_socket(host: str, port: int) -> socket.socket:
    """A child's own SO_REUSEPORT listening socket on the shared port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def merge_expositions(texts: Mapping[str, bytes]) -> bytes:
    """Prometheus text expositions of several workers as one, each sample labelled with its worker.

    >>> text = b"# HELP up Serving.\\n# TYPE up gauge\\nup 1\\n"
    >>> print(merge_expositions({"0": text, "1": text}).decode())
    # HELP up Serving.
    # TYPE up gauge
    up{worker="0"} 1.0
    up{worker="1"} 1.0
    <BLANKLINE>
    """
    families: dict[str, Metric] = {}
    for worker in sorted(texts, key=lambda name: (len(name), name)):
        for family in text_string_to_metric_families(texts[worker].decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(tuple(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: tuple[Metric, ...]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def supervise(argv: Sequence[str], *, workers: int, host: str, port: int) -> int:
    """Run `workers` children of `python -m router argv` on one port until a signal stops them; the exit code."""
    reserved = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))  # never listens: it only holds the port, so port 0 means one port for all
    port = reserved.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="router-workers-"))
    stopping = False
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(handled, on_signal)

    def start(index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "router", *argv, "--host", host, "--port", str(port)]
        # Its own process group: a signal to the supervisor's group reaches a child once, through the supervisor.
        return subprocess.Popen(  # noqa: S603 - argv is this program's own, never user input
            [*command, "--worker", f"{index}:{folder}"], preexec_fn=_die_with_parent, process_group=0
        )

    children = {index: start(index) for index in range(workers)}
    log.info(
        "router workers started", extra={"workers": workers, "port": port, "pids": [c.pid for c in children.values()]}
    )
    restarts: list[float] = []
    code = 0
    try:
        while children:
            while received:
                signum = received.pop(0)
                if signum == signal.SIGHUP and not stopping:
                    log.info("SIGHUP: every worker reloads its config")
                    _send(children.values(), signal.SIGHUP)
                elif signum != signal.SIGHUP:
                    stopping = True
                    _send(children.values(), signal.SIGTERM)
            for index, child in list(children.items()):
                status = child.poll()
                if status is None:
                    continue
                del children[index]
                if stopping:
                    code = max(code, status if status > 0 else 0)
                    continue
                if status in _START_FAILED:
                    log.critical("a router worker could not start; stopping the others", extra={"worker": index})
                    stopping, code = True, status
                    _send(children.values(), signal.SIGTERM)
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60.0] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.critical("router workers keep crashing; stopping", extra={"worker": index, "status": status})
                    stopping, code = True, 1
                    _send(children.values(), signal.SIGTERM)
                    continue
                log.error("router worker exited; restarting it", extra={"worker": index, "status": status})
                children[index] = start(index)
            if children:
                time.sleep(0.1)  # the supervisor's own poll; it serves nothing
    finally:
        _send(children.values(), signal.SIGKILL)
        reserved.close()
        shutil.rmtree(folder, ignore_errors=True)
    return code


def _send(children: Iterable[subprocess.Popen[bytes]], signum: int) -> None:
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
