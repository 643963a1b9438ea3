"""Bad experiment files on a running router: refused with a 4xx and a log line, counted, never a 500 or a wedge.

Through POST /admin/reload and through SIGHUP, on a real `python -m router`: invalid UTF-8, a document nested
100,000 deep, a 60 MB file, a FIFO in the config's place (no writer ever comes), a directory. After each, the
old config keeps serving, and a good file reloads at once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.reliability.conftest import RouterFactory, experiment, urls_of
from tests.reliability.observe import metric
from tests.reliability.services import Service
from tests.router.conftest import wait_until

TOKEN = "reload-bounds-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def invalid_utf8(path: Path) -> None:
    path.write_bytes(b"experiment: rec-ab\nsalt: caf\xe9\n")


def deeply_nested(path: Path) -> None:
    path.write_text("experiment: " + "[" * 100_000 + "]" * 100_000 + "\n")


def huge(path: Path) -> None:
    with path.open("wb") as out:
        out.write(b"experiment: rec-ab\n# " + b"x" * (60 * 1024 * 1024) + b"\n")


def fifo(path: Path) -> None:
    os.mkfifo(path)


def directory(path: Path) -> None:
    path.mkdir()


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "invalid-utf8": (invalid_utf8, "not valid UTF-8"),
    "nested-100000": (deeply_nested, "levels deep"),
    "60MB": (huge, "more than 1048576 bytes"),
    "fifo": (fifo, "not a FIFO"),
    "directory": (directory, "not a directory"),
}


def refused(router: Service) -> float:
    return metric(httpx.get(router.url + "/metrics", timeout=5).text, "router_reloads_total", result="refused")


@pytest.mark.parametrize("how", ["http", "sighup"])
def test_bad_config_files_are_refused_counted_and_logged_and_a_good_one_still_reloads(
    models: dict[str, Service], start_router: RouterFactory, how: str
) -> None:
    good = experiment(urls_of(models))
    router = start_router(good, env={"ROUTER_ADMIN_TOKEN": TOKEN})
    path = Path(router.args[-1])
    for number, (name, (write, message)) in enumerate(BAD.items(), start=1):
        path.unlink()
        write(path)
        if how == "http":
            answer = httpx.post(router.url + "/admin/reload", headers=AUTH, timeout=30)
            assert answer.status_code == 400, (name, answer.status_code, answer.text)
            assert message in answer.json()["detail"], (name, answer.text)
        else:
            router.signal(signal.SIGHUP)
        wait_until(lambda n=number: refused(router) >= n, timeout=30, what=f"{name} to be counted as refused")  # type: ignore[misc]
        assert httpx.get(router.url + "/recommend/u1", timeout=5).status_code == 200  # the old config serves
        log = router.log_text()
        assert log.count("config reload refused") == number, (name, log[-2000:])
        assert message in log.splitlines()[-1] or any(message in line for line in log.splitlines()[-5:])
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
        path.write_text(yaml.safe_dump(good, sort_keys=False))
        answer = httpx.post(router.url + "/admin/reload", headers=AUTH, timeout=30)
        assert answer.status_code == 200, (name, answer.text)
    log = router.log_text()
    assert "Traceback" not in log and "Task exception was never retrieved" not in log, log[-3000:]
    assert refused(router) == len(BAD)
