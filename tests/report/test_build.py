"""build_report over hand-made outcome stores: every count equals what SQL counts, phases never mix.

Counts are by intention to treat: every randomised exposure ('strategy' or 'fallback') for the variant it was
assigned to; QA overrides are out.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.errors import StoreError
from router.report import NoDataError, Report, StoreFormatError
from router.report.comparison import Analysis, Comparison, compare_moments
from router.report.document import VariantSummary
from router.report.planning import SamplePlan, plan_units
from router.report.ratio import ArmEstimate, RatioData, binary_moments, estimate
from router.store import SQLiteBackend
from router.store.rollup import rollup_statements, row_marks
from tests.report.store import HandStore, report_of

HASH_WEIGHTS = {"model_a": 50.0, "model_b": 50.0}
RANDOM_WEIGHTS = {"model_a": 2.0, "model_b": 1.0, "model_c": 1.0}


def fill_two_phases(store: HandStore) -> None:
    """Phase 1 (hash) by hand, with every special case; phase 2 (random, three variants) generated."""
    store.add_phase(1, "hash", HASH_WEIGHTS)
    add = store.add_exposure
    add("r1", phase=1, user_id="u1", variant="model_a")
    store.add_feedback("r1", event="click", item_id=3)
    store.add_feedback("r1", event="click", item_id=5)  # two clicks: one clicked exposure
    store.add_feedback("r1", event="watch", item_id=3)
    add("r2", phase=1, user_id="u1", variant="model_a", latency_ms=9.0)
    add("r3", phase=1, user_id="u1", variant="model_a", status=504, error="timeout", latency_ms=2000.0)
    add("r4", phase=1, user_id="u2", variant="model_a", latency_ms=7.0)
    store.add_feedback("r4", event="click", attributed_by="user")
    add("r5", phase=1, user_id="u3", variant="model_b", latency_ms=4.0)
    store.add_feedback("r5", event="click", item_id=99)  # an item that was not in the list still counts
    add("r6", phase=1, user_id="u3", variant="model_b", latency_ms=6.0)
    add("r7", phase=1, user_id="u4", variant="model_b", latency_ms=3.0)
    store.add_feedback("r7", event="rating")  # feedback, but no click
    add("r8", phase=1, user_id="u5", variant="model_a")  # u5 is served by both variants
    add("r9", phase=1, user_id="u5", variant="model_b", status=502, error="unavailable")
    store.add_feedback("r9", event="click")
    add("r10", phase=1, user_id="u6", variant="model_b", assignment="override")
    store.add_feedback("r10", event="click")
    add("r11", phase=1, user_id="u7", variant="model_a", assigned_variant="model_b", assignment="fallback")
    store.add_feedback("r11", event="click")
    store.add_feedback("r11", event="watch")
    add("r12", phase=1, user_id="u1", variant="model_b", assignment="override")
    add("r13", phase=1, user_id="u8", variant="model_b", latency_ms=8.0)
    store.add_feedback("r13", event="click")
    store.add_variant_info(1, "model_a", {"algorithm": "PureSVD", "version": "a1", "metrics": {"coverage": 0.3}})
    store.add_variant_info(1, "model_b", {"algorithm": "SVD", "version": "b1", "metrics": {"coverage": 0.5}})

    store.add_phase(2, "random", RANDOM_WEIGHTS)
    rng = np.random.default_rng(12)
    names = list(RANDOM_WEIGHTS)
    for i in range(90):
        request_id = f"p2-{i}"
        user = f"u{rng.integers(1, 20)}"  # the same user ids as phase 1, on purpose
        variant = names[rng.choice(3, p=[0.5, 0.25, 0.25])]
        assignment = "override" if i % 30 == 0 else "strategy"
        failed = i % 17 == 0
        add(
            request_id,
            phase=2,
            user_id=user,
            variant=variant,
            strategy="random",
            assignment=assignment,
            status=503 if failed else 200,
            error="unavailable" if failed else None,
            latency_ms=float(rng.lognormal(2.0, 0.5)),
        )
        clicked = [int(rng.integers(0, 10)) for _ in range(rng.poisson(0.4))]
        for item in dict.fromkeys(clicked):  # a click on the same item again is stored once (schema v5)
            store.add_feedback(request_id, event="click", item_id=item)
    store.add_variant_info(2, "model_c", {"algorithm": "popularity", "precision_at_10": 0.2})


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "outcomes.sqlite3"
    with HandStore.create(path) as store:
        fill_two_phases(store)
    return path


def sql_count(path: Path, sql: str, *params: object) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(sql, params).fetchone()[0] or 0)


def variant(report: Report, name: str) -> VariantSummary:
    return next(v for v in report.variants if v.name == name)


ANALYSED_ROWS = "FROM exposures WHERE phase = ? AND assigned_variant = ? AND assignment IN ('strategy', 'fallback')"
CLICKED_ROWS = (
    "FROM exposures AS e JOIN feedback AS f ON f.request_id = e.request_id AND f.event = 'click' "
    "WHERE e.phase = ? AND e.assigned_variant = ? AND e.assignment IN ('strategy', 'fallback')"
)


@pytest.mark.parametrize("phase", [1, 2])
def test_build_report_counts_equal_sql_counts_by_assigned_variant(store_path: Path, phase: int) -> None:
    report = report_of(store_path, phase)

    assert report.phase == phase
    for summary in report.variants:
        args = (phase, summary.name)
        assert summary.exposures == sql_count(store_path, f"SELECT COUNT(*) {ANALYSED_ROWS}", *args)
        assert summary.users == sql_count(store_path, f"SELECT COUNT(DISTINCT user_id) {ANALYSED_ROWS}", *args)
        assert summary.errors == sql_count(
            store_path, f"SELECT SUM(error IS NOT NULL OR status >= 400) {ANALYSED_ROWS}", *args
        )
        assert summary.fallbacks == sql_count(store_path, f"SELECT SUM(assignment = 'fallback') {ANALYSED_ROWS}", *args)
        assert summary.clicked_exposures == sql_count(
            store_path, f"SELECT COUNT(DISTINCT e.request_id) {CLICKED_ROWS}", *args
        )
        assert summary.converted_users == sql_count(
            store_path, f"SELECT COUNT(DISTINCT e.user_id) {CLICKED_ROWS}", *args
        )
        assert summary.feedback_events == sql_count(
            store_path,
            "SELECT COUNT(*) FROM feedback AS f JOIN exposures AS e ON e.request_id = f.request_id "
            "WHERE e.phase = ? AND e.assigned_variant = ? AND e.assignment IN ('strategy', 'fallback')",
            *args,
        )
        with sqlite3.connect(store_path) as connection:
            latencies = [row[0] for row in connection.execute(f"SELECT latency_ms {ANALYSED_ROWS}", args)]
        assert summary.latency_ms is not None
        expected = np.percentile(latencies, [50, 95, 99])
        assert (summary.latency_ms.p50, summary.latency_ms.p95, summary.latency_ms.p99) == pytest.approx(expected)
        assert summary.units == (summary.users if report.unit == "user" else summary.exposures)

    excluded = report.exclusions
    assert excluded.exposures == sql_count(
        store_path, "SELECT COUNT(*) FROM exposures WHERE phase = ? AND assignment = 'override'", phase
    )
    assert excluded.feedback_events == sql_count(
        store_path, "SELECT COUNT(*) FROM feedback WHERE phase = ? AND assignment = 'override'", phase
    )
    assert report.users_in_several_variants == sql_count(
        store_path,
        "SELECT COUNT(*) FROM (SELECT user_id FROM exposures WHERE phase = ? AND assignment != 'override' "
        "GROUP BY user_id HAVING COUNT(DISTINCT assigned_variant) > 1)",
        phase,
    )
    assert report.srm is not None
    assert report.srm.observed == tuple(v.units for v in report.variants)


def test_build_report_counts_a_fallback_for_the_variant_assigned_with_its_click(store_path: Path) -> None:
    report = report_of(store_path, phase=1)
    model_a, model_b = variant(report, "model_a"), variant(report, "model_b")

    assert (report.strategy, report.unit, report.control) == ("hash", "user", "model_a")
    assert (model_a.exposures, model_a.users, model_a.errors, model_a.clicked_exposures) == (5, 3, 1, 2)
    # r11 was assigned to model_b, failed, and was served by model_a: model_b's exposure, with its click.
    assert (model_b.exposures, model_b.users, model_b.errors, model_b.fallbacks) == (6, 5, 1, 1)
    assert model_b.clicked_exposures == 4
    assert model_b.error_rate.value == pytest.approx(2 / 6)  # the error and the fallback are its failures
    assert model_a.feedback_by_event == {"click": 3, "watch": 1}
    assert model_b.feedback_by_event == {"click": 4, "rating": 1, "watch": 1}
    assert (model_a.converted_users, model_b.converted_users) == (2, 4)
    assert model_a.requests_per_user == pytest.approx(5 / 3)
    assert report.exclusions.exposures_by_assignment == {"override": 2}
    assert report.exclusions.feedback_events == 1
    assert report.users_in_several_variants == 1  # u5; u1's override exposure does not count
    assert any("more than one variant" in note for note in report.notes)
    assert model_a.offline is not None and model_a.offline.algorithm == "PureSVD"
    assert model_a.offline.metrics == {"coverage": 0.3}


def test_build_report_defaults_to_the_latest_phase_and_never_mixes_phases(store_path: Path) -> None:
    latest = report_of(store_path)
    first = report_of(store_path, phase=1)

    assert latest.phase == 2 and latest.phases == (1, 2)
    assert (latest.strategy, latest.unit) == ("random", "request")
    assert [v.name for v in latest.variants] == ["model_a", "model_b", "model_c"]
    assert [v.weight for v in latest.variants] == pytest.approx([0.5, 0.25, 0.25])
    total = sum(v.exposures for v in latest.variants) + latest.exclusions.exposures
    assert total == sql_count(store_path, "SELECT COUNT(*) FROM exposures WHERE phase = 2") == 90
    assert sum(v.exposures for v in first.variants) + first.exclusions.exposures == 13
    assert variant(latest, "model_c").offline is not None
    assert variant(latest, "model_a").offline is None  # phase 1's /info is not phase 2's


def test_build_report_adjusts_several_treatments_with_bonferroni_in_p_and_interval(store_path: Path) -> None:
    report = report_of(store_path, phase=2)

    assert [c.treatment for c in report.comparisons] == ["model_b", "model_c"]
    assert "Bonferroni over 2 treatments" in report.correction
    counts = {
        name: (
            sql_count(store_path, f"SELECT COUNT(DISTINCT e.request_id) {CLICKED_ROWS}", 2, name),
            sql_count(store_path, f"SELECT COUNT(*) {ANALYSED_ROWS}", 2, name),
        )
        for name in RANDOM_WEIGHTS
    }
    for comparison in report.comparisons:
        assert comparison.ctr.compared_per == "request"  # random: the request is the unit compared
        expected = compare_moments(
            binary_moments(*counts["model_a"]), binary_moments(*counts[comparison.treatment]), Analysis(), 2
        )
        assert isinstance(expected, Comparison) and comparison.ctr.p_value == pytest.approx(expected.p_value)
        assert expected.p_value == pytest.approx(
            min(1.0, 2 * _single(counts["model_a"], counts[comparison.treatment]).p_value)
        )
        assert "always-valid p (Bonferroni)" in comparison.verdict
        assert comparison.ctr.difference is not None
        excludes_zero = comparison.ctr.difference.low > 0 or comparison.ctr.difference.high < 0
        assert comparison.ctr.significant == excludes_zero


def _single(control: tuple[int, int], treatment: tuple[int, int]) -> Comparison:
    result = compare_moments(binary_moments(*control), binary_moments(*treatment), Analysis(), 1)
    assert isinstance(result, Comparison)
    return result


def test_build_report_per_variant_ctr_interval_is_clustered_by_user_under_random(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(
        path, {"model_a": 300, "model_b": 300}, {"model_a": 0.1, "model_b": 0.1}, HASH_WEIGHTS, strategy="random"
    )
    report = report_of(path)

    for name in HASH_WEIGHTS:
        expected = estimate(per_user_ctr(path, name))
        shown = variant(report, name).ctr
        assert isinstance(expected, ArmEstimate) and shown.interval is not None
        assert (shown.interval.low, shown.interval.high) == pytest.approx((expected.low, expected.high))
        assert expected.units == variant(report, name).users < variant(report, name).exposures


def generated_store(
    path: Path,
    users: dict[str, int],
    ctr: dict[str, float],
    weights: dict[str, float],
    plan: dict[str, Any] | None = None,
    *,
    errors: dict[str, float] | None = None,
    strategy: str = "hash",
) -> None:
    """A phase with `users[v]` users per variant, each making 1-5 requests, clicking with `ctr[v]`.

    `errors[v]`: the share of the variant's requests answered with an error (unclicked). Under `random` the
    users are shared: each request goes to a variant drawn with `weights`.
    """
    rng = np.random.default_rng(31)
    names, shares = list(weights), np.array(list(weights.values())) / sum(weights.values())
    with HandStore.create(path) as store, store.transaction():
        store.add_phase(1, strategy, weights, plan=plan)
        for name, count in users.items():
            for u in range(count):
                for r in range(int(rng.integers(1, 6))):
                    request_id = f"{name}-{u}-{r}"
                    served = names[rng.choice(len(names), p=shares)] if strategy == "random" else name
                    failed = rng.random() < (errors or {}).get(served, 0.0)
                    store.add_exposure(
                        request_id,
                        phase=1,
                        user_id=f"u{u}" if strategy == "random" else f"{name}-{u}",
                        variant=served,
                        strategy=strategy,
                        status=503 if failed else 200,
                        error="unavailable" if failed else None,
                    )
                    if not failed and rng.random() < ctr[served]:
                        store.add_feedback(request_id)


def test_build_report_declares_a_clear_winner_sequentially(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(path, {"model_a": 600, "model_b": 600}, {"model_a": 0.10, "model_b": 0.20}, HASH_WEIGHTS)

    comparison = report_of(path).comparisons[0]

    assert comparison.analysis == "sequential" and comparison.significant
    assert comparison.verdict.startswith("model_b beats model_a on CTR by +")
    assert "always-valid p < 0.001 (sequential: valid whenever it is read)" in comparison.verdict
    assert comparison.ctr.difference is not None and comparison.ctr.difference.low > 0
    assert comparison.plans == () and comparison.ctr_other is None  # no planned size: no fixed-horizon analysis


def test_build_report_withholds_the_verdict_on_sample_ratio_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(path, {"model_a": 900, "model_b": 1100}, {"model_a": 0.10, "model_b": 0.30}, HASH_WEIGHTS)

    report = report_of(path)

    assert report.srm is not None and report.srm.mismatch and report.verdict_withheld
    assert report.srm.observed == (900, 1100)
    assert report.notes[0].startswith("SAMPLE-RATIO MISMATCH")
    assert report.comparisons[0].verdict.startswith("verdict withheld: sample-ratio mismatch")
    assert not report.comparisons[0].significant


def test_build_report_without_significance_says_it_may_be_read_at_any_time(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(path, {"model_a": 150, "model_b": 150}, {"model_a": 0.10, "model_b": 0.11}, HASH_WEIGHTS)

    comparison = report_of(path).comparisons[0]

    assert not comparison.significant
    assert comparison.verdict.startswith("no significant difference so far between model_b and model_a")
    assert "the sequential analysis may be read at any time; no planned size configured" in comparison.verdict
    assert "more users" not in comparison.verdict  # no post-hoc power from the observed difference


def per_user_ctr(path: Path, name: str) -> RatioData:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT e.user_id, COUNT(*), COUNT(c.request_id) FROM exposures AS e LEFT JOIN "
            "(SELECT DISTINCT request_id FROM feedback WHERE event = 'click') AS c ON c.request_id = e.request_id "
            "WHERE e.assigned_variant = ? GROUP BY e.user_id",
            (name,),
        ).fetchall()
    return RatioData.of([r[2] for r in rows], [r[1] for r in rows])


@pytest.mark.parametrize("users", [150, 900])
def test_build_report_gives_a_fixed_horizon_verdict_only_at_the_planned_size(tmp_path: Path, users: int) -> None:
    path = tmp_path / "outcomes.sqlite3"
    plan = {"analysis": {"sequential": False, "minimum_detectable_effect": 0.5, "relative": True, "power": 0.8}}
    generated_store(path, {"model_a": users, "model_b": users}, {"model_a": 0.10, "model_b": 0.20}, HASH_WEIGHTS, plan)

    comparison = report_of(path).comparisons[0]

    control = estimate(per_user_ctr(path, "model_a"))
    assert isinstance(control, ArmEstimate)
    planned = plan_units(0.5, unit_variance=control.unit_variance, baseline=control.value, relative=True)
    assert isinstance(planned, SamplePlan)
    fixed = comparison.plans[0]
    assert (comparison.analysis, fixed.analysis) == ("fixed", "fixed")
    assert (fixed.control_units, fixed.treatment_units) == (planned.control_units, planned.treatment_units)
    assert fixed.reached == (users >= planned.control_units)
    assert comparison.plans[1].analysis == "sequential"  # the sequential plan is shown beside it
    assert (comparison.plans[1].control_units or 0) > planned.control_units
    assert comparison.ctr_other is not None and comparison.ctr_other.analysis == "sequential"
    if fixed.reached:
        assert comparison.ctr.difference is not None and comparison.ctr.p_value is not None
        assert comparison.verdict.startswith("model_b beats model_a on CTR by +")
        assert "fixed horizon, at the planned size of" in comparison.verdict
    else:
        assert comparison.ctr.difference is None and comparison.ctr.p_value is None  # not readable yet
        assert comparison.verdict.startswith("no verdict yet for model_b vs model_a: the fixed-horizon test is valid")
        assert f"{fixed.fraction:.0%} reached" in comparison.verdict


def test_build_report_judges_guardrails_and_names_a_harmful_one(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    plan = {
        "analysis": {"tuning": 1000},
        "guardrails": [
            {"metric": "error_rate", "tolerance": {"margin": 0.02}, "action": "stop"},
            {"metric": "latency_p99", "tolerance": {"margin": 1.0, "relative": True}},
        ],
    }
    users = {"model_a": 400, "model_b": 400}
    generated_store(path, users, {"model_a": 0.1, "model_b": 0.1}, HASH_WEIGHTS, plan, errors={"model_b": 0.3})

    comparison = report_of(path).comparisons[0]

    errors, latency = comparison.guardrails
    assert (errors.metric, errors.state, errors.action) == ("error_rate", "harmful", "stop")
    assert errors.worse_by is not None and errors.worse_by.low > 0.02
    assert latency.metric == "latency_p99" and latency.threshold_ms == pytest.approx(5.0)  # the control's p99
    assert "guardrail harmful: error_rate (stop)" in comparison.verdict


def test_build_report_shows_a_stop_in_the_phase_it_caused_and_the_phase_it_started(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    stop = {
        "variant": "model_b",
        "guardrail": "error_rate",
        "at": 1_700_000_100.0,
        "phase": 1,
        "moved_to": "model_a",
        "detail": "worse by +30.1 pp [24.0, 36.2] (tolerance 2 pp)",
    }
    with HandStore.create(path) as store:
        store.add_phase(1, "hash", HASH_WEIGHTS)
        store.add_phase(2, "hash", {"model_a": 1.0, "model_b": 0.0}, plan={"stopped": [stop]})
        for phase in (1, 2):
            for i in range(30):
                store.add_exposure(f"p{phase}-{i}", phase=phase, user_id=f"u{i}", variant="model_a")

    first, second = report_of(path, phase=1), report_of(path, phase=2)

    for report in (first, second):
        assert [s.variant for s in report.stops] == ["model_b"]
        assert report.comparisons[0].stopped is not None
        assert "model_b was stopped by guardrail error_rate at 2023-11-14 22:15:00 UTC" in report.comparisons[0].verdict
    assert "its users are served by model_a until an admin resumes it" in second.comparisons[0].verdict
    assert variant(second, "model_b").weight == 0.0
    assert not second.comparisons[0].significant


def test_build_report_raises_no_data_for_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "outcomes.sqlite3"

    with pytest.raises(NoDataError, match="no outcome store"):
        report_of(missing)
    assert not missing.exists()  # the read-only reader never creates it


def test_build_report_raises_no_data_for_an_empty_store_or_phase(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    sqlite3.connect(path).close()
    with pytest.raises(NoDataError, match="not an outcome store"):
        report_of(path)

    path.unlink()
    with HandStore.create(path) as store:
        with pytest.raises(NoDataError, match="no phase"):
            report_of(path)
        store.add_phase(1, "hash", HASH_WEIGHTS)
        with pytest.raises(NoDataError, match="phase 1 has no exposures"):
            report_of(path)
        with pytest.raises(NoDataError, match=r"phase 3 is not in .* \(phases: 1\)"):
            report_of(path, phase=3)


def test_build_report_refuses_a_config_without_variants(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    with HandStore.create(path) as store:
        store.connection.execute(
            "INSERT INTO phases VALUES (1, 'rec-ab', 0, 'k', ?)", ('{"strategy": "hash", "salt": "s"}',)
        )
        store.add_exposure("r1", phase=1, user_id="u1", variant="model_a")

        with pytest.raises(StoreFormatError, match="no variants"):
            report_of(path)


def test_build_report_never_writes_the_database_file(store_path: Path) -> None:
    before = store_path.read_bytes()

    report_of(store_path, phase=1)

    assert store_path.read_bytes() == before
    with pytest.raises(StoreError, match="readonly"), SQLiteBackend(store_path).snapshot() as snapshot:
        snapshot.connection.execute("DELETE FROM exposures")


def test_build_report_reads_while_the_writer_holds_a_transaction(store_path: Path) -> None:
    before = report_of(store_path, phase=1)
    writer = sqlite3.connect(store_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        marks = row_marks(writer)
        writer.execute(
            "INSERT INTO exposures (ts, request_id, experiment, phase, user_id, variant, assigned_variant,"
            " strategy, assignment, status, latency_ms, k, items) VALUES"
            " (2e9, 'uncommitted', 'rec-ab', 1, 'u9', 'model_a', 'model_a', 'hash', 'strategy', 200, 1, 10, '[]')"
        )
        for statement in rollup_statements("sqlite", marks):  # as the router's writer counts a batch
            writer.execute(statement)
        during = report_of(store_path, phase=1)  # must neither block nor see the uncommitted row
        writer.execute("COMMIT")
    finally:
        writer.close()

    assert during.variants == before.variants
    assert variant(report_of(store_path, phase=1), "model_a").exposures == 6


def test_build_report_reads_a_store_in_a_directory_with_uri_characters(tmp_path: Path) -> None:
    directory = tmp_path / "results #1 ?x=y%20"
    directory.mkdir()
    with HandStore.create(directory / "outcomes.sqlite3") as store:
        fill_two_phases(store)

    assert report_of(directory / "outcomes.sqlite3").phase == 2
