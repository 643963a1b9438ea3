"""The outcome store fails (locked by another writer, full, read-only): requests are served, nothing vanishes.

How each failure is produced, and why it is the real thing:

- **locked**: another process-level connection holds `BEGIN EXCLUSIVE` on the store file, as a second writer
  (a backup, someone's `sqlite3` shell) would. The router's writer gets SQLITE_BUSY after its busy timeout.
- **full**: the writer thread's connections get `PRAGMA max_page_count` = the file's current size, so the
  next page it needs is refused with SQLITE_FULL ("database or disk is full"), the error and code a full disk
  gives. (A tmpfs or loop mount would need root and mount rights that CI need not have.)
- **readonly**: the writer thread's connections get `PRAGMA query_only`, so writes fail with SQLITE_READONLY
  ("attempt to write a readonly database"), what SQLite answers when it could open the file only for reading.
  (A chmod cannot stop root, and does not affect a connection that is already open.)

The last two run an in-process router over a SQLite backend whose writer-thread connections get the fault
(a subclass passed in through create_app's `store`); "freeing the disk" turns it off, and the writer's next
reconnect (it reconnects after every failure) succeeds.

Every check is the count-level invariant: written + lost + pending = recorded (answered exposures, accepted
clicks, variant infos), rows stored = written, lost only where the router said so.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from abtest.processes import CLEAN_EXIT_CODES, ServiceError
from router.app import create_app
from router.config import RouterSettings
from router.store import OutcomeStore, SQLiteBackend
from router.store.records import Record
from tests.reliability.conftest import USERS, RouterFactory, experiment, urls_of
from tests.reliability.observe import metric, rows, store_counters
from tests.reliability.services import Service, store_path
from tests.router.conftest import wait_until
from tests.support.servers import serve

INFOS = 2  # each variant's /info, recorded once per phase by the backend monitor


@dataclass
class Traffic:
    """What a sequential client got: request ids answered, clicks accepted, clicks refused."""

    answered: list[str] = field(default_factory=list)
    clicks: list[tuple[str, int]] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)

    def visit(self, client: httpx.Client, user: str) -> None:
        shown = client.get(f"/recommend/{user}", params={"k": 5})
        assert shown.status_code == 200, shown.text  # requests keep being served whatever the store does
        body = shown.json()
        self.answered.append(body["request_id"])
        click = {"request_id": body["request_id"], "user_id": user, "item_id": body["items"][0], "event": "click"}
        accepted = client.post("/feedback", json=click)
        if accepted.status_code == 202:
            self.clicks.append((body["request_id"], body["items"][0]))
        else:
            assert accepted.status_code == 503, accepted.text  # overloaded: refused, so not acknowledged
            assert accepted.headers["Retry-After"] == "1"
            self.refused.append(accepted.status_code)

    def recorded(self) -> int:
        return len(self.answered) + len(self.clicks) + INFOS


def balanced(counters: dict[str, Any], recorded: int) -> bool:
    return bool(sum(counters["written"].values()) + sum(counters["lost"].values()) + counters["pending"] == recorded)


def wait_balanced(url: str, traffic: Traffic) -> dict[str, Any]:
    """Poll until the store's counters account for everything recorded (the monitor's infos arrive async)."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(store_counters(url))
        return balanced(found, traffic.recorded())

    wait_until(check, what=f"written + lost + pending = {traffic.recorded()} recorded (last: {found})")
    return found


def test_store_locked_by_another_writer_is_retried_and_every_event_is_written_once_it_is_free(
    models: dict[str, Service], start_router: RouterFactory
) -> None:
    router = start_router(experiment(urls_of(models)))
    traffic = Traffic()
    with httpx.Client(base_url=router.url, timeout=10) as client:
        for user in USERS[:50]:
            traffic.visit(client, user)
        wait_until(lambda: store_counters(router.url)["pending"] == 0, what="the first events written")
        before = wait_balanced(router.url, traffic)

        locker = sqlite3.connect(store_path(router), isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            for user in USERS[50:150]:
                traffic.visit(client, user)
            wait_until(
                lambda: store_counters(router.url)["errors"].get("locked", 0) >= 2, what="two failed write attempts"
            )
            during = wait_balanced(router.url, traffic)
            assert during["written"] == before["written"]  # nothing can be written past the lock...
            assert sum(during["lost"].values()) == 0  # ...and nothing is given up on
            assert during["pending"] == 200  # 100 exposures + 100 clicks wait in the queue
            assert client.get("/health").json()["status"] == "ok"  # the router itself is fine
            assert metric(client.get("/metrics").text, "router_store_errors_total", kind="locked") >= 2
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_until(lambda: store_counters(router.url)["pending"] == 0, what="the queue to drain after the lock")
        after = wait_balanced(router.url, traffic)
    assert after["written"] == {"exposure": 150, "feedback": 150, "variant_info": INFOS, "shadow_call": 0}
    assert sum(after["lost"].values()) == 0
    assert len(traffic.answered) == 150 and len(traffic.clicks) == 150 and not traffic.refused
    assert {r[0] for r in rows(store_path(router), "SELECT request_id FROM exposures")} == set(traffic.answered)
    assert sorted(rows(store_path(router), "SELECT request_id, item_id FROM feedback")) == sorted(traffic.clicks)
    log = router.log_text()
    assert "outcome store write failed (locked: database is locked)" in log
    assert '"level":"error"' in log


class FaultySQLiteBackend(SQLiteBackend):
    """While `active`, the connection the store's writer opens for events fails writes like a full disk or a
    read-only file (phases, which the writer thread also records, are left to work: the router must start)."""

    def __init__(self, path: Path, kind: str, *, active: bool = True) -> None:
        super().__init__(path)
        self.kind = kind  # "full" or "readonly"
        self.active = active
        self._writing = False

    def write(self, batch: Sequence[Record]) -> Mapping[str, int]:
        self._writing = True
        try:
            return super().write(batch)
        finally:
            self._writing = False

    def connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = super().connect(check_same_thread=check_same_thread)
        if self.active and self._writing:
            if self.kind == "full":
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages}")
            else:
                conn.execute("PRAGMA query_only = ON")
        return conn


@contextmanager
def router_with_faulty_store(
    tmp_path: Path, models: dict[str, Service], fault: FaultySQLiteBackend
) -> Iterator[tuple[str, OutcomeStore]]:
    """The router app in this process over the faulty backend, served on loopback."""
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment(urls_of(models))))
    store = OutcomeStore(fault)
    app = create_app(
        RouterSettings(results_dir=tmp_path / "results", config_path=config, health_interval=0.2), store=store
    )
    with serve(app) as url:
        wait_until(
            lambda: all(b["status"] == "up" for b in httpx.get(url + "/health").json()["backends"].values()),
            what="both backends up",
        )
        yield url, store


def faulty(tmp_path: Path, kind: str, *, active: bool = True) -> FaultySQLiteBackend:
    return FaultySQLiteBackend(tmp_path / "results" / "outcomes.sqlite3", kind, active=active)


def path_of(store: OutcomeStore) -> Path:
    backend = store.backend
    assert isinstance(backend, SQLiteBackend)
    return backend.path


def stored(store: OutcomeStore, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{path_of(store)}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("kind", ["full", "readonly"])
def test_store_full_or_read_only_keeps_serving_counts_every_event_and_writes_them_once_it_recovers(
    models: dict[str, Service], tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.ERROR, logger="router.store")
    fault = faulty(tmp_path, kind)
    traffic = Traffic()
    with router_with_faulty_store(tmp_path, models, fault) as (url, store), httpx.Client(base_url=url) as client:
        users = iter(USERS * 10)
        # Send until the store has failed twice (a read-only store fails at once; a full one after a few pages).
        while store_counters(url)["errors"].get(kind, 0) < 2:
            assert len(traffic.answered) < 2_000, f"the store never failed with {kind}: {store_counters(url)}"
            traffic.visit(client, next(users))
        failing = wait_balanced(url, traffic)
        assert failing["pending"] > 0 and sum(failing["lost"].values()) == 0
        assert metric(client.get("/metrics").text, "router_store_errors_total", kind=kind) >= 2

        # The queue fills up while the store fails: clicks are refused (503), exposures are served and counted lost.
        store.max_pending = failing["pending"] + 10
        while not traffic.refused:
            assert len(traffic.answered) < 4_000, "feedback was never refused although the queue was full"
            traffic.visit(client, next(users))
        for user in USERS[:20]:
            traffic.visit(client, user)
        overloaded = wait_balanced(url, traffic)
        assert overloaded["pending"] == store.max_pending
        assert overloaded["lost"]["exposure"] >= 20 and overloaded["lost"]["feedback"] == 0
        assert client.get("/health").json()["store"]["lost"] == overloaded["lost"]

        fault.active = False  # the disk has space again / the file is writable again
        store.max_pending = 50_000
        wait_until(lambda: store_counters(url)["pending"] == 0, timeout=15, what="the queue to drain")
        recovered = wait_balanced(url, traffic)
        lost_exposures = recovered["lost"]["exposure"]
        assert recovered["lost"] == {
            "exposure": overloaded["lost"]["exposure"],
            "feedback": 0,
            "variant_info": 0,
            "shadow_call": 0,
        }
        assert recovered["written"] == {
            "exposure": len(traffic.answered) - lost_exposures,
            "feedback": len(traffic.clicks),
            "variant_info": INFOS,
            "shadow_call": 0,
        }
    answered, clicks = set(traffic.answered), set(traffic.clicks)
    in_store = {r[0] for r in stored(store, "SELECT request_id FROM exposures")}
    assert in_store <= answered and len(answered - in_store) == lost_exposures  # only the counted ones are missing
    assert set(stored(store, "SELECT request_id, item_id FROM feedback")) == clicks  # every acknowledged click
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"outcome store write failed ({kind}:") for m in messages), messages[:5]
    assert any("outcome store queue full" in m and "not recorded" in m for m in messages), messages[:5]
    print(
        f"\n{kind}: {len(traffic.answered)} answered, {len(traffic.clicks)} clicks accepted, "
        f"{len(traffic.refused)} refused while the queue was full, {lost_exposures} exposures counted lost"
    )


def test_store_still_failing_at_shutdown_counts_what_it_could_not_write_as_lost(
    models: dict[str, Service], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="router.store")
    traffic = Traffic()
    with (
        router_with_faulty_store(tmp_path, models, faulty(tmp_path, "full")) as (url, store),
        httpx.Client(base_url=url) as client,
    ):
        store._stop_timeout = 1.0  # how long the stop keeps retrying a failing store (10 s in production)
        users = iter(USERS * 10)
        while store_counters(url)["errors"].get("full", 0) < 1:
            assert len(traffic.answered) < 2_000, "the store never filled up"
            traffic.visit(client, next(users))
        pending = wait_balanced(url, traffic)["pending"]
        assert pending > 0
    # The server has stopped: its store retried for 1 s, then gave up on what it could not write.
    stats = store.stats()
    assert stats["pending"] == 0
    assert sum(stats["lost"].values()) == pending
    assert sum(stats["written"].values()) + sum(stats["lost"].values()) == traffic.recorded()
    assert stats["written"]["exposure"] == len(stored(store, "SELECT request_id FROM exposures"))
    assert stats["written"]["feedback"] == len(stored(store, "SELECT id FROM feedback"))
    assert any(
        "could not be written and are lost" in r.getMessage() and str(pending) in r.getMessage() for r in caplog.records
    )


def test_store_locked_at_start_up_stops_the_router_with_a_clear_message(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    nowhere = {"model_a": "http://127.0.0.1:9", "model_b": "http://127.0.0.1:9"}
    first = start_router(experiment(nowhere))
    assert first.stop() in CLEAN_EXIT_CODES
    with closing(sqlite3.connect(store_path(first), isolation_level=None)) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ServiceError, match="exited with code 3"):
            start_router(experiment(nowhere), name="second")
        locker.execute("ROLLBACK")
    log = (tmp_path / "second.log").read_text()
    assert f"cannot open the outcome store {store_path(first)}: database is locked" in log


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_store_file_deleted_or_replaced_while_running_is_an_error_not_a_silent_loss(
    models: dict[str, Service], tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """An operator removes the file (or moves a copy over it): writes to the old, unlinked file would vanish."""
    caplog.set_level(logging.ERROR, logger="router.store")
    traffic = Traffic()
    with (
        router_with_faulty_store(tmp_path, models, faulty(tmp_path, "full", active=False)) as (url, store),
        httpx.Client(base_url=url) as client,
    ):
        store._stop_timeout = 1.0  # how long the stop keeps retrying a failing store (10 s in production)
        for user in USERS[:20]:
            traffic.visit(client, user)
        wait_until(lambda: store_counters(url)["pending"] == 0, what="the first events written")
        before = wait_balanced(url, traffic)
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path_of(store)}{suffix}").unlink(missing_ok=True)
        else:
            with (
                closing(sqlite3.connect(path_of(store))) as source,
                closing(sqlite3.connect(tmp_path / "copy")) as copy,
            ):
                source.backup(copy)
            (tmp_path / "copy").replace(path_of(store))
        for user in USERS[20:40]:
            traffic.visit(client, user)
        wait_until(lambda: store_counters(url)["errors"].get("moved", 0) >= 1, what="the writer to notice")
        during = wait_balanced(url, traffic)
        assert during["written"] == before["written"]  # nothing is claimed written into a file nobody can see
        assert during["pending"] == 40
    stats = store.stats()  # stopped: retried for 1 s, then gave up on the 40 events and counted them
    assert stats["lost"] == {"exposure": 20, "feedback": 20, "variant_info": 0, "shadow_call": 0}
    assert sum(stats["written"].values()) + sum(stats["lost"].values()) == traffic.recorded()
    on_disk = stored(store, "SELECT COUNT(*) FROM exposures")[0][0] if path_of(store).exists() else 0
    assert on_disk == (20 if how == "replaced" else 0)
    assert any("was deleted or replaced" in r.getMessage() for r in caplog.records)
