"""`abtest export`: one phase's exposures and feedback as CSV and Parquet files, for the team's own notebooks.

    written = export_phase(backend_for("sqlite:///results/outcomes.sqlite3"), Path("results/export"), phase=1)
    written["exposures"]   # ([.../exposures-phase-1.csv, .../exposures-phase-1.parquet], 20000)

The columns are the store's own (router.store.schema, documented once in docs/store.md), in the same order,
with the same names and meanings; Parquet gets types from the schema (docs/export.md). Rows are read from one
read snapshot in batches, so the export is consistent and its memory does not grow with the phase. Each file is
written beside its final name and renamed into place, so a notebook never reads half a file.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from router.store.schema import EXPOSURES, FEEDBACK, Column, ColumnType, Table

if TYPE_CHECKING:
    import pyarrow as pa

Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")
TABLES = (EXPOSURES, FEEDBACK)
#: Rows per read and per Parquet row group.
BATCH_ROWS = 10_000

PARQUET_TYPES: dict[ColumnType, str] = {"id": "int64", "integer": "int64", "real": "float64", "text": "string"}


class ExportError(Exception):
    """The export cannot be done as asked (no such phase, a store without row access, pyarrow missing)."""


class Store(Protocol):
    """An outcome store or a backend (router.store): anything with a read snapshot."""

    def snapshot(self) -> Any: ...


def export_phase(
    store: Store, directory: Path, phase: int | None = None, *, formats: Sequence[Format] | None = None
) -> dict[str, tuple[list[Path], int]]:
    """Write `<table>-phase-<N>.<format>` for exposures and feedback; {table: (files, rows)}.

    Raises ExportError for a phase that is not in the store; router.errors' NoDataError when there is no store.
    """
    chosen = tuple(dict.fromkeys(formats or FORMATS))
    if "parquet" in chosen:
        _pyarrow()  # fail before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[list[Path], int]] = {}
    with store.snapshot() as snapshot:
        phases = snapshot.phases()
        number = phases[-1] if phases and phase is None else phase
        if number is None or number not in phases:
            raise ExportError(f"phase {number} is not in the store (phases: {', '.join(map(str, phases)) or 'none'})")
        connection = getattr(snapshot, "connection", None)
        if connection is None:
            raise ExportError(f"this store ({type(snapshot).__name__}) gives no row access to export from")
        for table in TABLES:
            paths = [directory / f"{table.name}-phase-{number}.{fmt}" for fmt in chosen]
            rows = _write(table, lambda table=table: _rows(connection, table, number), paths)
            written[table.name] = (paths, rows)
    return written


def _rows(connection: Any, table: Table, phase: int) -> Iterator[Sequence[Any]]:
    """The phase's rows of `table` in row order, fetched in batches."""
    mark = "?" if isinstance(connection, sqlite3.Connection) else "%s"
    cursor = connection.execute(
        f"SELECT {', '.join(table.column_names)} FROM {table.name} WHERE phase = {mark} ORDER BY id", (phase,)
    )
    while batch := cursor.fetchmany(BATCH_ROWS):
        yield from batch


def _write(table: Table, rows: Any, paths: Sequence[Path]) -> int:
    """Each file from a fresh pass over the rows (the snapshot is one transaction: every pass sees the same)."""
    count = 0
    for path in paths:
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            count = (
                _write_csv(table, rows(), temporary)
                if path.suffix == ".csv"
                else _write_parquet(table, rows(), temporary)
            )
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return count


def _write_csv(table: Table, rows: Iterator[Sequence[Any]], path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def parquet_schema(table: Table) -> pa.Schema:
    """The Parquet schema of a table: the store's column names and nullability, types from PARQUET_TYPES."""
    pa = _pyarrow()
    return pa.schema([_field(pa, column) for column in table.columns])


def _field(pa: Any, column: Column) -> Any:
    kind = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}[PARQUET_TYPES[column.type]]
    return pa.field(column.name, kind, nullable=column.nullable)


def _write_parquet(table: Table, rows: Iterator[Sequence[Any]], path: Path) -> int:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    schema = parquet_schema(table)
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[Sequence[Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                writer.write_table(_table(pa, schema, batch))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(_table(pa, schema, batch))
            count += len(batch)
    return count


def _table(pa: Any, schema: Any, batch: list[Sequence[Any]]) -> Any:
    columns: list[Sequence[Any]] = list(zip(*batch, strict=True)) if batch else [() for _ in schema.names]
    return pa.Table.from_arrays(
        [pa.array(values, type=field.type) for values, field in zip(columns, schema, strict=True)], schema=schema
    )


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise ExportError("Parquet needs pyarrow: pip install 'ab-router[export]' (or --format csv)") from exc
    return pyarrow
