"""Markdown, HTML and JSON renderings, and write_reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from router.report import (
    NoDataError,
    render_html,
    render_markdown,
    report_to_json,
)
from router.report.build import format_pp, verdict_for
from router.report.document import TreatmentResult
from router.report.stats import Difference, Estimate
from tests.report.store import HandStore, report_of, write_reports_in
from tests.report.test_build import HASH_WEIGHTS, fill_two_phases, generated_store


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    with HandStore.create(tmp_path / "outcomes.sqlite3") as store:
        fill_two_phases(store)
    return tmp_path


def result(difference: Difference, p_adjusted: float, *, significant: bool, more: int | None) -> TreatmentResult:
    return TreatmentResult(
        treatment="model_b",
        control="model_a",
        ctr=difference,
        p_adjusted=p_adjusted,
        significant=significant,
        conversion=None,
        detectable_effect=0.004,
        more_units_needed=more,
        verdict="",
    )


def test_verdict_names_winner_difference_interval_and_p_value() -> None:
    difference = Difference(
        0.10, 0.121, Estimate(0.021, 0.008, 0.034), Estimate(0.21, 0.07, 0.36), 0.002, "delta method"
    )

    verdict = verdict_for(
        result(difference, 0.002, significant=True, more=None), "user", several_treatments=False, srm=None
    )

    assert verdict == "model_b beats model_a on CTR by +2.1 pp [0.8, 3.4] (+21% relative), p = 0.002"


def test_verdict_without_significance_says_how_many_more_units_are_needed() -> None:
    difference = Difference(0.10, 0.104, Estimate(0.004, -0.005, 0.013), None, 0.41, "two-proportion")

    verdict = verdict_for(
        result(difference, 0.41, significant=False, more=3200), "request", several_treatments=True, srm=None
    )

    assert verdict == (
        "no significant difference yet between model_b and model_a on CTR (+0.4 pp [-0.5, 1.3], "
        "p (Holm) = 0.410); about 3,200 more requests per variant needed for 80% power to detect a 0.4 pp "
        "difference"
    )


def test_format_pp_keeps_two_decimals_for_small_differences() -> None:
    assert format_pp(Estimate(0.0012, -0.0003, 0.0027)) == "+0.12 pp [-0.03, 0.27]"
    assert format_pp(Estimate(-0.031, -0.05, -0.012)) == "-3.1 pp [-5.0, -1.2]"


def test_render_markdown_states_unit_verdict_and_every_section(results_dir: Path) -> None:
    report = report_of(results_dir / "outcomes.sqlite3", phase=1)
    text = render_markdown(report)

    assert text.startswith("# A/B results: rec-ab, phase 1\n")
    assert "the unit of analysis is the **user**" in text
    for title in (
        "Verdict",
        "Traffic per variant",
        "Outcomes per variant",
        "Treatment vs control",
        "Sample ratio",
        "Offline metrics",
        "Exclusions and data quality",
        "Method",
    ):
        assert f"\n## {title}" in text
    assert f"**model_b vs model_a**: {report.comparisons[0].verdict}" in text
    assert "Excluded exposures (not assigned by the strategy): 3 (fallback 1, override 2)" in text
    assert "Users seen in more than one variant: 1 (should be 0)" in text
    assert "Never per shown item" in text


def test_render_markdown_puts_sample_ratio_mismatch_first(tmp_path: Path) -> None:
    generated_store(
        tmp_path / "outcomes.sqlite3", {"model_a": 900, "model_b": 1100}, {"model_a": 0.1, "model_b": 0.1}, HASH_WEIGHTS
    )

    text = render_markdown(report_of(tmp_path / "outcomes.sqlite3"))

    assert text.index("> **SAMPLE-RATIO MISMATCH") < text.index("## Verdict")
    assert "verdict withheld: sample-ratio mismatch" in text


def test_report_to_json_is_strict_json_with_the_report_numbers(results_dir: Path) -> None:
    report = report_of(results_dir / "outcomes.sqlite3", phase=1)

    data = json.loads(json.dumps(report_to_json(report), allow_nan=False))

    assert data["report_version"] == 1
    assert data["phase"] == 1 and data["unit"] == "user"
    assert [v["exposures"] for v in data["variants"]] == [v.exposures for v in report.variants]
    assert data["exclusions"]["exposures_by_assignment"] == {"fallback": 1, "override": 2}
    assert data["comparisons"][0]["verdict"] == report.comparisons[0].verdict
    assert data["srm"]["observed"] == list(report.srm.observed) if report.srm else data["srm"] is None


def test_render_html_is_self_contained_with_three_plots(results_dir: Path) -> None:
    page = render_html(report_of(results_dir / "outcomes.sqlite3"))

    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3
    for anchor in ("verdict", "traffic", "outcomes", "comparisons", "plots", "srm", "offline", "exclusions"):
        assert f'id="{anchor}"' in page
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "@import" not in page and not re.search(r"url\((?!#)", page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    references = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert references <= set(ids)


def test_render_html_escapes_names_from_the_store(tmp_path: Path) -> None:
    with HandStore.create(tmp_path / "outcomes.sqlite3") as store:
        store.add_phase(1, "random", {"<b>a</b>": 1, "b": 1}, experiment="<script>x</script>")
        for i in range(6):
            store.add_exposure(
                f"r{i}",
                phase=1,
                user_id="u",
                variant=["<b>a</b>", "b"][i % 2],
                strategy="random",
                experiment="<script>x</script>",
            )

    page = render_html(report_of(tmp_path / "outcomes.sqlite3"))

    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>a</b>" not in page


def test_write_reports_writes_three_files_next_to_the_store(results_dir: Path) -> None:
    paths = write_reports_in(results_dir, phase=1)

    assert [p.name for p in paths] == ["report.md", "report.html", "report.json"]
    assert all(p.parent == results_dir for p in paths)
    assert "# A/B results: rec-ab, phase 1" in paths[0].read_text()
    assert json.loads(paths[2].read_text())["phase"] == 1
    assert sorted(p.name for p in results_dir.iterdir() if p.name.startswith(".")) == []  # no temp files left
    assert oct(paths[0].stat().st_mode & 0o777) == oct(0o644)


def test_write_reports_raises_no_data_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(NoDataError):
        write_reports_in(tmp_path)
    assert list(tmp_path.iterdir()) == []


def sparse_store(path: Path, case: str) -> None:
    with HandStore.create(path) as store:
        weights = {"model_a": 1.0} if case == "one variant" else {"model_a": 1.0, "model_b": 1.0, "model_c": 0.0}
        store.add_phase(1, "hash", weights)
        for i in range(4):
            failed = case == "all errors"
            store.add_exposure(
                f"r{i}",
                phase=1,
                user_id=f"u{i}",
                variant="model_a" if case == "one variant" or i % 2 else "model_b",
                status=504 if failed else 200,
                error="timeout" if failed else None,
                latency_ms=0.0 if case == "zero latency" else 3.0 + i,
            )
            if case == "all clicked":
                store.add_feedback(f"r{i}")


@pytest.mark.parametrize("case", ["one variant", "all errors", "zero latency", "all clicked", "no clicks"])
def test_render_handles_sparse_phases(tmp_path: Path, case: str) -> None:
    sparse_store(tmp_path / "outcomes.sqlite3", case)

    paths = write_reports_in(tmp_path)  # warnings are errors: no matplotlib/statsmodels/numpy warning either

    report = report_of(tmp_path / "outcomes.sqlite3")
    assert json.loads(paths[2].read_text())["phase"] == 1
    assert paths[1].read_text().count("<svg") == 3
    if case == "one variant":
        assert report.comparisons == ()
        assert "Only one variant in this phase" in paths[0].read_text()
    else:
        assert any("model_c has no analysed exposures" in note for note in report.notes)
        assert all(c.verdict for c in report.comparisons)
