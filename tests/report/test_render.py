"""Markdown, HTML and JSON renderings, and write_reports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from router.report import (
    NoDataError,
    render_html,
    render_markdown,
    report_to_json,
)
from router.report.document import MetricComparison, PlanProgress, Stop
from router.report.stats import Estimate
from router.report.verdict import format_pp, verdict_for
from tests.report.store import HandStore, report_of, write_reports_in
from tests.report.test_build import HASH_WEIGHTS, fill_two_phases, generated_store


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    with HandStore.create(tmp_path / "outcomes.sqlite3") as store:
        fill_two_phases(store)
    return tmp_path


def ctr(
    difference: Estimate | None, p_value: float | None, *, analysis: str = "sequential", reason: str | None = None
) -> MetricComparison:
    significant = difference is not None and (difference.low > 0 or difference.high < 0)
    return MetricComparison(
        metric="ctr",
        label="CTR per exposure",
        scale="share",
        analysis="fixed" if analysis == "fixed" else "sequential",
        control=0.10,
        treatment=None if difference is None else 0.10 + difference.value,
        difference=difference,
        relative=None if difference is None else Estimate(0.21, 0.07, 0.36),
        p_value=p_value,
        significant=significant,
        compared_per="user",
        method="test",
        reason=reason,
    )


def plan(fraction: float, analysis: str = "sequential") -> PlanProgress:
    return PlanProgress(
        "fixed" if analysis == "fixed" else "sequential", 2748, 2748, 0.005, 0.8, fraction, fraction >= 1, None
    )


def verdict(primary: MetricComparison, **options: Any) -> str:
    settings: dict[str, Any] = {
        "treatment": "model_b",
        "control": "model_a",
        "unit": "user",
        "plans": (),
        "several_treatments": False,
        "srm": None,
        "stop": None,
        "stop_in_effect": False,
    }
    settings.update(options)
    return verdict_for(primary, **settings)


def test_sequential_verdict_names_winner_interval_and_always_valid_p() -> None:
    line = verdict(ctr(Estimate(0.021, 0.008, 0.034), 0.002))

    assert line == (
        "model_b beats model_a on CTR by +2.1 pp [0.8, 3.4] (+21% relative), always-valid p = 0.002 "
        "(sequential: valid whenever it is read)"
    )


def test_sequential_verdict_without_significance_gives_progress_not_post_hoc_power() -> None:
    line = verdict(ctr(Estimate(0.004, -0.005, 0.013), 0.41), plans=(plan(0.4),), several_treatments=True)

    assert line == (
        "no significant difference so far between model_b and model_a on CTR (+0.4 pp [-0.5, 1.3], "
        "always-valid p (Bonferroni) = 0.410); the sequential analysis may be read at any time; 40% of the "
        "planned maximum (2,748 per variant) reached"
    )
    reached = verdict(ctr(Estimate(0.004, -0.005, 0.013), 0.41), plans=(plan(1.2),))
    assert reached.endswith(
        "the planned maximum of 2,748 per variant is reached: a true difference is probably smaller than 0.5 pp"
    )


def test_fixed_horizon_verdict_says_nothing_before_the_planned_size() -> None:
    gated = ctr(None, None, analysis="fixed", reason="not reached")

    line = verdict(gated, plans=(plan(0.86, "fixed"),))

    assert line == (
        "no verdict yet for model_b vs model_a: the fixed-horizon test is valid only at the planned size of "
        "2,748 per variant, 86% reached; reading it earlier and stopping at a significant result inflates "
        "false positives"
    )
    at_size = verdict(ctr(Estimate(0.004, -0.005, 0.013), 0.41, analysis="fixed"), plans=(plan(1.0, "fixed"),))
    assert at_size.startswith("no significant difference between model_b and model_a on CTR at the planned size")
    assert "would have been found with 80% power" in at_size


def test_verdict_of_a_stopped_variant_says_by_which_guardrail_and_when() -> None:
    stop = Stop("model_b", "error_rate", 1_700_000_100.0, 3, "model_a", "worse by +30 pp [24, 36] (tolerance 2 pp)")

    line = verdict(ctr(None, None, reason="no data"), stop=stop, stop_in_effect=True)

    assert line == (
        "model_b was stopped by guardrail error_rate at 2023-11-14 22:15:00 UTC (phase 3: worse by +30 pp [24, 36] "
        "(tolerance 2 pp)); its users are served by model_a until an admin resumes it"
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
        "Planned sample size",
        "Guardrails",
        "Sample ratio",
        "Offline metrics",
        "Exclusions and data quality",
        "Method",
    ):
        assert f"\n## {title}" in text
    comparison = report.comparisons[0]
    assert (
        "**model_b vs model_a** - analysis: sequential (always valid: may be read at any time); planned size: "
        f"none configured; guardrails: none configured. **Verdict:** {comparison.verdict}"
    ) in text
    assert "Excluded exposures (not randomised: QA overrides): 2 (override 2)" in text
    assert "Fallback exposures, counted for the variant assigned (intention to treat): 1." in text
    assert "Users assigned to more than one variant: 1 (should be 0)" in text
    assert "Never per shown item" in text and "Intention to treat: every randomised exposure" in text


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

    assert data["report_version"] == 2
    assert data["phase"] == 1 and data["unit"] == "user"
    assert [v["exposures"] for v in data["variants"]] == [v.exposures for v in report.variants]
    assert data["exclusions"]["exposures_by_assignment"] == {"override": 2}
    assert data["analysis"]["sequential"] is True and data["comparisons"][0]["analysis"] == "sequential"
    assert data["comparisons"][0]["ctr"]["reason"] is not None  # 3 users per arm: no verdict, and why
    assert data["comparisons"][0]["verdict"] == report.comparisons[0].verdict
    assert data["srm"]["observed"] == list(report.srm.observed) if report.srm else data["srm"] is None


def test_render_html_is_self_contained_with_three_plots(results_dir: Path) -> None:
    page = render_html(report_of(results_dir / "outcomes.sqlite3"))

    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3
    for anchor in (
        "verdict",
        "traffic",
        "outcomes",
        "comparisons",
        "plan",
        "guardrails",
        "plots",
        "srm",
        "offline",
        "exclusions",
    ):
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


@pytest.mark.parametrize(
    ("ctrs", "outcome"),
    [
        ({"model_a": 0.10, "model_b": 0.10}, "inconclusive"),
        ({"model_a": 0.10, "model_b": 0.30}, "win"),
        ({"model_a": 0.30, "model_b": 0.10}, "loss"),
    ],
)
def test_html_leads_with_the_outcome_coloured_by_what_it_is(
    tmp_path: Path, ctrs: dict[str, float], outcome: str
) -> None:
    generated_store(tmp_path / "outcomes.sqlite3", {"model_a": 1000, "model_b": 1000}, ctrs, HASH_WEIGHTS)
    report = report_of(tmp_path / "outcomes.sqlite3")
    page = render_html(report)
    card = re.search(r'<div class="outcome outcome-(\w+)" data-outcome="(\w+)">(.*?)</div>', page)
    assert card is not None and card.group(1) == card.group(2) == outcome
    assert page.index('id="outcome"') < page.index('id="verdict"')  # at the top, before the sections
    assert report.comparisons[0].verdict.split(" (")[0] in card.group(3)  # the plain sentence, and the numbers:
    assert f"CTR model_a {report.comparisons[0].ctr.control:.1%} vs model_b" in card.group(3)


def test_live_html_links_every_other_phase_and_a_file_does_not(results_dir: Path) -> None:
    report = report_of(results_dir / "outcomes.sqlite3", phase=1)
    live, written = render_html(report, live=True), render_html(report)
    nav = re.search(r'<nav id="phase-nav".*?</nav>', live)
    assert nav is not None
    assert '<span aria-current="page">phase 1</span>' in nav.group(0) and '<a href="?phase=2">phase 2</a>' in nav.group(
        0
    )
    assert "?phase=" not in written  # a file cannot ask the router for another phase
