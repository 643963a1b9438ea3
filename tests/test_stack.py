"""`abtest up` as a user runs it: a real process with three real children, and signals sent to it.

Whatever stops it - a stop signal, SIGKILL, a crash - no child may be left running on its port; SIGHUP is a
reload of the router, not the end of the stack; a bad config stops it before anything starts.
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from abtest.processes import free_port
from abtest.stack import DEFAULT_CONFIG, StackConfig, serve_forever
from recsys.training import MODEL_NAMES, train_and_save, trainer
from tests.router.conftest import wait_until

#: Small enough that both models train in about a second.
TINY = "synthetic:users=200,items=300,ratings=6000,seed=1"
BANNER = re.compile(r"stack up: router pid (\d+) on \S+; model_a pid (\d+) on \S+, model_b pid (\d+) on ")
START_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-models")
    for name in MODEL_NAMES:
        train_and_save(trainer(name), directory, data_spec=TINY, progress=False)
    return directory


@dataclass
class Up:
    """A running `abtest up` process, its children's pids (from its banner) and its output so far."""

    proc: subprocess.Popen[str]
    reader: threading.Thread
    pids: dict[str, int]
    ports: dict[str, int]
    lines: queue.Queue[str]
    url: str

    def output(self) -> str:
        return "".join(self.lines.queue)

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = next((str(line) for line in list(self.lines.queue) if pattern in line), None)
            if match:
                return match
            time.sleep(0.05)  # polling the relayed output, with a deadline
        raise AssertionError(f"no line with {pattern!r} after {timeout:.0f}s:\n{self.output()[-3000:]}")


def write_config(path: Path, **changes: Any) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text()) | changes
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stack_config(tmp_path: Path, models: Path, config: Path) -> StackConfig:
    return StackConfig(
        config=config,
        router_port=free_port(),
        model_ports={name: free_port() for name in MODEL_NAMES},
        results_dir=tmp_path / "results",
        models_dir=models,
        data_spec=TINY,
    )


def up_argv(config: StackConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "abtest.cli",
        "up",
        "--config",
        str(config.config),
        "--port",
        str(config.router_port),
        "--model-a-port",
        str(config.model_ports["model_a"]),
        "--model-b-port",
        str(config.model_ports["model_b"]),
        "--results-dir",
        str(config.results_dir),
        "--models-dir",
        str(config.models_dir),
        "--data",
        str(config.data_spec),
    ]


def ports_of(config: StackConfig) -> dict[str, int]:
    return {**config.model_ports, "router": config.router_port}


def gone(pid: int) -> bool:
    """The process has ended (a zombie has ended: only its exit status waits for a reaper)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def kill_leftovers(pids: list[int]) -> None:
    """Test hygiene only: never leave a process behind, even when an assertion failed."""
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_up(tmp_path: Path, tiny_models: Path) -> Iterator[Callable[[], Up]]:
    started: list[Up] = []

    def start() -> Up:
        config = stack_config(tmp_path, tiny_models, write_config(tmp_path / "experiment.yaml"))
        proc = subprocess.Popen(
            up_argv(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None

        def relay() -> None:
            for line in proc.stdout or ():
                lines.put(line)

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        up = Up(proc, reader, {}, ports_of(config), lines, config.router_url)
        started.append(up)
        match = BANNER.search(up.wait_for_line("stack up:", timeout=START_TIMEOUT))
        assert match, up.output()
        up.pids = dict(zip(("router", "model_a", "model_b"), map(int, match.groups()), strict=True))
        children = {child.pid for child in psutil.Process(proc.pid).children(recursive=True)}
        assert children == set(up.pids.values()), (children, up.pids)
        return up

    yield start
    for up in started:
        kill_leftovers([up.proc.pid, *up.pids.values()])
        up.proc.wait(60)
        up.reader.join(10)
        assert up.proc.stdout is not None
        up.proc.stdout.close()


def assert_nothing_left(up: Up, timeout: float = 90.0) -> None:  # a graceful stop is <= 10 s + the drain, loaded
    wait_until(lambda: all(gone(pid) for pid in up.pids.values()), timeout=timeout, what="every child to end")
    wait_until(lambda: all(port_free(port) for port in up.ports.values()), timeout=timeout, what="ports to be free")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGQUIT])  # SIGTERM: the end of the SIGHUP test
def test_stop_signal_stops_every_child_and_frees_the_ports(start_up: Callable[[], Up], stop: signal.Signals) -> None:
    up = start_up()
    os.kill(up.proc.pid, stop)
    assert up.proc.wait(60) == 0, up.output()[-3000:]
    assert all(gone(pid) for pid in up.pids.values())  # stopped and reaped before abtest up exited
    assert all(port_free(port) for port in up.ports.values())
    assert "stopped: {" in up.output()


@pytest.mark.slow
def test_sighup_reloads_the_router_and_the_stack_keeps_running(start_up: Callable[[], Up], tmp_path: Path) -> None:
    up = start_up()
    assert f"kill -HUP {up.pids['router']}" in up.output()  # it says how to reload, with the router's pid
    with httpx.Client(base_url=up.url, timeout=10) as client:
        assert client.get("/config").json()["salt"] == "rec-ab-1"
        write_config(tmp_path / "experiment.yaml", salt="after-hup")
        os.kill(up.proc.pid, signal.SIGHUP)
        wait_until(lambda: client.get("/config").json()["salt"] == "after-hup", what="the forwarded reload")
        up.wait_for_line("SIGHUP forwarded to the router")
        assert client.get("/recommend/42").status_code == 200
    assert up.proc.poll() is None and not any(gone(pid) for pid in up.pids.values())
    os.kill(up.proc.pid, signal.SIGTERM)
    assert up.proc.wait(60) == 0
    assert_nothing_left(up)


@pytest.mark.slow
@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGSEGV])
def test_children_stop_cleanly_when_abtest_up_dies_without_cleaning_up(
    start_up: Callable[[], Up], tmp_path: Path, death: signal.Signals
) -> None:
    """SIGKILL (or a segfault) gives `abtest up` no chance to stop anything: the kernel's PDEATHSIG does."""
    up = start_up()
    assert httpx.get(f"{up.url}/recommend/42", timeout=10).status_code == 200
    os.kill(up.proc.pid, death)
    assert up.proc.wait(60) == -death
    assert_nothing_left(up)
    # The router got SIGTERM, not SIGKILL: it shut down cleanly and wrote the exposure it had acknowledged.
    with sqlite3.connect(tmp_path / "results" / "outcomes.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM exposures").fetchone() == (1,)


class BrokenTerminal(io.StringIO):
    """An output that fails as the banner is written: `abtest up` crashes with a running stack."""

    def __init__(self) -> None:
        super().__init__()
        self.banner = ""

    def write(self, text: str) -> int:
        if "stack up:" in text:
            self.banner = text
            raise OSError("the terminal went away")
        return super().write(text)


@pytest.mark.slow
def test_a_crash_of_abtest_up_stops_the_stack_on_the_way_out(tmp_path: Path, tiny_models: Path) -> None:
    config = stack_config(tmp_path, tiny_models, write_config(tmp_path / "experiment.yaml"))
    out = BrokenTerminal()
    with pytest.raises(OSError, match="the terminal went away"):
        serve_forever(config, out)
    match = BANNER.search(out.banner)
    assert match, out.banner
    assert all(gone(int(pid)) for pid in match.groups())
    assert all(port_free(port) for port in ports_of(config).values())
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # its handlers are removed again


def test_bad_config_stops_abtest_up_before_anything_starts(tmp_path: Path) -> None:
    models = tmp_path / "models"  # empty: had anything started, the models would have been trained here
    bad = yaml.safe_load(DEFAULT_CONFIG.read_text())
    bad["variants"][1]["weight"] = -5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    config = stack_config(tmp_path, models, tmp_path / "bad.yaml")
    result = subprocess.run(up_argv(config), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "abtest up: nothing started: invalid experiment config" in result.stderr
    assert "variants.1.weight (variant 'model_b')" in result.stderr and "(got -5)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not models.exists() and not (tmp_path / "results").exists()
