"""`abtest export` (and `abtest report`'s messages) on a real router's store: exports read back as exactly its rows."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from abtest.cli import main
from abtest.export import PARQUET_TYPES, export_phase
from router.store import SQLiteBackend
from router.store.schema import EXPOSURES, FEEDBACK
from tests.router.conftest import (  # the fake model servers
    Backend,
    backend_servers,  # noqa: F401
    backends,  # noqa: F401  # a fixture, used by name
    experiment,
    running_router,
    settings_for,
    write_config,
)

TOKEN = "export-token"


@pytest.fixture
def store(tmp_path: Path, backends: dict[str, Backend]) -> Path:  # noqa: F811
    """A store with two phases: 30 exposures and 10 clicks in phase 1, 5 exposures in phase 2."""
    settings = settings_for(tmp_path, experiment(backends), admin_token=TOKEN)
    with running_router(settings) as router:
        for number in range(30):
            body = router.client.get(f"/recommend/user-{number}", params={"k": 4}).json()
            if number % 3 == 0:
                click = {"request_id": body["request_id"], "user_id": f"user-{number}", "item_id": body["items"][1]}
                assert (
                    router.client.post("/feedback", json={**click, "event": "rating", "value": 4.5}).status_code == 202
                )
        write_config(settings.config_path, experiment(backends, salt="phase-two"))
        assert router.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        for number in range(5):
            router.client.get(f"/recommend/user-{number}")
        router.flush()
        return router.store_path


def stored(path: Path, table: str, phase: int) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table} WHERE phase = ? ORDER BY id", (phase,))]


@pytest.mark.parametrize("phase", [1, 2])
def test_export_writes_every_row_of_the_phase_as_csv_and_parquet(store: Path, tmp_path: Path, phase: int) -> None:
    import pyarrow.parquet as pq

    written = export_phase(SQLiteBackend(store), tmp_path / "out", phase)
    assert written["exposures"][1] == (30 if phase == 1 else 5)
    assert written["feedback"][1] == (10 if phase == 1 else 0)
    for table in (EXPOSURES, FEEDBACK):
        expected = stored(store, table.name, phase)
        assert written[table.name][1] == len(expected)
        csv_path, parquet_path = written[table.name][0]
        assert pq.read_table(parquet_path).to_pylist() == expected
        with csv_path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == list(table.column_names)
            assert list(reader) == [{k: "" if v is None else str(v) for k, v in row.items()} for row in expected]
    # and a notebook reads them as they are
    exposures = pd.read_parquet(written["exposures"][0][1])
    assert list(exposures.columns) == list(EXPOSURES.column_names) and len(exposures) == written["exposures"][1]


def test_parquet_types_follow_the_store_schema(store: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    written = export_phase(SQLiteBackend(store), tmp_path / "out", formats=["parquet"])
    schema = pq.read_schema(written["feedback"][0][0])
    for column in FEEDBACK.columns:
        field = schema.field(column.name)
        assert str(field.type).replace("double", "float64") == PARQUET_TYPES[column.type]
        assert field.nullable == column.nullable
    assert [p.suffix for p in written["exposures"][0]] == [".parquet"]
    assert "exposures-phase-2" in written["exposures"][0][0].name  # the latest phase by default


def test_abtest_export_command_writes_the_files_and_explains_a_missing_phase(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORE_URL", raising=False)
    out = tmp_path / "cli-out"
    assert (
        main(["export", "--results-dir", str(store.parent), "--phase", "1", "--format", "csv", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "exposures: 30 rows" in printed and "feedback: 10 rows" in printed
    assert sorted(p.name for p in out.iterdir()) == ["exposures-phase-1.csv", "feedback-phase-1.csv"]
    assert main(["export", "--results-dir", str(store.parent), "--phase", "9", "--out", str(out)]) == 2
    assert "phase 9 is not in the store (phases: 1, 2)" in capsys.readouterr().err
    assert main(["export", "--results-dir", str(tmp_path / "nothing")]) == 2
    assert "no outcome store yet" in capsys.readouterr().err


def test_abtest_report_on_a_phase_without_data_names_the_phase_that_has_it(
    tmp_path: Path,
    backends: dict[str, Backend],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after a phase change the latest phase is empty: `abtest report` says which --phase has data."""
    monkeypatch.delenv("STORE_URL", raising=False)
    settings = settings_for(tmp_path, experiment(backends), admin_token=TOKEN)
    with running_router(settings) as router:
        router.client.get("/recommend/user-1")
        write_config(settings.config_path, experiment(backends, salt="phase-two"))
        assert router.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        router.flush()
        results = str(router.store_path.parent)
    assert main(["report", "--results-dir", results, "--quiet"]) == 1
    assert "phase 2 has no exposures yet; phase 1 has data: abtest report --phase 1" in capsys.readouterr().err


def test_abtest_report_on_a_file_that_is_not_sqlite_is_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORE_URL", raising=False)
    (tmp_path / "outcomes.sqlite3").write_bytes(b"these are not the droids " * 200)
    assert main(["report", "--results-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the outcome store is not a SQLite database" in err and "Traceback" not in err
