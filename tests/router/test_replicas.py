"""Several real router processes on one store behave as one router (issue 17's replicas half).

Each replica is `python -m router` in its own process, all on one SQLite file in WAL mode, or (the
attribution test) on one PostgreSQL database. Feedback goes to another replica than its exposure, immediately
after the answer: before the serving replica's writer has flushed it.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from tests.router.conftest import Backend, experiment, wait_until, write_config


@dataclass
class Replica:
    proc: subprocess.Popen[str]
    url: str
    client: httpx.Client


@contextmanager
def replica(
    tmp_path: Path, config: Path, store: Path | str, *args: str, env: dict[str, str] | None = None
) -> Iterator[Replica]:
    """A router process on `store`; SIGTERMed (and its exit code checked) when the block ends."""
    port = free_port()
    with (tmp_path / f"router-{port}.log").open("a") as log:
        proc = start_service(
            python_module("router", "--config", str(config), "--port", str(port), *args),
            env={"STORE_URL": store_url(store), "RESULTS_DIR": str(tmp_path), **(env or {})},
            log=log,
            die_with_parent=True,
        )
        url = f"http://127.0.0.1:{port}"
        # No keep-alive: each request is a new connection, so the kernel spreads them over --workers processes.
        client = httpx.Client(base_url=url, timeout=15.0, limits=httpx.Limits(max_keepalive_connections=0))
        try:
            wait_healthy(url, proc, timeout=60)
            yield Replica(proc, url, client)
        finally:
            client.close()
            assert stop_service(proc) in (0, -signal.SIGTERM), (tmp_path / f"router-{port}.log").read_text()[-3000:]


def store_url(store: Path | str) -> str:
    """A SQLite file's STORE_URL, or a PostgreSQL URL as it is."""
    return store if isinstance(store, str) else f"sqlite:///{store}"


def rows(store: Path | str, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(store, str):
        with psycopg.connect(store) as pg:
            return [tuple(row) for row in pg.execute(sql).fetchall()]
    with sqlite3.connect(store) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_feedback_sent_to_another_replica_is_attributed_to_its_exposure(
    tmp_path: Path, backends: dict[str, Backend], engine: str, request: pytest.FixtureRequest
) -> None:
    config = write_config(tmp_path / "experiment.yaml", experiment(backends))
    store: Path | str = (
        tmp_path / "outcomes.sqlite3" if engine == "sqlite" else str(request.getfixturevalue("postgres_url"))
    )
    with (
        replica(tmp_path, config, store) as first,
        replica(tmp_path, config, store) as second,
        replica(tmp_path, config, store) as third,
    ):
        replicas = (first, second, third)
        sent: list[tuple[str, int, str, int]] = []  # (request_id, item, variant served, position)
        for n in range(90):
            user = f"user-{n}"
            shown = replicas[n % 3].client.get(f"/recommend/{user}", params={"k": 4}).json()
            position = n % 4
            answer = replicas[(n + 1) % 3].client.post(  # another replica, before the exposure is flushed
                "/feedback",
                json={
                    "request_id": shown["request_id"],
                    "user_id": user,
                    "item_id": shown["items"][position],
                    "event": "click",
                },
            )
            assert answer.status_code == 202, answer.text
            assert (answer.json()["variant"], answer.json()["position"]) == (shown["variant"], position)
            sent.append((shown["request_id"], shown["items"][position], shown["variant"], position))
        assert {r.client.get("/config").json()["phase"] for r in replicas} == {1}
    # Every replica stopped cleanly (drained): the store holds each answered request once, each feedback once,
    # each joined to its own exposure.
    assert rows(store, "SELECT COUNT(*) FROM exposures") == [(90,)]
    joined = rows(
        store,
        "SELECT f.request_id, f.item_id, f.variant, f.position FROM feedback AS f "
        "JOIN exposures AS e ON e.request_id = f.request_id AND e.variant = f.variant AND e.phase = f.phase",
    )
    assert sorted(joined) == sorted(sent)


def test_replicas_agree_on_the_request_id_secret_and_refuse_forged_ids_alike(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    config, store = write_config(tmp_path / "experiment.yaml", experiment(backends)), tmp_path / "outcomes.sqlite3"
    with replica(tmp_path, config, store) as first, replica(tmp_path, config, store) as second:
        shown = first.client.get("/recommend/alice").json()
        forged = {"request_id": "0" * 48, "user_id": "alice", "item_id": 1, "event": "click"}
        foreign = {**forged, "request_id": shown["request_id"], "user_id": "bob"}
        answers = [second.client.post("/feedback", json=body) for body in (forged, foreign)]
        assert [a.status_code for a in answers] == [404, 404]
    assert rows(store, "SELECT COUNT(*) FROM meta WHERE key = 'request_id_secret'") == [(1,)]


def test_a_reload_reaching_replicas_one_after_another_keeps_one_phase_per_configuration(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    raw = experiment(backends)
    store = tmp_path / "outcomes.sqlite3"
    old_a, old_b = write_config(tmp_path / "a.yaml", raw), write_config(tmp_path / "b.yaml", raw)
    changed = {**raw, "salt": "another-salt"}  # moves users: a new phase
    with replica(tmp_path, old_a, store) as a, replica(tmp_path, old_b, store) as b:
        write_config(old_a, changed)
        os.kill(a.proc.pid, signal.SIGHUP)  # the ConfigMap reached A first
        wait_until(lambda: a.client.get("/config").json()["phase"] == 2, what="A in the new phase")
        with replica(tmp_path, write_config(tmp_path / "c.yaml", raw), store) as c:  # C restarts on the old file
            assert [r.client.get("/config").json()["phase"] for r in (a, b, c)] == [2, 1, 1]
            for r in (a, b, c):
                assert r.client.get("/recommend/alice").status_code == 200
            write_config(old_b, changed)
            os.kill(b.proc.pid, signal.SIGHUP)
            wait_until(lambda: b.client.get("/config").json()["phase"] == 2, what="B joins A's phase")
            assert b.client.get("/recommend/alice").status_code == 200
    assert rows(store, "SELECT phase, config_key IS NOT NULL FROM phases ORDER BY phase") == [(1, 1), (2, 1)]
    salts = rows(store, "SELECT phase, json_extract(config_json, '$.salt') FROM phases ORDER BY phase")
    assert salts == [(1, "test-salt"), (2, "another-salt")]
    # Each exposure carries the phase of the configuration that served it: A and B-after-reload in 2, C in 1.
    assert rows(store, "SELECT phase, COUNT(*) FROM exposures GROUP BY phase ORDER BY phase") == [(1, 2), (2, 2)]


def test_workers_share_the_port_the_store_and_the_metrics(tmp_path: Path, backends: dict[str, Backend]) -> None:
    config, store = write_config(tmp_path / "experiment.yaml", experiment(backends)), tmp_path / "outcomes.sqlite3"
    with replica(tmp_path, config, store, "--workers", "2") as router:
        shown: list[dict[str, object]] = []

        def serve(count: int) -> None:
            for _ in range(count):
                n = len(shown)
                answer = router.client.get(f"/recommend/user-{n}").json()
                feedback = {"request_id": answer["request_id"], "user_id": f"user-{n}", "item_id": answer["items"][0]}
                assert router.client.post("/feedback", json={**feedback, "event": "click"}).status_code == 202
                shown.append(answer)

        def served_by_worker() -> dict[str, float]:
            text = router.client.get("/metrics").text
            counts: dict[str, float] = {}
            for line in text.splitlines():
                found = re.match(r'router_requests_total\{.*worker="(\d+)".*\} (\S+)$', line)
                if found:
                    counts[found.group(1)] = counts.get(found.group(1), 0.0) + float(found.group(2))
            return counts

        # The kernel spreads new connections over the workers' sockets by a hash: send 120 (one connection
        # each), then more in steps until both workers have served some (on a loaded machine one may start
        # late); every request is counted in one scrape through the shared port, whichever worker answers it.
        serve(120)
        while True:
            wait_until(lambda: sum(served_by_worker().values()) == len(shown), what="every request in one scrape")
            if set(served_by_worker()) == {"0", "1"} or len(shown) >= 2_000:
                break
            serve(40)
        assert set(served_by_worker()) == {"0", "1"} and min(served_by_worker().values()) > 0
        os.kill(router.proc.pid, signal.SIGHUP)  # passed on: every worker reloads
        wait_until(
            lambda: (
                len(
                    re.findall(
                        r'router_reloads_total\{result="applied",worker="\d"\} 1\.0', router.client.get("/metrics").text
                    )
                )
                == 2
            ),
            what="both workers reloaded",
        )
    assert rows(store, "SELECT COUNT(*) FROM exposures") == [(len(shown),)]
    assert rows(store, "SELECT COUNT(*) FROM feedback") == [(len(shown),)]
    assert rows(store, "SELECT COUNT(*) FROM phases") == [(1,)]


def test_a_configmap_update_is_applied_without_a_restart(tmp_path: Path, backends: dict[str, Backend]) -> None:
    # The layout the kubelet makes: experiment.yaml -> ..data/experiment.yaml, ..data -> ..<timestamp>.
    mount = tmp_path / "config"
    (mount / "..2026_01").mkdir(parents=True)
    raw = experiment(backends)
    write_config(mount / "..2026_01" / "experiment.yaml", raw)
    (mount / "..data").symlink_to("..2026_01")
    (mount / "experiment.yaml").symlink_to("..data/experiment.yaml")
    store = tmp_path / "outcomes.sqlite3"
    env = {"ROUTER_CONFIG_WATCH_INTERVAL": "0.2"}
    with replica(tmp_path, mount / "experiment.yaml", store, env=env) as router:
        assert router.client.get("/config").json()["salt"] == "test-salt"
        # The kubelet's update: a new timestamped folder, then one atomic rename of ..data.
        (mount / "..2026_02").mkdir()
        write_config(mount / "..2026_02" / "experiment.yaml", {**raw, "salt": "from-the-configmap"})
        (mount / "..data_tmp").symlink_to("..2026_02")
        os.replace(mount / "..data_tmp", mount / "..data")
        wait_until(lambda: router.client.get("/config").json()["salt"] == "from-the-configmap", what="the reload")
        assert router.client.get("/config").json()["phase"] == 2
        # Rewriting the same content in place changes mtime, not content: no reload.
        (mount / "..2026_02" / "experiment.yaml").write_text(yaml.safe_dump({**raw, "salt": "from-the-configmap"}))
        bad = mount / "..2026_02" / "experiment.yaml"
        bad.write_text("experiment: [unclosed")  # a broken edit is refused; the config keeps serving
        wait_until(
            lambda: 'router_reloads_total{result="refused"} 1.0' in router.client.get("/metrics").text,
            what="the broken file refused",
        )
        assert 'router_reloads_total{result="applied"} 1.0' in router.client.get("/metrics").text
        assert router.client.get("/recommend/alice").status_code == 200


def test_workers_that_cannot_start_stop_the_supervisor_with_their_exit_code(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    config = write_config(tmp_path / "experiment.yaml", experiment(backends))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    proc = start_service(
        python_module("router", "--config", str(config), "--port", str(free_port()), "--workers", "2"),
        env={"STORE_URL": f"sqlite:///{blocker}/outcomes.sqlite3", "RESULTS_DIR": str(tmp_path)},
        log=subprocess.DEVNULL,
        die_with_parent=True,
    )
    try:
        assert proc.wait(60) == 3  # the children's "start-up failed", not a restart loop
    finally:
        stop_service(proc)
