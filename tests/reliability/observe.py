"""Reading what a running router says about itself (/health, /metrics) and what its outcome store holds.

counters = store_counters(router.url)     # written/lost by kind, pending, errors: from /health
count(store_path(router), "SELECT COUNT(*) FROM exposures")
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from router.strategies import HashStrategy, bucket_ranges


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Query the outcome store read-only (a router may be writing it meanwhile)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        return conn.execute(sql, params).fetchall()


def count(path: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(rows(path, sql, params)[0][0])


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if there is none)."""
    return sum(value for found, value in samples(text, name) if all(found.get(k) == v for k, v in labels.items()))


def store_counters(url: str) -> dict[str, Any]:
    """The outcome store's counters from GET /health, checked against the same counters in GET /metrics."""
    health = httpx.get(url + "/health", timeout=5).json()["store"]
    text = httpx.get(url + "/metrics", timeout=5).text
    for name, key in (("router_events_written_total", "written"), ("router_events_lost_total", "lost")):
        exported = {labels["kind"]: int(value) for labels, value in samples(text, name)}
        # The writer may commit between the two reads: /metrics, read second, can only be ahead.
        assert all(exported[kind] >= count for kind, count in health[key].items()), (name, exported, health)
    return dict(health)


def assigned(users: list[str], salt: str, weights: list[tuple[str, float]]) -> dict[str, str]:
    """The variant the hash strategy gives each user (what the router must do)."""
    strategy = HashStrategy(bucket_ranges(weights), salt=salt)
    return {user: strategy.assign(user).variant for user in users}
