"""`abtest up`: the whole stack as local processes - the same services, config and results folder as compose.

Checks the experiment config first (as the router would, so a mistake stops everything before anything
starts), trains missing model artefacts (with progress), starts model_a and model_b, waits until they are
healthy, then starts the router in front of them. Every line a service prints is shown with its name; the
banner names each service's pid.

Signals to `abtest up`:
- SIGHUP is forwarded to the router, which re-reads the experiment config (a reload, as `kill -HUP <router>`).
- SIGINT (Ctrl-C), SIGTERM, SIGQUIT stop the router first, so it flushes every acknowledged event, then the
  models; a second one while stopping is ignored (the stop is already under way).
- A crash of `abtest up` (an exception) stops the stack on the way out.

What is and is not covered when `abtest up` dies without cleaning up (SIGKILL, a segfault, the OOM killer):
on Linux each service was started with PR_SET_PDEATHSIG, so the kernel SIGTERMs it as soon as `abtest up`'s
main thread is gone and it shuts down cleanly (the router still flushes its store). Not covered: other
systems (macOS has no PR_SET_PDEATHSIG: there only a signal `abtest up` can catch stops the services), and
processes a service itself starts (none today; they share its process group, which a clean stop kills).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import FrameType
from typing import IO

from abtest.processes import ServiceError, python_module, start_service, stop_service, wait_healthy
from recsys.data import canonical_spec
from recsys.training import MODEL_NAMES, is_trained, train_and_save, trainer

#: The experiment file the router package ships (package data), wherever the package is installed.
DEFAULT_CONFIG = Path(str(files("router") / "experiment.yaml"))
_COLOURS = {"model_a": "\033[36m", "model_b": "\033[35m", "router": "\033[33m"}
#: Signals that stop the stack; SIGHUP is forwarded to the router instead.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


class StackConfigError(ValueError):
    """The experiment config (or the router's environment) would stop the router: nothing was started."""


class StackInterrupted(Exception):  # noqa: N818 - it is an event, like KeyboardInterrupt, not a failure
    """A stop signal arrived while the stack was still starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
    strategy: str | None = None
    """Overrides the config's strategy (ROUTER_STRATEGY), e.g. `thompson` to run a bandit phase."""

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


def _variant_urls(config: StackConfig) -> str:
    return ",".join(f"{name}={config.model_url(name)}" for name in MODEL_NAMES)


def _service_env(config: StackConfig) -> dict[str, str]:
    env = {
        "RESULTS_DIR": str(config.results_dir.resolve()),
        "MODELS_DIR": str(config.models_dir.resolve()),
        "PYTHONUNBUFFERED": "1",
        "ROUTER_VARIANT_URLS": _variant_urls(config),
        # The services' output is relayed to a person's terminal: readable lines, unless they chose otherwise.
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
    }
    if config.data_spec:
        env["ABTEST_DATA"] = config.data_spec
    if config.strategy:
        env["ROUTER_STRATEGY"] = config.strategy
    return env


def check_router_config(config: StackConfig) -> None:
    """Validate the experiment config exactly as the router will (same YAML, env overrides and variant URLs).

    Raises StackConfigError with the router's own message (the field, the value, the variable that set it).
    """
    from pydantic import ValidationError

    from router.config import RouterSettings, load_config  # the router's extra (PyYAML)
    from router.errors import ConfigError

    try:
        settings = RouterSettings(
            config_path=config.config, variant_urls=_variant_urls(config), strategy=config.strategy
        )
        load_config(settings)
    except ValidationError as exc:
        raise StackConfigError(f"invalid router environment settings:\n{exc}") from exc
    except ConfigError as exc:
        raise StackConfigError(str(exc)) from exc


def _relay(name: str, stream: IO[str], out: IO[str]) -> None:
    """Copy a service's output to ours, each line prefixed with the service's name."""
    colour, reset = (_COLOURS.get(name, ""), "\033[0m") if out.isatty() else ("", "")
    for line in stream:
        out.write(f"{colour}{name:8}|{reset} {line}")
        out.flush()


def _start(name: str, argv: list[str], env: dict[str, str], stack: RunningStack, out: IO[str]) -> None:
    process = start_service(argv, env=env, log=subprocess.PIPE, die_with_parent=True)
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
    """Check the config, train what is missing, start the three services, return when all are healthy.

    Raises StackConfigError (nothing started), ServiceError (a port is taken, or a service did not come up:
    whatever was started is stopped again).
    """
    check_router_config(config)
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
        _say(out, f"starting {', '.join(f'{n} on {config.model_url(n)}' for n in MODEL_NAMES)} ...")
        for name in MODEL_NAMES:
            wait_healthy(config.model_url(name), stack.processes[name], timeout=config.startup_timeout)
        router_argv = python_module(
            "router", "--config", str(config.config), "--port", str(config.router_port), "--host", config.host
        )
        _start("router", router_argv, env, stack, out)
        _say(out, f"models healthy; starting the router on {config.router_url} ...")
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


def _say(out: IO[str], text: str) -> None:
    out.write(f"{'abtest':8}| {text}\n")
    out.flush()


def banner(config: StackConfig, stack: RunningStack) -> str:
    """What `abtest up` prints once everything is healthy: where, which pids, how to reload and stop."""
    pids = {name: process.pid for name, process in stack.processes.items()}
    router = pids["router"]
    models = ", ".join(f"{name} pid {pids[name]} on {config.model_url(name)}" for name in MODEL_NAMES)
    return (
        f"\nstack up: router pid {router} on {config.router_url}; {models}\n"
        f"  try:    curl {config.router_url}/recommend/42, abtest simulate, abtest report\n"
        f"  reload: edit {config.config}, then kill -HUP {router} (the router), or kill -HUP {os.getpid()} "
        "(this abtest up forwards it)\n"
        "  stop:   Ctrl-C (or SIGTERM/SIGQUIT to this process)\n"
    )


def serve_forever(config: StackConfig, out: IO[str] = sys.stdout) -> int:
    """Run the stack until a stop signal or until a service dies; returns an exit code (0 when asked to stop).

    Raises StackConfigError / ServiceError if it cannot start (nothing is left running).
    """
    state = "starting"
    stack: RunningStack | None = None
    wake = threading.Event()
    stop_signal: list[int] = []
    hups = {"forwarded": 0, "ignored": 0}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal state
        if state == "starting":
            state = "stopping"
            raise StackInterrupted(signum)  # unwinds start_stack, which stops what it started
        if state == "running":
            state = "stopping"
            stop_signal.append(signum)
            wake.set()
        # already stopping: the first signal's stop is under way

    def forward_reload(signum: int, frame: FrameType | None) -> None:
        router = stack.processes.get("router") if stack is not None and state == "running" else None
        if router is not None and router.poll() is None:
            os.kill(router.pid, signal.SIGHUP)
            hups["forwarded"] += 1
        else:  # the router installs its SIGHUP handler while starting: before that, HUP would kill it
            hups["ignored"] += 1
        wake.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward_reload)
    died = None
    try:
        stack = start_stack(config, out)
        state = "running"
        out.write(banner(config, stack))
        out.flush()
        reported = {"forwarded": 0, "ignored": 0}
        while state == "running":
            wake.wait(0.5)
            wake.clear()
            if hups != reported:
                if hups["forwarded"] > reported["forwarded"]:
                    _say(out, f"SIGHUP forwarded to the router (pid {stack.processes['router'].pid}): reloading")
                if hups["ignored"] > reported["ignored"]:
                    _say(out, "SIGHUP ignored: the router was still starting")
                reported = dict(hups)
            died = next((name for name, proc in stack.processes.items() if proc.poll() is not None), None)
            if died:
                _say(out, f"{died} exited with code {stack.processes[died].returncode}: stopping the stack")
                break
        if stop_signal:
            name = signal.Signals(stop_signal[0]).name
            _say(out, f"{name}: stopping the router (it flushes its store), then the models")
        return 1 if died else 0
    except StackInterrupted as exc:
        _say(out, f"{signal.Signals(exc.signum).name} while starting: stopped")
        return 0
    finally:
        state = "stopping"
        codes = stack.stop() if stack is not None else None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if codes is not None:
            _say(out, f"stopped: {codes}")
