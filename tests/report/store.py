"""Build small outcome stores by hand (sqlite3 + the real DDL) for the report's tests.

with HandStore.create(tmp_path / "outcomes.sqlite3") as store:
    store.add_phase(1, "hash", {"model_a": 50, "model_b": 50})
    store.add_exposure("r1", phase=1, user_id="u1", variant="model_a")
    store.add_feedback("r1", event="click")
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from router.report import Report, build_report, write_reports
from router.store import STORE_FILE, SQLiteBackend
from router.store.rollup import RowMarks, rollup_statements, row_marks
from router.store.schema import ddl


@dataclass
class HandStore:
    """A writable store in WAL mode, as the router keeps it; rows are committed on every call, and counted in
    the report's rollups in the same transaction, as the router's writer counts them (router.store.rollup)."""

    connection: sqlite3.Connection
    exposures: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock: float = 1_700_000_000.0
    _marks: RowMarks | None = None

    @classmethod
    def create(cls, path: Path) -> HandStore:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(ddl("sqlite"))
        return cls(connection)

    def __enter__(self) -> HandStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.connection.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group many inserts into one commit (fast bulk loading), counted in the rollups at its end."""
        if self._marks is not None:  # already inside one: the outer one commits and counts
            yield
            return
        self.connection.execute("BEGIN IMMEDIATE")
        self._marks = row_marks(self.connection)
        try:
            yield
            for statement in rollup_statements("sqlite", self._marks):
                self.connection.execute(statement)
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        finally:
            self._marks = None
        self.connection.execute("COMMIT")

    def count(self, sql: str, *params: Any) -> int:
        """The single number a SQL query returns."""
        return int(self.connection.execute(sql, params).fetchone()[0] or 0)

    def add_phase(
        self,
        phase: int,
        strategy: str,
        weights: Mapping[str, float],
        *,
        experiment: str = "rec-ab",
        started_at: float | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> None:
        """A phase whose config_json has the router's shape (``router.config.phase_design``).

        `plan` adds recorded sections (``analysis``, ``metrics``, ``guardrails``, ``stopped``) as the router writes.
        """
        total = sum(weights.values())
        design: dict[str, Any] = {
            "experiment": experiment,
            "strategy": strategy,
            "salt": f"{experiment}-{phase}",
            "variants": [
                {"name": name, "url": f"http://{name}:8000", "weight": weight, "share": weight / total}
                for name, weight in weights.items()
            ],
            **(plan or {}),
        }
        self.connection.execute(
            "INSERT INTO phases (phase, experiment, started_at, config_key, config_json) VALUES (?,?,?,?,?)",
            (phase, experiment, self.clock if started_at is None else started_at, f"key{phase}", json.dumps(design)),
        )

    def add_exposure(
        self,
        request_id: str,
        *,
        phase: int,
        user_id: str,
        variant: str,
        strategy: str = "hash",
        assignment: str = "strategy",
        assigned_variant: str | None = None,
        status: int = 200,
        latency_ms: float = 5.0,
        error: str | None = None,
        ts: float | None = None,
        experiment: str = "rec-ab",
    ) -> None:
        self.clock += 1.0
        row = {
            "ts": self.clock if ts is None else ts,
            "request_id": request_id,
            "experiment": experiment,
            "phase": phase,
            "user_id": user_id,
            "variant": variant,
            "assigned_variant": assigned_variant or variant,
            "strategy": strategy,
            "assignment": assignment,
            "status": status,
            "latency_ms": latency_ms,
            "k": 10,
            "items": "[]" if error else json.dumps(list(range(10))),
            "error": error,
        }
        columns = ", ".join(row)
        with self.transaction():
            self.connection.execute(
                f"INSERT INTO exposures ({columns}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values())
            )
        self.exposures[request_id] = row

    def add_feedback(
        self,
        request_id: str,
        *,
        event: str = "click",
        item_id: int = 3,
        attributed_by: str = "request_id",
        value: float | None = None,
    ) -> None:
        """Feedback attributed to an exposure added before, copying its phase, user, variant and assignment."""
        exposure = self.exposures[request_id]
        self.clock += 1.0
        with self.transaction():
            self.connection.execute(
                "INSERT INTO feedback (ts, request_id, experiment, phase, user_id, variant, assignment, item_id,"
                " position, event, value, attributed_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    self.clock,
                    request_id,
                    exposure["experiment"],
                    exposure["phase"],
                    exposure["user_id"],
                    exposure["variant"],
                    exposure["assignment"],
                    item_id,
                    item_id if item_id < 10 else None,
                    event,
                    value,
                    attributed_by,
                ),
            )

    def add_variant_info(self, phase: int, variant: str, info: Mapping[str, Any]) -> None:
        self.connection.execute(
            "INSERT INTO variant_info (phase, variant, info_json, fetched_at) VALUES (?,?,?,?)",
            (phase, variant, json.dumps(info), self.clock),
        )


def report_of(path: Path, phase: int | None = None) -> Report:
    """The report of the SQLite store at `path` (what `abtest report` builds)."""
    return build_report(SQLiteBackend(path), phase)


def write_reports_in(results_dir: Path, phase: int | None = None) -> list[Path]:
    """report.md/html/json of `results_dir/outcomes.sqlite3`, written next to it."""
    return write_reports(SQLiteBackend(Path(results_dir) / STORE_FILE), Path(results_dir), phase)
