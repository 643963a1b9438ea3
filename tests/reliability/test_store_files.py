"""The store's -wal and -shm files deleted or replaced under a running router: noticed, refused, counted, rescued.

SQLite keeps every transaction since the last checkpoint in `-wal`. Deleted, the router's writer went on
committing into the unlinked file and counting its batches as written while other readers got "disk I/O
error"; a SIGKILL then lost events acknowledged seconds earlier while /health said 0 lost. Now the writer
notices before its next batch, first checkpoints what its connection still holds into the main file, then
writes nothing more (kind `moved`, /health `store.failing`): after a SIGKILL, every event counted as written is
in the main file.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import USERS, RouterFactory, experiment, urls_of
from tests.reliability.observe import store_counters
from tests.reliability.services import Service, store_path
from tests.router.conftest import wait_until


def visit(client: httpx.Client, user: str) -> None:
    """One answered recommendation and one accepted click: two events for the store."""
    answer = client.get(f"/recommend/{user}", params={"k": 3})
    assert answer.status_code == 200
    body = answer.json()
    click = {"request_id": body["request_id"], "user_id": user, "item_id": body["items"][0], "event": "click"}
    assert client.post("/feedback", json=click).status_code == 202


def on_disk(store: Path) -> tuple[int, int]:
    """(exposures, clicks) in the main file alone, read from a copy (so nothing next to the store is touched)."""
    copy = store.with_name("inspected.sqlite3")
    shutil.copyfile(store, copy)
    with closing(sqlite3.connect(copy)) as conn:
        return (
            conn.execute("SELECT COUNT(*) FROM exposures").fetchone()[0],
            conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0],
        )


@pytest.mark.parametrize("fault", ["wal-deleted", "wal-replaced", "shm-deleted"])
def test_a_deleted_or_replaced_wal_or_shm_is_noticed_counted_and_nothing_counted_written_is_lost(
    models: dict[str, Service], start_router: RouterFactory, fault: str
) -> None:
    router = start_router(experiment(urls_of(models)))
    store = store_path(router)
    with httpx.Client(base_url=router.url, timeout=10) as client:
        for user in USERS[:50]:
            visit(client, user)
        wait_until(lambda: store_counters(router.url)["pending"] == 0, what="the first events written")
        before = store_counters(router.url)
        assert before["failing"] is None
        assert before["written"]["exposure"] == before["written"]["feedback"] == 50
        assert on_disk(store) != (50, 50)  # the premise: the latest events live only in the -wal so far

        suffix = "-wal" if fault.startswith("wal") else "-shm"
        companion = store.with_name(store.name + suffix)
        if fault.endswith("deleted"):
            companion.unlink()
        else:
            shutil.copyfile(companion, companion.with_name("copy"))
            companion.with_name("copy").replace(companion)

        for user in USERS[50:70]:
            visit(client, user)  # still served and accepted: the queue has room
        wait_until(lambda: store_counters(router.url)["errors"].get("moved", 0) >= 1, what="the writer to notice")
        during = store_counters(router.url)
        assert during["failing"]["kind"] == "moved" and suffix in during["failing"]["error"]
        assert during["written"] == before["written"]  # nothing claimed written into a file nobody can see
        assert during["pending"] == 40 and sum(during["lost"].values()) == 0
        assert f"outcome store's {suffix} file" in router.log_text()

        router.signal(signal.SIGKILL)  # the worst moment: nothing gets a chance to clean up
    exposures, clicks = on_disk(store)
    assert (exposures, clicks) == (50, 50), "events counted as written are missing from the main file"
