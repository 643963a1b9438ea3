"""The PostgreSQL store fails (restarted mid-load, stopped, never there): requests are served, nothing vanishes.

Each scenario runs a real router over a real PostgreSQL 15 server (tests/support/postgres.py): a restart is
`pg_ctl restart` (every connection broken, committed rows kept), a stopped server refuses connections. The
checks are the store faults' count-level invariant: written + lost + pending = recorded, rows stored =
written, lost only where the router said so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from abtest.processes import ServiceError, free_port
from router.app import create_app
from router.config import RouterSettings
from router.store import OutcomeStore, PostgresBackend
from tests.reliability.conftest import USERS, RouterFactory, experiment, urls_of
from tests.reliability.load import Load
from tests.reliability.observe import metric, store_counters
from tests.reliability.services import Service
from tests.reliability.test_store_faults import INFOS, Traffic, wait_balanced
from tests.router.conftest import wait_until
from tests.support.postgres import PostgresCluster
from tests.support.servers import serve


def stored(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(sql).fetchall()


def test_postgres_restarted_mid_load_costs_retries_not_rows_and_the_router_recovers(
    models: dict[str, Service], start_router: RouterFactory, postgres: PostgresCluster, postgres_url: str
) -> None:
    router = start_router(experiment(urls_of(models)), env={"STORE_URL": postgres_url})
    with Load(router.url, users=USERS, concurrency=8, clicks=0.5) as load:
        load.wait_for(lambda t: t.answered >= 300, what="300 answers before the restart")
        postgres.restart()  # every connection the router holds is broken; committed rows stay
        restarted_at = load.tally.answered
        load.wait_for(lambda t: t.answered >= restarted_at + 600, timeout=60, what="600 answers after it")
    tally = load.tally
    assert {a.status for a in tally.answers} == {200}  # serving never depended on the store
    recorded = tally.answered + len(tally.acked_feedback) + INFOS

    def settled() -> bool:
        counters = store_counters(router.url)
        done = sum(counters["written"].values()) + sum(counters["lost"].values()) + counters["pending"]
        return bool(counters["pending"] == 0 and done == recorded)

    wait_until(settled, timeout=30, what=f"every one of {recorded} events written or counted")
    counters = store_counters(router.url)
    assert counters["errors"].get("unavailable", 0) >= 1  # the broken connection was seen and classified
    assert sum(counters["lost"].values()) == 0  # the queue outlasts a restart: retries, never a loss
    exposures = {row[0] for row in stored(postgres_url, "SELECT request_id FROM exposures")}
    assert exposures == set(tally.request_ids()) and counters["written"]["exposure"] == len(exposures)
    clicks = stored(postgres_url, "SELECT request_id, item_id FROM feedback")
    assert sorted(clicks) == sorted(tally.acked_feedback)  # every acknowledged click, once
    assert router.healthy()
    assert "outcome store write failed (unavailable:" in router.log_text()


@pytest.mark.parametrize(
    ("store_url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:{port}/abtest", "cannot connect to PostgreSQL"),
        ("mysql://root@127.0.0.1:{port}/abtest", "unknown store; use sqlite:///path or postgresql://"),
    ],
)
def test_a_store_url_nothing_answers_at_or_no_backend_knows_stops_the_router_with_exit_code_2(
    start_router: RouterFactory, tmp_path: Path, store_url: str, message: str
) -> None:
    nowhere = {"model_a": "http://127.0.0.1:9", "model_b": "http://127.0.0.1:9"}
    url = store_url.format(port=free_port())  # nothing listens there
    with pytest.raises(ServiceError, match="exited with code 2"):
        start_router(experiment(nowhere), env={"STORE_URL": url}, name="refused")
    log = (tmp_path / "refused.log").read_text()
    assert message in log and url.split("://")[0] in log
    assert "Traceback" not in log


@contextmanager
def router_over(
    tmp_path: Path, models: dict[str, Service], backend: PostgresBackend
) -> Iterator[tuple[str, OutcomeStore]]:
    """The router app in this process over `backend`, served on loopback."""
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment(urls_of(models))))
    store = OutcomeStore(backend, retry_max_delay=0.2)
    app = create_app(
        RouterSettings(results_dir=tmp_path / "results", config_path=config, health_interval=0.2), store=store
    )
    with serve(app) as url:
        wait_until(
            lambda: all(b["status"] == "up" for b in httpx.get(url + "/health").json()["backends"].values()),
            what="both backends up",
        )
        yield url, store


def test_postgres_down_with_a_full_queue_refuses_feedback_counts_lost_exposures_and_writes_the_rest_when_back(
    models: dict[str, Service],
    tmp_path: Path,
    postgres: PostgresCluster,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="router.store")
    traffic = Traffic()
    with (
        router_over(tmp_path, models, PostgresBackend(postgres_url, connect_timeout=1.0)) as (url, store),
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for user in USERS[:30]:
            traffic.visit(client, user)
        wait_until(lambda: store_counters(url)["pending"] == 0, what="the first events written")
        postgres.stop()
        try:
            store.max_pending = store_counters(url)["pending"] + 40
            users = iter(USERS * 10)
            while not traffic.refused:  # the queue fills while the server is down: clicks refused with 503
                assert len(traffic.answered) < 2_000, f"feedback was never refused: {store_counters(url)}"
                traffic.visit(client, next(users))
            for user in USERS[:20]:
                traffic.visit(client, user)
            overloaded = wait_balanced(url, traffic)
            assert overloaded["pending"] == store.max_pending
            assert overloaded["lost"]["exposure"] >= 20 and overloaded["lost"]["feedback"] == 0
            assert overloaded["errors"].get("unavailable", 0) >= 1
            assert metric(client.get("/metrics").text, "router_store_errors_total", kind="unavailable") >= 1
        finally:
            postgres.start()
        store.max_pending = 50_000
        wait_until(lambda: store_counters(url)["pending"] == 0, timeout=30, what="the queue to drain")
        recovered = wait_balanced(url, traffic)
    lost = recovered["lost"]["exposure"]
    assert recovered["lost"] == {
        "exposure": overloaded["lost"]["exposure"],
        "feedback": 0,
        "variant_info": 0,
        "shadow_call": 0,
    }
    in_store = {row[0] for row in stored(postgres_url, "SELECT request_id FROM exposures")}
    answered = set(traffic.answered)
    assert in_store <= answered and len(answered - in_store) == lost  # only the counted ones are missing
    assert set(stored(postgres_url, "SELECT request_id, item_id FROM feedback")) == set(traffic.clicks)
    messages = [r.getMessage() for r in caplog.records]
    assert any("outcome store queue full" in m and "not recorded" in m for m in messages), messages[:5]
