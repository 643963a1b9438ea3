"""`abtest up`: the whole stack as local processes - the same services, config and results folder as compose.

Trains missing model artefacts first (with progress), starts model_a and model_b, waits until they are
healthy, then starts the router in front of them. Every line a service prints is shown with its name.
Ctrl-C (or SIGTERM) stops the router first, so it flushes every acknowledged event, then the models.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from abtest.processes import ServiceError, python_module, start_service, stop_service, wait_healthy
from recsys.data import canonical_spec
from recsys.training import MODEL_NAMES, is_trained, train_and_save, trainer

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "router" / "experiment.yaml"
_COLOURS = {"model_a": "\033[36m", "model_b": "\033[35m", "router": "\033[33m"}


@dataclass(frozen=True)
class StackConfig:
    """Where everything listens and lives; the defaults match docker-compose.yml's published port."""

    config: Path = DEFAULT_CONFIG
    router_port: int = 8080
    model_ports: dict[str, int] = field(default_factory=lambda: {"model_a": 8001, "model_b": 8002})
    host: str = "127.0.0.1"
    results_dir: Path = Path("results")
    models_dir: Path = Path("models")
    data_spec: str | None = None
    startup_timeout: float = 120.0

    def model_url(self, name: str) -> str:
        return f"http://{self.host}:{self.model_ports[name]}"

    @property
    def router_url(self) -> str:
        return f"http://{self.host}:{self.router_port}"


@dataclass
class RunningStack:
    """The started processes, in start order."""

    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    log_threads: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> dict[str, int]:
        """Stop the router first (it flushes the outcome store), then the model servers."""
        codes = {}
        for name in sorted(self.processes, key=lambda name: name != "router"):
            codes[name] = stop_service(self.processes[name])
        for thread in self.log_threads:
            thread.join(timeout=5)
        for process in self.processes.values():
            if process.stdout is not None:
                process.stdout.close()
        return codes


def _service_env(config: StackConfig) -> dict[str, str]:
    env = {
        "RESULTS_DIR": str(config.results_dir.resolve()),
        "MODELS_DIR": str(config.models_dir.resolve()),
        "PYTHONUNBUFFERED": "1",
        "ROUTER_VARIANT_URLS": ",".join(f"{name}={config.model_url(name)}" for name in MODEL_NAMES),
    }
    if config.data_spec:
        env["ABTEST_DATA"] = config.data_spec
    return env


def _relay(name: str, stream: IO[str], out: IO[str]) -> None:
    """Copy a service's output to ours, each line prefixed with the service's name."""
    colour, reset = (_COLOURS.get(name, ""), "\033[0m") if out.isatty() else ("", "")
    for line in stream:
        out.write(f"{colour}{name:8}|{reset} {line}")
        out.flush()


def _start(name: str, argv: list[str], env: dict[str, str], stack: RunningStack, out: IO[str]) -> None:
    process = start_service(argv, env=env, log=subprocess.PIPE)
    stack.processes[name] = process
    assert process.stdout is not None  # start_service(log=PIPE) always gives a stdout
    relay = threading.Thread(target=_relay, args=(name, process.stdout, out), name=f"relay-{name}", daemon=True)
    relay.start()
    stack.log_threads.append(relay)


def _check_ports_free(config: StackConfig) -> None:
    """Refuse to start over another stack: its health checks would answer for ours."""
    for name, port in {**config.model_ports, "router": config.router_port}.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((config.host, port)) == 0:
                raise ServiceError(
                    f"port {port} on {config.host} (for {name}) is already in use - another `abtest up`? "
                    "Stop it or choose other ports (--port, --model-a-port, --model-b-port)."
                )


def start_stack(config: StackConfig, out: IO[str] = sys.stdout) -> RunningStack:
    """Train what is missing, start the three services, return when all are healthy."""
    _check_ports_free(config)
    config.results_dir.mkdir(parents=True, exist_ok=True)
    spec = canonical_spec(config.data_spec)
    for name in MODEL_NAMES:
        if not is_trained(name, config.models_dir, spec):
            train_and_save(trainer(name), config.models_dir, data_spec=spec)
    env = _service_env(config)
    stack = RunningStack()
    try:
        for name in MODEL_NAMES:
            port = str(config.model_ports[name])
            _start(name, python_module(name, "--port", port, "--host", config.host), env, stack, out)
        for name in MODEL_NAMES:
            wait_healthy(config.model_url(name), stack.processes[name], timeout=config.startup_timeout)
        router_argv = python_module(
            "router", "--config", str(config.config), "--port", str(config.router_port), "--host", config.host
        )
        _start("router", router_argv, env, stack, out)
        wait_healthy(config.router_url, stack.processes["router"], timeout=config.startup_timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def running_stack(config: StackConfig, out: IO[str] = sys.stdout) -> Iterator[RunningStack]:
    """The stack for the duration of a with-block (tests, the benchmark, the demo)."""
    stack = start_stack(config, out)
    try:
        yield stack
    finally:
        stack.stop()


def serve_forever(config: StackConfig, out: IO[str] = sys.stdout) -> int:
    """Run the stack until Ctrl-C / SIGTERM or until a service dies; returns an exit code."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack = start_stack(config, out)
        out.write(
            f"\nstack up: router on {config.router_url} "
            f"(try: curl {config.router_url}/recommend/42, abtest simulate, abtest report). Ctrl-C stops.\n"
        )
        out.flush()
        died = None
        while not stop.wait(0.5):
            died = next((name for name, proc in stack.processes.items() if proc.poll() is not None), None)
            if died:
                out.write(f"{died} exited with code {stack.processes[died].returncode}: stopping the stack\n")
                break
        codes = stack.stop()
        out.write(f"stopped: {codes}\n")
        return 1 if died else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
