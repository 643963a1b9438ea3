"""The A/B results report: pure statistics over the outcome store, rendered as Markdown, HTML and JSON.

    report = build_report(Path("results/outcomes.sqlite3"))          # latest phase; NoDataError if empty
    print(render_markdown(report))
    write_reports(Path("results"))                                   # report.md, report.html, report.json

Modules: ``load`` (read-only SQL), ``stats`` (pure statistics), ``build`` (assemble the Report),
``document`` (the Report dataclasses), ``render`` (md/html/json), ``errors`` (NoDataError, ...).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from router.report.build import build_report
from router.report.document import Report
from router.report.errors import NoDataError, ReportError, StoreFormatError
from router.report.render import render_html, render_markdown, report_to_json

STORE_NAME = "outcomes.sqlite3"

__all__ = [
    "STORE_NAME",
    "NoDataError",
    "Report",
    "ReportError",
    "StoreFormatError",
    "build_report",
    "render_html",
    "render_markdown",
    "report_to_json",
    "write_reports",
]


def write_reports(results_dir: Path, phase: int | None = None) -> list[Path]:
    """Write report.md, report.html and report.json next to ``outcomes.sqlite3`` in ``results_dir``.

    Each file is replaced atomically, so a reader never sees half a report.
    """
    directory = Path(results_dir)
    report = build_report(directory / STORE_NAME, phase)
    outputs = {
        "report.md": render_markdown(report),
        "report.html": render_html(report),
        "report.json": json.dumps(report_to_json(report), indent=2, allow_nan=False) + "\n",
    }
    paths = []
    for name, text in outputs.items():
        path = directory / name
        _write_atomically(path, text)
        paths.append(path)
    return paths


def _write_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is for everyone who can read the store
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
