"""The A/B results report: pure statistics over the outcome store, rendered as Markdown, HTML and JSON.

    store = backend_for("sqlite:///results/outcomes.sqlite3")         # router.store; or the router's OutcomeStore
    report = build_report(store)                                      # latest phase; NoDataError if empty
    print(render_markdown(report))
    write_reports(store, Path("results"))                             # report.md, report.html, report.json

Modules: ``load`` (one phase's aggregates from a store snapshot), ``stats`` (pure statistics), ``build``
(assemble the Report), ``document`` (the Report dataclasses), ``render`` (md/html/json); the shadow section
is ``shadow`` (the comparison, pure), ``shadow_section`` (read and assemble it) and ``shadow_render``. Its errors
(NoDataError, StoreFormatError) are part of router.errors' tree.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from router.errors import NoDataError, ReportError, StoreFormatError
from router.report.build import build_report
from router.report.document import Report
from router.report.load import PhaseList, SnapshotSource, list_phases
from router.report.render import (
    render_html,
    render_markdown,
    render_no_data_html,
    report_json_schema,
    report_to_json,
)
from router.report.shadow_section import ListAffinity

__all__ = [
    "NoDataError",
    "PhaseList",
    "Report",
    "ReportError",
    "StoreFormatError",
    "build_report",
    "list_phases",
    "render_html",
    "render_markdown",
    "render_no_data_html",
    "report_json_schema",
    "report_to_json",
    "write_reports",
]


def write_reports(
    store: SnapshotSource,
    directory: Path,
    phase: int | None = None,
    *,
    truth: ListAffinity | None = None,
    truth_name: str | None = None,
) -> list[Path]:
    """Write report.md, report.html and report.json of the store's phase into ``directory``.

    Each file is replaced atomically, so a reader never sees half a report. `truth`: see `build_report`.
    """
    directory = Path(directory)
    report = build_report(store, phase, truth=truth, truth_name=truth_name)
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
