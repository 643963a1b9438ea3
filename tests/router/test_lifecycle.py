"""Router processes come and go: assignments stay put, phases continue, and a clean stop loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from tests.router.conftest import Backend, experiment, running_router, settings_for, wait_until, write_config

USERS = [f"user-{i}" for i in range(200)]


def assignments(client: httpx.Client) -> dict[str, str]:
    return {user: client.get(f"/recommend/{user}", params={"k": 1}).headers["X-Variant"] for user in USERS}


def test_hash_assignments_survive_a_restart_and_the_phase_continues(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    settings = settings_for(tmp_path, experiment(backends))
    with running_router(settings) as first:
        before = assignments(first.client)
        assert first.client.get("/config").json()["phase"] == 1
    with running_router(settings) as second:
        assert assignments(second.client) == before
        assert second.client.get("/config").json()["phase"] == 1
        assert second.rows("SELECT COUNT(*) FROM phases") == [(1,)]
        assert second.rows("SELECT COUNT(*) FROM exposures") == [(2 * len(USERS),)]
    assert set(before.values()) == {"model_a", "model_b"}


def test_two_router_instances_agree_without_shared_state(tmp_path: Path, backends: dict[str, Backend]) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with (
        running_router(settings_for(tmp_path / "one", experiment(backends))) as one,
        running_router(settings_for(tmp_path / "two", experiment(backends))) as two,
    ):
        assert assignments(one.client) == assignments(two.client)


def test_a_restart_with_a_new_salt_starts_a_new_phase(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as first:
        before = assignments(first.client)
    with running_router(settings_for(tmp_path, experiment(backends, salt="another-salt"))) as second:
        after = assignments(second.client)
        assert second.client.get("/config").json()["phase"] == 2
        assert second.rows("SELECT phase, COUNT(*) FROM exposures GROUP BY phase") == [(1, len(USERS)), (2, len(USERS))]
    assert before != after  # a new salt reshuffles users


@contextmanager
def router_process(tmp_path: Path, config: Path, backends: dict[str, Backend]) -> Iterator[RouterProcess]:
    """`python -m router` as a child process (its log in tmp_path/router.log); SIGTERMed when the block ends."""
    port = free_port()
    urls = ",".join(f"{name}={backend.url}" for name, backend in backends.items())
    with (tmp_path / "router.log").open("a") as log:
        proc = start_service(
            python_module("router", "--config", str(config), "--port", str(port)),
            env={"RESULTS_DIR": str(tmp_path / "results"), "ROUTER_VARIANT_URLS": urls},
            log=log,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_healthy(base_url, proc, timeout=30)
            yield RouterProcess(proc, base_url)
        finally:
            stop_service(proc)


@dataclass
class RouterProcess:
    proc: subprocess.Popen[str]
    url: str


def test_clean_shutdown_loses_no_acknowledged_event(tmp_path: Path, backends: dict[str, Backend]) -> None:
    # The YAML names unreachable hosts; ROUTER_VARIANT_URLS points the variants at the fakes, as in deployment.
    raw = experiment(backends)
    for variant in raw["variants"]:
        variant["url"] = f"http://{variant['name']}:8000"
    config = write_config(tmp_path / "experiment.yaml", raw)
    acknowledged: dict[str, int] = {"exposures": 0, "feedback": 0}
    with router_process(tmp_path, config, backends) as router:

        async def one_user(client: httpx.AsyncClient, user: str) -> None:
            shown = await client.get(f"/recommend/{user}", params={"k": 5})
            if shown.status_code != 200:
                return
            acknowledged["exposures"] += 1
            body = shown.json()
            feedback = {
                "request_id": body["request_id"],
                "user_id": user,
                "item_id": body["items"][0],
                "event": "click",
            }
            if (await client.post("/feedback", json=feedback)).status_code == 202:
                acknowledged["feedback"] += 1

        async def traffic() -> None:
            limits = httpx.Limits(max_connections=20)
            async with httpx.AsyncClient(base_url=router.url, timeout=10, limits=limits) as client:
                await asyncio.gather(*(one_user(client, f"u{i}") for i in range(400)))

        asyncio.run(traffic())
        # Leaving the block SIGTERMs the router right after the last acknowledgement, with events still queued.
    assert acknowledged == {"exposures": 400, "feedback": 400}
    with sqlite3.connect(tmp_path / "results" / "outcomes.sqlite3") as conn:
        stored = {
            "exposures": conn.execute("SELECT COUNT(*) FROM exposures").fetchone()[0],
            "feedback": conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0],
        }
        unmatched = conn.execute(
            "SELECT COUNT(*) FROM feedback f LEFT JOIN exposures e USING (request_id) WHERE e.id IS NULL"
        ).fetchone()[0]
    assert stored == acknowledged
    assert unmatched == 0
    log_text = (tmp_path / "router.log").read_text()
    assert '"msg":"outcome store closed"' in log_text


def test_sighup_reloads_the_config_file(tmp_path: Path, backends: dict[str, Backend]) -> None:
    raw = experiment(backends)
    config = write_config(tmp_path / "experiment.yaml", raw)
    with router_process(tmp_path, config, backends) as router, httpx.Client(base_url=router.url, timeout=10) as client:
        assert client.get("/config").json()["phase"] == 1
        write_config(config, {**raw, "salt": "after-sighup"})
        os.kill(router.proc.pid, signal.SIGHUP)
        wait_until(lambda: client.get("/config").json()["salt"] == "after-sighup", what="the SIGHUP reload")
        assert client.get("/config").json()["phase"] == 2
        write_config(config, {**raw, "strategy": "nope"})
        os.kill(router.proc.pid, signal.SIGHUP)
        wait_until(lambda: "config reload refused" in (tmp_path / "router.log").read_text(), what="refusal")
        assert client.get("/config").json()["salt"] == "after-sighup"
        assert client.get("/recommend/42").status_code == 200


def test_bad_config_stops_start_up_with_a_message_naming_field_and_value(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    raw: dict[str, Any] = experiment(backends)
    raw["variants"][0]["weight"] = -1
    config = write_config(tmp_path / "experiment.yaml", raw)
    result = subprocess.run(
        python_module("router", "--config", str(config), "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RESULTS_DIR": str(tmp_path / "results")},
        check=False,
    )
    assert result.returncode == 2
    assert "variants.0.weight" in result.stderr and "model_a" in result.stderr and "(got -1)" in result.stderr
    assert result.stderr.count("(got -1)") == 1, result.stderr  # said once (logged), not logged and printed


def test_unknown_store_url_scheme_stops_start_up_with_exit_code_2_and_no_traceback(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    config = write_config(tmp_path / "experiment.yaml", experiment(backends))
    result = subprocess.run(
        python_module("router", "--config", str(config), "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RESULTS_DIR": str(tmp_path / "results"), "STORE_URL": "mysql://db/outcomes"},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "STORE_URL 'mysql://db/outcomes': unknown store" in result.stderr
    assert "Traceback" not in result.stderr
