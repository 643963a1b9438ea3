"""build_report over hand-made outcome stores: every count equals what SQL counts, phases never mix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from router.errors import StoreError
from router.report import NoDataError, Report, StoreFormatError
from router.report.document import VariantSummary
from router.store import SQLiteBackend
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
        for _ in range(rng.poisson(0.4)):
            store.add_feedback(request_id, event="click", item_id=int(rng.integers(0, 10)))
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


STRATEGY_ROWS = "FROM exposures WHERE phase = ? AND variant = ? AND assignment = 'strategy'"
CLICKED_ROWS = (
    "FROM exposures AS e JOIN feedback AS f ON f.request_id = e.request_id AND f.event = 'click' "
    "WHERE e.phase = ? AND e.variant = ? AND e.assignment = 'strategy'"
)


@pytest.mark.parametrize("phase", [1, 2])
def test_build_report_counts_equal_sql_counts(store_path: Path, phase: int) -> None:
    report = report_of(store_path, phase)

    assert report.phase == phase
    for summary in report.variants:
        args = (phase, summary.name)
        assert summary.exposures == sql_count(store_path, f"SELECT COUNT(*) {STRATEGY_ROWS}", *args)
        assert summary.users == sql_count(store_path, f"SELECT COUNT(DISTINCT user_id) {STRATEGY_ROWS}", *args)
        assert summary.errors == sql_count(
            store_path, f"SELECT SUM(error IS NOT NULL OR status >= 400) {STRATEGY_ROWS}", *args
        )
        assert summary.clicked_exposures == sql_count(
            store_path, f"SELECT COUNT(DISTINCT e.request_id) {CLICKED_ROWS}", *args
        )
        assert summary.converted_users == sql_count(
            store_path, f"SELECT COUNT(DISTINCT e.user_id) {CLICKED_ROWS}", *args
        )
        assert summary.feedback_events == sql_count(
            store_path,
            "SELECT COUNT(*) FROM feedback WHERE phase = ? AND variant = ? AND assignment = 'strategy'",
            *args,
        )
        with sqlite3.connect(store_path) as connection:
            latencies = [row[0] for row in connection.execute(f"SELECT latency_ms {STRATEGY_ROWS}", args)]
        assert summary.latency_ms is not None
        expected = np.percentile(latencies, [50, 95, 99])
        assert (summary.latency_ms.p50, summary.latency_ms.p95, summary.latency_ms.p99) == pytest.approx(expected)
        assert summary.units == (summary.users if report.unit == "user" else summary.exposures)

    excluded = report.exclusions
    assert excluded.exposures == sql_count(
        store_path, "SELECT COUNT(*) FROM exposures WHERE phase = ? AND assignment != 'strategy'", phase
    )
    assert excluded.feedback_events == sql_count(
        store_path, "SELECT COUNT(*) FROM feedback WHERE phase = ? AND assignment != 'strategy'", phase
    )
    assert report.users_in_several_variants == sql_count(
        store_path,
        "SELECT COUNT(*) FROM (SELECT user_id FROM exposures WHERE phase = ? AND assignment = 'strategy' "
        "GROUP BY user_id HAVING COUNT(DISTINCT variant) > 1)",
        phase,
    )
    assert report.srm is not None
    assert report.srm.observed == tuple(v.units for v in report.variants)


def test_build_report_phase_one_has_the_hand_counted_values(store_path: Path) -> None:
    report = report_of(store_path, phase=1)
    model_a, model_b = variant(report, "model_a"), variant(report, "model_b")

    assert (report.strategy, report.unit, report.control) == ("hash", "user", "model_a")
    assert (model_a.exposures, model_a.users, model_a.errors, model_a.clicked_exposures) == (5, 3, 1, 2)
    assert (model_b.exposures, model_b.users, model_b.errors, model_b.clicked_exposures) == (5, 4, 1, 3)
    assert model_a.feedback_by_event == {"click": 3, "watch": 1}
    assert model_b.feedback_by_event == {"click": 3, "rating": 1}
    assert (model_a.converted_users, model_b.converted_users) == (2, 3)
    assert model_a.requests_per_user == pytest.approx(5 / 3)
    assert report.exclusions.exposures_by_assignment == {"fallback": 1, "override": 2}
    assert report.exclusions.feedback_events == 3
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


def test_build_report_corrects_several_treatments_with_holm(store_path: Path) -> None:
    report = report_of(store_path, phase=2)

    assert [c.treatment for c in report.comparisons] == ["model_b", "model_c"]
    assert "Holm" in report.correction
    for comparison in report.comparisons:
        assert comparison.conversion is None  # users are not the unit under random
        assert comparison.ctr.p_value is not None and comparison.p_adjusted is not None
        assert comparison.p_adjusted >= comparison.ctr.p_value
        assert "p (Holm)" in comparison.verdict


def generated_store(path: Path, users: dict[str, int], ctr: dict[str, float], weights: dict[str, float]) -> None:
    """A hash phase with `users[v]` users per variant, each making 1-5 requests, clicking with `ctr[v]`."""
    rng = np.random.default_rng(31)
    with HandStore.create(path) as store, store.transaction():
        store.add_phase(1, "hash", weights)
        for name, count in users.items():
            for u in range(count):
                for r in range(int(rng.integers(1, 6))):
                    request_id = f"{name}-{u}-{r}"
                    store.add_exposure(request_id, phase=1, user_id=f"{name}-{u}", variant=name)
                    if rng.random() < ctr[name]:
                        store.add_feedback(request_id)


def test_build_report_declares_a_clear_winner(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(path, {"model_a": 600, "model_b": 600}, {"model_a": 0.10, "model_b": 0.20}, HASH_WEIGHTS)

    comparison = report_of(path).comparisons[0]

    assert comparison.significant
    assert comparison.verdict.startswith("model_b beats model_a on CTR by +")
    assert comparison.ctr.absolute is not None and comparison.ctr.absolute.low > 0


def test_build_report_withholds_the_verdict_on_sample_ratio_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(path, {"model_a": 900, "model_b": 1100}, {"model_a": 0.10, "model_b": 0.30}, HASH_WEIGHTS)

    report = report_of(path)

    assert report.srm is not None and report.srm.mismatch and report.verdict_withheld
    assert report.srm.observed == (900, 1100)
    assert report.notes[0].startswith("SAMPLE-RATIO MISMATCH")
    assert report.comparisons[0].verdict.startswith("verdict withheld: sample-ratio mismatch")


def test_build_report_asks_for_more_users_when_not_significant(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite3"
    generated_store(path, {"model_a": 150, "model_b": 150}, {"model_a": 0.10, "model_b": 0.11}, HASH_WEIGHTS)

    comparison = report_of(path).comparisons[0]

    assert not comparison.significant
    assert comparison.more_units_needed is not None and comparison.more_units_needed > 0
    assert comparison.verdict.startswith("no significant difference yet between model_b and model_a")
    assert f"about {comparison.more_units_needed:,} more users per variant needed for 80% power" in (comparison.verdict)


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
        writer.execute(
            "INSERT INTO exposures (ts, request_id, experiment, phase, user_id, variant, assigned_variant,"
            " strategy, assignment, status, latency_ms, k, items) VALUES"
            " (2e9, 'uncommitted', 'rec-ab', 1, 'u9', 'model_a', 'model_a', 'hash', 'strategy', 200, 1, 10, '[]')"
        )
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
