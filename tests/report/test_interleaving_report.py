"""The report of an interleaving phase, over stores generated through the real write path: the per-user credits
counted in SQL give exactly what the pure core computes from the rows, and md/html/json show the verdict."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from router.config import build_config, phase_design, phase_key
from router.interleaving import Interleaving, attribute, team_draft
from router.report import build_report, render_html, render_markdown, report_to_json
from router.report.interleaving import DegradedCounts, Preference, compare_interleaved, user_credits
from router.store import Exposure, Feedback, SQLiteBackend
from router.store.records import Record

A, B = "model_a", "model_b"
K = 6


def interleave_config(strategy: str = "interleave") -> dict[str, object]:
    return {
        "experiment": "rec-ab",
        "strategy": strategy,
        "salt": "s",
        "variants": [{"name": name, "url": f"http://{name}:8000", "weight": 50} for name in (A, B)],
    }


def shown(n: int, user: str, merged: Interleaving | None, *, status: int = 200) -> Exposure:
    return Exposure(
        ts=1_700_000_000.0 + n,
        request_id=f"{n:032x}",
        experiment="rec-ab",
        phase=1,
        user_id=user,
        variant="interleaved",
        assigned_variant="interleaved",
        strategy="interleave",
        assignment="strategy",
        propensity=1.0,
        status=status,
        latency_ms=4.0,
        k=K,
        items=() if merged is None else merged.items,
        error=None if merged is not None else "timeout",
        teams=() if merged is None else merged.teams,
        failed_variant=None if merged is None else merged.failed,
    )


def clicked(seen: Exposure, item: int) -> Feedback:
    position = seen.items.index(item) if item in seen.items else None
    return Feedback(
        ts=seen.ts + 0.5,
        request_id=seen.request_id,
        experiment=seen.experiment,
        phase=seen.phase,
        user_id=seen.user_id,
        variant=seen.team_of(position),
        assignment=seen.assignment,
        item_id=item,
        position=position,
        event="click",
        value=None,
        attributed_by="request_id",
    )


def generated_store(path: Path, *, users: int, prefer_b: float, seed: int) -> tuple[SQLiteBackend, Preference, int]:
    """A phase of interleaved traffic: users who click model_b's items with `prefer_b` odds over model_a's,
    some degraded and some failed interleaves, duplicate clicks and clicks on items not shown.

    Returns the backend, what the pure core computes from the same rows (the expected analysis), and how many
    interleaves failed whole."""
    rng = np.random.default_rng(seed)
    config = build_config(interleave_config())
    backend = SQLiteBackend(path)
    backend.open()
    backend.start_phase("rec-ab", phase_key(config), phase_design(config))
    records: list[Record] = []
    rows: list[tuple[str, int, int, bool]] = []  # user, credit a, credit b, degraded: the core's input
    failed_by: list[str | None] = []
    n = 0
    for u in range(users):
        user = f"user-{u}"
        for _ in range(int(rng.integers(1, 6))):
            n += 1
            lists: dict[str, list[int] | None] = {
                A: [int(i) for i in rng.permutation(20)[:K]],
                B: [int(i) for i in rng.permutation(20)[:K]],
            }
            outage = rng.random()
            if outage < 0.04:
                records.append(shown(n, user, None, status=504))  # both backends failed
                continue
            if outage < 0.12:
                lists[A if outage < 0.08 else B] = None
            merged = team_draft(lists, K, f"{n:032x}")
            exposure = shown(n, user, merged)
            records.append(exposure)
            failed_by.append(merged.failed)
            odds = np.where(np.array(merged.teams) == B, prefer_b, 1.0) * 0.15
            items = [item for item, p in zip(merged.items, odds, strict=True) if rng.random() < p]
            items += items[:1] + ([999] if rng.random() < 0.1 else [])  # a double click, a click on nothing shown
            records += [clicked(exposure, item) for item in items]
            credit = attribute(merged, items)
            rows.append((user, credit.of(A), credit.of(B), merged.degraded))
    backend.write(records)
    ids, credit_a, credit_b, degraded = zip(*rows, strict=True)
    failed = sum(1 for r in records if isinstance(r, Exposure) and r.status != 200)
    counts = DegradedCounts(len(failed_by) + failed, ((A, failed_by.count(A)), (B, failed_by.count(B))))
    expected = compare_interleaved(A, B, user_credits(ids, credit_a, credit_b, degraded), counts)
    return backend, expected, failed


def test_the_stores_per_user_credits_give_exactly_the_cores_analysis_of_the_rows(tmp_path: Path) -> None:
    backend, expected, failed = generated_store(tmp_path / "outcomes.sqlite3", users=80, prefer_b=3.0, seed=5)
    try:
        report = build_report(backend)
    finally:
        backend.close()
    assert report.interleaving is not None
    assert report.interleaving.preference == expected
    assert report.interleaving.failed == failed > 0
    assert report.interleaving.preference.degraded.degraded > 0
    assert report.interleaving.verdict == report.interleaving.preference.sequential_verdict
    # The A/B tables show the merged lists as one row, with no sample-ratio alarm and no A/B comparison.
    assert [v.name for v in report.variants] == ["interleaved"] and report.comparisons == ()
    assert report.control == A and not report.verdict_withheld


def test_a_strong_preference_gives_both_verdicts_in_every_rendering(tmp_path: Path) -> None:
    backend, _, _ = generated_store(tmp_path / "outcomes.sqlite3", users=300, prefer_b=4.0, seed=8)
    try:
        report = build_report(backend)
    finally:
        backend.close()
    assert report.interleaving is not None
    preference = report.interleaving.preference
    assert preference.significant and preference.delta is not None and preference.delta.low > 0
    assert preference.verdict.startswith("users prefer model_b's recommendations: Δ = +")
    assert report.interleaving.verdict.startswith("users prefer model_b's recommendations at any stopping time")
    markdown = render_markdown(report)
    assert markdown.startswith("# Interleaving results: rec-ab, phase 1")
    for line in (report.interleaving.verdict, preference.verdict, preference.degraded.note()):
        assert line in markdown
    assert "## Preference per user" in markdown and f"| model_b | {preference.wins:,} |" in markdown
    page = render_html(report)
    assert 'id="interleaving-verdict"' in page and 'id="interleaving-votes"' in page
    data = json.loads(json.dumps(report_to_json(report), allow_nan=False))
    assert data["interleaving"]["preference"]["wins"] == preference.wins
    assert data["interleaving"]["preference"]["sequential"]["interval"]["low"] > 0


def test_an_interleaving_phase_without_clicks_says_why_there_is_no_verdict(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    quiet = SQLiteBackend(path)
    quiet.open()
    config = build_config(interleave_config())
    quiet.start_phase("rec-ab", phase_key(config), phase_design(config))
    quiet.write([shown(1, "u1", team_draft({A: [1, 2], B: [2, 3]}, K, "r"))])
    try:
        report = build_report(quiet)
    finally:
        quiet.close()
    assert report.interleaving is not None
    assert report.interleaving.preference.delta is None
    assert report.interleaving.verdict.startswith("no always-valid interval yet")
    assert "no user has a credited click yet" in render_markdown(report)
    json.dumps(report_to_json(report), allow_nan=False)


@pytest.mark.parametrize("strategy", ["hash", "random"])
def test_a_phase_of_one_variant_per_request_has_no_interleaving_section(tmp_path: Path, strategy: str) -> None:
    backend = SQLiteBackend(tmp_path / "outcomes.sqlite3")
    backend.open()
    config = build_config(interleave_config(strategy))
    backend.start_phase("rec-ab", phase_key(config), phase_design(config))
    merged = shown(1, "u1", team_draft({A: [1, 2], B: [2, 3]}, K, "r"))
    single = replace(merged, variant=A, assigned_variant=A, strategy=strategy, teams=None)
    backend.write([single, clicked(single, 1)])
    try:
        report = build_report(backend)
    finally:
        backend.close()
    assert report.interleaving is None
    assert render_markdown(report).startswith("# A/B results")
