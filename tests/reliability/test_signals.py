"""Signals at any moment: no SIGHUP kills a service, a stop is graceful, and the final drain loses nothing uncounted.

A signal "0 s after spawn" is sent as soon as the process's handler exists: the test polls /proc/<pid>/status
until SIGHUP is in the caught mask (before that, no Python code of the service has run yet), then keeps
sending SIGHUPs through the whole start-up, the serving and the stop.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from abtest.processes import CLEAN_EXIT_CODES, free_port, python_module
from tests.reliability.conftest import USERS, RouterFactory, experiment, urls_of
from tests.reliability.load import Load
from tests.reliability.observe import rows
from tests.reliability.services import Service, clean_environment, router_service, store_path
from tests.router.conftest import wait_until


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (the kernel's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert found is not None, status
    return bool(int(found.group(1), 16) >> (signum - 1) & 1)


def spawn(service: Service) -> subprocess.Popen[str]:
    """Start `service` without waiting for it, and return as soon as its SIGHUP handler is installed."""
    argv = python_module(service.module, "--port", str(service.port), *service.args)
    with service.log_path.open("a") as log:
        service.proc = proc = subprocess.Popen(
            argv,
            env=clean_environment(**service.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    wait_until(lambda: proc.poll() is not None or catches(proc.pid, signal.SIGHUP), timeout=30, what="the handler")
    assert proc.poll() is None, f"exited with {proc.returncode} before installing its handlers"
    return proc


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def hup_until(proc: subprocess.Popen[str], done: Callable[[], bool]) -> int:
    """Send SIGHUP to `proc` again and again until `done()` holds; the number sent. The process must survive."""
    sent = 0

    def one_more() -> bool:
        nonlocal sent
        assert proc.poll() is None or done(), f"killed by SIGHUP number {sent} (exit code {proc.returncode})"
        if done():
            return True
        proc.send_signal(signal.SIGHUP)
        sent += 1
        return False

    wait_until(one_more, timeout=60, what="the process to get there under SIGHUPs")
    return sent


def log_lines(service: Service, text: str) -> list[str]:
    return [line for line in service.log_text().splitlines() if text in line]


def router_under_test(tmp_path: Path, models: dict[str, Service]) -> Service:
    return router_service(tmp_path, free_port(), experiment(urls_of(models)))


def test_router_survives_sighup_from_its_first_instruction_through_start_up_serving_and_stop(
    models: dict[str, Service], tmp_path: Path
) -> None:
    router = router_under_test(tmp_path, models)
    proc = spawn(router)
    try:
        during_start = hup_until(proc, lambda: healthy(router.url))
        assert during_start >= 1
        assert log_lines(router, "SIGHUP ignored: starting"), router.log_text()[-3000:]
        # Serving: a SIGHUP is a reload (the same file: applied, the same phase).
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: bool(log_lines(router, "SIGHUP reload applied")), what="the reload")
        assert httpx.get(router.url + "/recommend/u1", timeout=5).status_code == 200
        # Stopping: SIGHUPs until it has exited; it stops cleanly all the same, and says it ignored them.
        proc.send_signal(signal.SIGTERM)
        hup_until(proc, lambda: proc.poll() is not None)
    finally:
        router.stop()
    assert proc.returncode in CLEAN_EXIT_CODES, router.log_text()[-3000:]
    assert "Traceback" not in router.log_text()
    assert len(log_lines(router, '"outcome store closed"')) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_router_stop_signal_at_its_first_instruction_is_a_clean_exit(
    models: dict[str, Service], tmp_path: Path, signum: int
) -> None:
    router = router_under_test(tmp_path, models)
    proc = spawn(router)
    proc.send_signal(signum)
    assert proc.wait(60) in CLEAN_EXIT_CODES, router.log_text()[-3000:]
    text = router.log_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]


@pytest.mark.parametrize("name", ["model_a", "model_b"])
def test_model_server_survives_sighup_from_its_first_instruction_and_stops_cleanly(
    models_dir: Path, tmp_path: Path, name: str
) -> None:
    model = Service(name, free_port(), tmp_path / f"{name}.log", {"MODELS_DIR": str(models_dir)})
    proc = spawn(model)
    try:
        assert hup_until(proc, lambda: healthy(model.url)) >= 1
        proc.send_signal(signal.SIGHUP)  # serving: nothing to reload, still not fatal
        assert healthy(model.url)
        proc.send_signal(signal.SIGTERM)
        hup_until(proc, lambda: proc.poll() is not None)
    finally:
        model.stop()
    assert proc.returncode in CLEAN_EXIT_CODES, model.log_text()[-3000:]
    assert log_lines(model, "SIGHUP ignored"), model.log_text()[-3000:]


@contextmanager
def locked(store: Path) -> Iterator[sqlite3.Connection]:
    """Another writer holding the store's write lock: the router's writer retries until it is released."""
    with closing(sqlite3.connect(store, isolation_level=None, timeout=10)) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def closed_counts(router: Service) -> dict[str, dict[str, int]]:
    [line] = log_lines(router, '"outcome store closed"')
    closed = json.loads(line)
    return {"written": closed["written"], "lost": closed["lost"]}


@pytest.mark.parametrize("released", [True, False], ids=["lock-released", "store-never-back"])
def test_sighup_during_the_final_drain_under_load_loses_nothing_uncounted(
    models: dict[str, Service], start_router: RouterFactory, released: bool
) -> None:
    router = start_router(experiment(urls_of(models)))
    assert router.proc is not None
    proc = router.proc
    store = store_path(router)
    with Load(router.url, users=USERS, concurrency=8, clicks=1.0) as load:
        load.wait_for(lambda t: len(t.acked_feedback) >= 500, what="acknowledged clicks")
        with locked(store):  # the drain cannot finish while this is held: the SIGHUPs land in it for sure
            load.wait_for(lambda t: len(t.acked_feedback) >= 1000, what="clicks queued behind the lock")
            router.signal(signal.SIGTERM)
            wait_until(lambda: bool(log_lines(router, "router stopping: writing the queued events")), timeout=30)
            for sent in range(1, 6):
                proc.send_signal(signal.SIGHUP)
                wait_until(
                    lambda sent=sent: (
                        len(log_lines(router, "SIGHUP ignored: stopping")) >= sent  # type: ignore[misc]
                        or proc.poll() is not None
                    ),
                    what="the SIGHUP to be ignored",
                )
                assert proc.poll() is None, f"SIGHUP {sent} during the drain killed the router ({proc.returncode})"
            if not released:
                code = proc.wait(60)  # the store's stop timeout (10 s) runs out while the lock is still held
        if released:
            code = proc.wait(60)
    tally = load.tally
    assert code in CLEAN_EXIT_CODES, router.log_text()[-3000:]

    counts = closed_counts(router)
    stored = {r[0] for r in rows(store, "SELECT request_id FROM exposures")}
    stored_clicks = Counter(rows(store, "SELECT request_id, item_id FROM feedback WHERE event = 'click'"))
    acked = set(tally.request_ids())
    missing_exposures = acked - stored
    missing_clicks = Counter(tally.acked_feedback) - stored_clicks
    assert counts["written"]["exposure"] == len(stored)
    assert counts["written"]["feedback"] == stored_clicks.total()
    if released:  # the drain completed: every acknowledged event is in the store
        assert not missing_exposures and not missing_clicks
        assert counts["lost"]["exposure"] == counts["lost"]["feedback"] == 0
    else:  # it could not: what it could not write is counted, to the event
        assert missing_exposures and missing_clicks
        assert (
            len(missing_exposures)
            <= counts["lost"]["exposure"]
            <= len(missing_exposures) + tally.transport_errors.total()
        )
        assert missing_clicks.total() <= counts["lost"]["feedback"]
        assert counts["lost"]["feedback"] <= missing_clicks.total() + tally.feedback_errors.total()
        assert log_lines(router, "could not be written and are lost")
    print(
        f"\nSIGHUP x5 during the drain ({'released' if released else 'never released'}): {load.summary()}; "
        f"written {counts['written']}, lost {counts['lost']}"
    )
