"""The project's real services as child processes on fixed loopback ports, which a test can kill and restart.

    model = Service("model_b", port, tmp_path / "model_b.log", env={"MODELS_DIR": str(models_dir)})
    model.start()                       # returns once GET /health answers 200
    model.signal(signal.SIGKILL)        # the process dies; its port stays ours to restart on
    model.start()                       # same port, same URL: the router sees its backend come back
    model.stop()                        # SIGTERM, returns the exit code (see CLEAN_EXIT_CODES)

Children get a clean environment: the test process's own ROUTER_* / RESULTS_DIR variables never leak in.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from abtest.processes import python_module, stop_service, wait_healthy

_LEAKY_PREFIXES = ("ROUTER_", "RESULTS_DIR", "MODELS_DIR", "ABTEST_")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that configure the services, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_LEAKY_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Service:
    """`python -m <module> --port <port> <args>`, its stdout and stderr appended to `log_path`."""

    module: str
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.module} was never started"
        return self.proc.pid

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the process and return once it answers GET /health with 200."""
        argv = python_module(self.module, "--port", str(self.port), *self.args)
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                argv,
                env=clean_environment(**self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        wait_healthy(self.url, self.proc, timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        if not self.alive():
            return False
        try:
            return httpx.get(self.url + "/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, signum: int) -> None:
        """Send `signum` to the service's process group; after SIGKILL, reap the process."""
        os.killpg(self.pid, signum)
        if signum == signal.SIGKILL:
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM, wait (SIGKILL after 15 s); the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGCONT)  # a stopped (SIGSTOP) process must run to handle SIGTERM
        return stop_service(self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def router_service(
    directory: Path, port: int, config: dict[str, Any], *, env: dict[str, str] | None = None, name: str = "router"
) -> Service:
    """The router as `python -m router`, with `config` written as YAML and its store in `directory/results`."""
    config_path = directory / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    service_env = {"RESULTS_DIR": str(directory / "results"), "ROUTER_HEALTH_INTERVAL": "0.2"}
    service_env.update(env or {})
    return Service("router", port, directory / f"{name}.log", service_env, ("--config", str(config_path)))


def store_path(router: Service) -> Path:
    """The outcome store file of a router started by `router_service`."""
    return Path(router.env["RESULTS_DIR"]) / "outcomes.sqlite3"
