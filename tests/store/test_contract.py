"""What every outcome store backend must do, stated once and run against each backend (tests/store/conftest.py).

A backend is a StoreBackend (router.store.backend): open or migrate its schema, agree on phases, write a batch
as one transaction, find exposures, classify its engine's errors, and serve the report a consistent snapshot
(including the shadow calls' questions, router.store.shadow_reader).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from router.errors import NoDataError
from router.store import Exposure, ShadowCall, StoreBackend, VariantInfo
from tests.store.conftest import BackendFactory, exposure, feedback_for, interleaved, same_store, shadow_call_for


@pytest.fixture
def backend(new_backend: BackendFactory) -> StoreBackend:
    opened = new_backend()
    opened.open()
    return opened


def test_open_is_idempotent_and_keeps_what_was_written(new_backend: BackendFactory) -> None:
    backend = new_backend()
    backend.open()
    backend.write([exposure(1)])
    backend.open()  # a restart opens an existing store: nothing is recreated or lost
    assert backend.find_exposure(exposure(1).request_id) == exposure(1)


def test_written_records_come_back_field_for_field(backend: StoreBackend) -> None:
    seen = exposure(7)
    backend.write([seen, feedback_for(seen, 8), VariantInfo(phase=1, variant="model_a", info={"a": 1}, fetched_at=2.0)])
    assert backend.find_exposure(seen.request_id) == seen
    assert backend.find_exposure("f" * 32) is None


def test_a_batch_is_all_or_nothing(backend: StoreBackend) -> None:
    backend.write([exposure(1)])
    with pytest.raises(Exception) as raised:  # noqa: PT011 - each engine raises its own error type
        backend.write([exposure(2), exposure(1)])  # the second repeats a request id: the batch fails whole
    failure = backend.classify(raised.value)
    assert failure is not None and failure.poison and failure.kind == "constraint"
    assert backend.find_exposure(exposure(2).request_id) is None


def test_errors_that_are_not_the_engines_are_not_classified(backend: StoreBackend) -> None:
    assert backend.classify(KeyError("a bug of ours")) is None


def test_phases_continue_on_the_same_key_and_advance_on_a_change(backend: StoreBackend) -> None:
    assert backend.start_phase("rec-ab", "key-a", {"salt": "1"}) == (1, True)
    assert backend.start_phase("rec-ab", "key-a", {"salt": "1"}) == (1, False)  # a restart: same phase
    assert backend.start_phase("rec-ab", "key-b", {"salt": "2"}, current=1) == (2, True)
    # The router that moved on and comes back starts a new stretch.
    assert backend.start_phase("rec-ab", "key-a", {"salt": "1"}, current=2) == (3, True)
    assert backend.start_phase("other", "key-a", {"salt": "1"}, current=3) == (4, True)
    with backend.snapshot() as snapshot:
        assert snapshot.phases() == (1, 2, 3, 4)
        assert snapshot.phase(2).config == {"salt": "2"}
        assert snapshot.phase(None).experiment == "other"


def test_replicas_on_one_configuration_share_its_phase_while_a_reload_reaches_them(backend: StoreBackend) -> None:
    assert backend.start_phase("rec-ab", "old", {"salt": "1"}) == (1, True)  # replicas A and B
    assert backend.start_phase("rec-ab", "new", {"salt": "2"}, current=1) == (2, True)  # A reloads first
    assert backend.start_phase("rec-ab", "old", {"salt": "1"}) == (1, False)  # C restarts on the old file
    assert backend.start_phase("rec-ab", "new", {"salt": "2"}, current=1) == (2, False)  # B, then C, reload
    with backend.snapshot() as snapshot:
        assert snapshot.phases() == (1, 2)


def test_a_guardrail_stop_is_never_bridged(backend: StoreBackend) -> None:
    assert backend.start_phase("rec-ab", "plain", {"stopped": []}) == (1, True)
    assert backend.start_phase("rec-ab", "stop", {"stopped": [{"variant": "b"}]}, current=1) == (2, True)
    # A replica restarting without the stop does not rejoin the phase the stop ended.
    assert backend.start_phase("rec-ab", "plain", {"stopped": []}) == (3, True)


def test_the_latest_exposure_is_the_latest_to_arrive_and_successful_in_any_phase(backend: StoreBackend) -> None:
    late = exposure(1, user="alice", ts=200.0)
    early = exposure(2, user="alice", ts=100.0, phase=2)  # written after `late`, but it arrived first
    failed = exposure(3, user="alice", ts=300.0, status=504)
    backend.write([late, early, failed])
    assert backend.latest_exposure("alice") == late
    assert backend.latest_exposure("bob") is None
    tie = exposure(4, user="bob", ts=50.0)
    other = replace(exposure(5, user="bob", ts=50.0), request_id="e" * 32)  # the same ts: request id decides
    backend.write([tie, other])
    assert backend.latest_exposure("bob") == max(tie, other, key=lambda e: e.request_id)


def test_feedback_repeated_for_a_request_item_and_event_is_stored_once(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {})
    seen = exposure(7)
    click = feedback_for(seen, seen.items[0])
    assert not backend.write([seen, click])  # nothing skipped
    # A retry, in another batch: skipped, not an error, and said so.
    assert backend.write([click, replace(click, ts=click.ts + 1)]) == {"feedback": 2}
    assert not backend.write([feedback_for(seen, seen.items[0], event="rating", value=3.0), feedback_for(seen, 4)])
    with backend.snapshot() as snapshot:
        assert snapshot.feedback_by_assignment(1) == {"strategy": 3}


def test_a_shared_secret_is_the_first_one_kept(backend: StoreBackend) -> None:
    first = backend.shared_secret("request_id_secret", "a" * 64)
    assert first == "a" * 64
    assert backend.shared_secret("request_id_secret", "b" * 64) == first
    again = same_store(backend)  # another process on the same store
    again.open()
    try:
        assert again.shared_secret("request_id_secret", "c" * 64) == first
    finally:
        again.close()


def test_a_snapshot_of_an_empty_store_says_there_is_no_data(backend: StoreBackend) -> None:
    with pytest.raises(NoDataError), backend.snapshot() as snapshot:
        snapshot.phase(None)


def test_unit_totals_count_what_was_written(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {"strategy": "hash"})
    shown = [exposure(n, user=f"u{n % 3}", variant="model_a" if n % 3 else "model_b") for n in range(12)]
    failed = exposure(99, user="u1", variant="model_a", status=504)
    override = exposure(100, user="u2", variant="model_a", assignment="override")
    backend.write([*shown, failed, override])
    backend.write([feedback_for(shown[0], shown[0].items[0]), feedback_for(shown[0], shown[0].items[1])])
    backend.write([feedback_for(shown[4], shown[4].items[0], event="rating", value=4.0)])
    backend.write([feedback_for(shown[4], shown[4].items[1], event="rating", value=2.0)])
    with backend.snapshot() as snapshot:
        totals = snapshot.unit_totals(1, by="variant", assignments=("strategy",))
        assert set(totals.variants) == {"model_a", "model_b"}
        assert int(totals.exposures.sum()) == 13  # 12 shown + 1 failed; the override is not selected
        assert int(totals.errors.sum()) == 1
        assert int(totals.clicked.sum()) == 1  # two clicks on one list count once
        b = totals.of("model_b")
        assert int(totals.exposures[b].sum()) == 4 and int(totals.clicked[b].sum()) == 1
        assert np.unique(totals.user[totals.of("model_a")]).size == 2
        assert int(totals.events["rating"].sum()) == 2 and float(totals.values["rating"].sum()) == 6.0
        assert snapshot.exposures_by_assignment(1) == {"override": 1, "strategy": 13}
        assert snapshot.feedback_by_assignment(1) == {"strategy": 4}
        assert snapshot.users_in_several_variants(1, by="variant", assignments=("strategy",)) == 0
        assert snapshot.strategies(1) == ("hash",)
        assert snapshot.time_range(1) == (shown[0].ts, override.ts)


def test_latency_percentiles_match_numpy(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {})
    rng = np.random.default_rng(3)
    rows = [replace(exposure(n, variant="model_a"), latency_ms=float(rng.lognormal())) for n in range(101)]
    backend.write(rows)
    expected = np.percentile([r.latency_ms for r in rows], [50, 95, 99])
    with backend.snapshot() as snapshot:
        found = snapshot.latency_percentiles(1, by="variant", assignments=("strategy",), quantiles=(0.5, 0.95, 0.99))
        assert found["model_a"] == pytest.approx(tuple(expected))
        low, high = snapshot.latency_range(1, by="variant", assignments=("strategy",)) or (0.0, 0.0)
        edges = np.geomspace(low, high, 11)
        counts = snapshot.latency_histogram(1, by="variant", assignments=("strategy",), edges=edges)
        assert counts["model_a"].tolist() == np.histogram([r.latency_ms for r in rows], bins=edges)[0].tolist()


def test_latency_percentiles_match_numpy_with_ties_zeros_and_a_long_tail(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {})
    rng = np.random.default_rng(5)
    latencies = np.concatenate(
        [rng.lognormal(1.5, 0.4, 3_000), np.zeros(40), np.full(500, 7.25), rng.pareto(1.1, 400) * 100 + 1]
    )
    rng.shuffle(latencies)
    rows = [
        replace(exposure(n, variant="model_a" if n % 3 else "model_b"), latency_ms=float(x))
        for n, x in enumerate(latencies)
    ]
    backend.write(rows)
    quantiles = (0.0, 0.001, 0.5, 0.95, 0.99, 0.9999, 1.0)
    with backend.snapshot() as snapshot:
        found = snapshot.latency_percentiles(1, by="variant", assignments=("strategy",), quantiles=quantiles)
    for variant in ("model_a", "model_b"):
        mine = [r.latency_ms for r in rows if r.variant == variant]
        assert found[variant] == pytest.approx(tuple(np.quantile(mine, quantiles)), rel=1e-12)


def test_timeline_is_cumulative(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {})
    shown = [exposure(n, variant="model_a", ts=1000.0 + n) for n in range(10)]
    backend.write([*shown, feedback_for(shown[9], shown[9].items[0])])
    with backend.snapshot() as snapshot:
        series = snapshot.timeline(1, by="variant", assignments=("strategy",), buckets=5)["model_a"]
    assert series.exposures.tolist() == [2, 4, 6, 8, 10]
    assert series.clicked.tolist() == [0, 0, 0, 0, 1]
    assert series.ends[-1] == pytest.approx(1009.0)


def test_an_interleaved_exposure_comes_back_with_its_teams(backend: StoreBackend) -> None:
    merged = interleaved(3, teams=("model_b", "model_a", "model_b"))
    degraded = interleaved(4, teams=("model_a",) * 3, failed_variant="model_b")
    lost = interleaved(5, status=504)
    backend.write([merged, degraded, lost])
    assert backend.find_exposure(merged.request_id) == merged
    assert backend.find_exposure(degraded.request_id) == degraded
    found = backend.find_exposure(lost.request_id)
    assert found is not None and found.teams == () and found.items == ()


def test_interleaving_totals_credit_each_clicked_position_once_to_its_team(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {"strategy": "interleave"})
    ab, ba = ("model_a", "model_b", "model_a"), ("model_b", "model_a", "model_b")
    alice = [interleaved(10, user="alice", teams=ab), interleaved(11, user="alice", teams=ba)]
    bob = [interleaved(20, user="bob", teams=ab)]
    carol = [interleaved(30, user="carol", teams=ba)]  # shown lists, never clicked: a user without a vote
    dave = [interleaved(40, user="dave", teams=("model_a",) * 3, failed_variant="model_b")]  # only degraded
    failed = interleaved(50, user="bob", status=504)  # both backends failed
    override = interleaved(60, user="alice", teams=ab, assignment="override")
    single = exposure(70, user="erin", variant="model_a")  # not interleaved at all
    backend.write([*alice, *bob, *carol, *dave, failed, override, single])
    clicks = [
        feedback_for(alice[0], 10),  # position 0: model_a
        feedback_for(alice[0], 10),  # the same position again: counts once
        feedback_for(alice[0], 11),  # position 1: model_b
        feedback_for(alice[1], 11),  # position 0 of a b-first list: model_b
        feedback_for(alice[1], 99),  # not shown: credited to nobody
        feedback_for(alice[1], 12, event="rating", value=5.0),  # not a click
        feedback_for(bob[0], 22),  # position 2: model_a
        feedback_for(dave[0], 40),  # a degraded exposure's click: no vote
        feedback_for(override, 61),  # excluded with its exposure
        feedback_for(single, 70),
    ]
    backend.write(clicks)
    with backend.snapshot() as snapshot:
        totals = snapshot.interleaving_totals(1, assignments=("strategy",))
    assert totals.users == 3  # alice, bob, carol; dave had only a degraded interleave
    per_user = sorted(zip(totals.of("model_a").tolist(), totals.of("model_b").tolist(), strict=True))
    assert per_user == [(0, 0), (1, 0), (1, 2)]  # carol; bob; alice
    assert totals.of("model_c").tolist() == [0, 0, 0]
    assert totals.exposures == 6  # alice 2, bob 1 + the failed one, carol 1, dave 1
    assert dict(totals.degraded) == {"model_b": 1}
    assert totals.failed == 1


def test_interleaving_totals_of_a_phase_without_interleaving_are_empty(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {"strategy": "hash"})
    seen = exposure(1)
    backend.write([seen, feedback_for(seen, seen.items[0])])
    with backend.snapshot() as snapshot:
        totals = snapshot.interleaving_totals(1, assignments=("strategy",))
    assert (totals.users, totals.exposures, totals.failed, dict(totals.credits)) == (0, 0, 0, {})


def test_unit_totals_by_assigned_variant_count_fallbacks_for_the_assigned_arm(backend: StoreBackend) -> None:
    """Intention to treat: a fallback exposure counts for the variant assigned, with the click it got."""
    backend.start_phase("rec-ab", "k", {"strategy": "hash"})
    served = exposure(1, user="u1", variant="model_b")
    fallback = replace(exposure(2, user="u1", variant="model_a"), assigned_variant="model_b", assignment="fallback")
    failed = replace(exposure(3, user="u1", variant="model_b", status=504), assigned_variant="model_b")
    control = exposure(4, user="u2", variant="model_a")
    override = exposure(5, user="u3", variant="model_b", assignment="override")
    backend.write([served, fallback, failed, control, override, feedback_for(fallback, fallback.items[0])])
    with backend.snapshot() as snapshot:
        itt = snapshot.unit_totals(1, by="assigned_variant", assignments=("strategy", "fallback"))
        served_by = snapshot.unit_totals(1, by="variant", assignments=("strategy", "fallback"))
    b, a = itt.of("model_b"), itt.of("model_a")
    assert (int(itt.exposures[b].sum()), int(itt.fallbacks[b].sum()), int(itt.errors[b].sum())) == (3, 1, 1)
    assert int(itt.clicked[b].sum()) == 1 and int(itt.clicked[a].sum()) == 0
    assert (int(itt.exposures[a].sum()), int(itt.fallbacks[a].sum())) == (1, 0)
    assert itt.slow is None  # only counted when a threshold is asked for
    assert int(served_by.exposures[served_by.of("model_a")].sum()) == 2  # who served: the fallback is model_a's
    assert int(served_by.fallbacks[served_by.of("model_a")].sum()) == 1


def test_unit_totals_count_requests_slower_than_the_threshold_per_pair(backend: StoreBackend) -> None:
    backend.start_phase("rec-ab", "k", {"strategy": "hash"})
    latencies = {"u1": [1.0, 5.0, 5.0001, 9.0], "u2": [4.9, 5.0], "u3": [50.0]}
    rows = [
        replace(exposure(10 * u + i, user=user, variant="model_a"), latency_ms=latency)
        for u, (user, values) in enumerate(latencies.items())
        for i, latency in enumerate(values)
    ]
    backend.write(rows)
    with backend.snapshot() as snapshot:
        totals = snapshot.unit_totals(1, by="variant", assignments=("strategy",), slow_above_ms=5.0)
        none_slow = snapshot.unit_totals(1, by="variant", assignments=("strategy",), slow_above_ms=1e9)
    assert totals.slow is not None and none_slow.slow is not None
    by_user = dict(zip(totals.exposures.tolist(), totals.slow.tolist(), strict=True))  # exposures are distinct
    assert by_user == {4: 2, 2: 0, 1: 1}  # strictly slower than 5.0 ms: equal is not slow
    assert int(none_slow.slow.sum()) == 0


# -- shadow calls ---------------------------------------------------------------------------------------------


def shadowed_phase(backend: StoreBackend) -> tuple[list[Exposure], list[ShadowCall]]:
    """Phase 1: 30 answered exposures of 6 users over two variants, each copied to model_c (every 7th fails);
    plus a failed exposure, an override and a phase-2 exposure, all copied too, none of which may count."""
    backend.start_phase("rec-ab", "k", {"strategy": "hash"})
    rng = np.random.default_rng(11)
    shown = [
        replace(exposure(n, user=f"u{n % 6}", variant="model_a" if n % 6 < 3 else "model_b"), latency_ms=float(n))
        for n in range(30)
    ]
    calls = [
        shadow_call_for(seen, status=504 if n % 7 == 3 else 200, latency_ms=float(rng.lognormal()))
        for n, seen in enumerate(shown)
    ]
    others = [
        exposure(90, user="u1", variant="model_a", status=504),
        exposure(91, user="u1", variant="model_a", assignment="override"),
        exposure(92, user="u1", variant="model_a", phase=2),
    ]
    feedback = [feedback_for(shown[4], shown[4].items[2]), feedback_for(shown[4], shown[4].items[0])]
    backend.write([*shown, *others])
    backend.write([*calls, *(shadow_call_for(seen) for seen in others), *feedback])
    backend.write([shadow_call_for(shown[0], shadow="model_d")])
    return shown, calls


def test_shadow_calls_are_matched_to_their_answered_selected_live_exposures(backend: StoreBackend) -> None:
    shown, _ = shadowed_phase(backend)
    failing = {seen.request_id for n, seen in enumerate(shown) if n % 7 == 3}
    with backend.snapshot() as snapshot:
        assert snapshot.shadow_names(1) == ("model_c", "model_d")
        totals = snapshot.shadow_totals(1, "model_c", assignments=("strategy",))
        assert set(totals.variants) == {"model_a", "model_b"}
        assert int(totals.calls.sum()) == 30 and int(totals.succeeded.sum()) == 30 - len(failing)
        assert np.unique(totals.user).size == 6  # one pair per (user, variant): each user saw one variant
        a = totals.of("model_a")
        assert int(totals.calls[a].sum()) == sum(seen.variant == "model_a" for seen in shown)
        failed_by_variant = {
            variant: sum(seen.request_id in failing and seen.variant == variant for seen in shown)
            for variant in ("model_a", "model_b")
        }
        assert totals.errors == {v: {"timeout": n} for v, n in failed_by_variant.items() if n}
        assert totals.unmatched == 2  # the failed exposure and the override (phase 2's call is in phase 2)
        assert totals.urls == ("http://model_c:8000",)
        assert snapshot.shadow_totals(2, "model_c", assignments=("strategy",)).calls.tolist() == [1]


def test_shadow_latency_quantiles_match_numpy_over_the_pairs(backend: StoreBackend) -> None:
    shown, calls = shadowed_phase(backend)
    with backend.snapshot() as snapshot:
        found = snapshot.shadow_latency(1, "model_c", assignments=("strategy",), quantiles=(0.5, 0.99))
    assert set(found) == {"model_a", "model_b"}
    for variant, latency in found.items():
        both = [
            (s.latency_ms, c.latency_ms)
            for s, c in zip(shown, calls, strict=True)
            if s.variant == variant and c.status == 200
        ]
        assert latency.pairs == len(both) > 0
        assert latency.live == pytest.approx(tuple(np.percentile([live for live, _ in both], [50, 99])))
        assert latency.shadow == pytest.approx(tuple(np.percentile([shadow for _, shadow in both], [50, 99])))


def test_shadow_pairs_come_in_chunks_that_cover_every_answered_pair_once(backend: StoreBackend) -> None:
    shown, _ = shadowed_phase(backend)
    chunks = []
    with backend.snapshot() as snapshot:
        after = None
        while chunk := snapshot.shadow_pairs(1, "model_c", assignments=("strategy",), after=after, limit=4):
            assert len(chunk) <= 4
            chunks.append(chunk)
            after = chunk[-1].request_id
    pairs = [pair for chunk in chunks for pair in chunk]
    expected = sorted((s for n, s in enumerate(shown) if n % 7 != 3), key=lambda s: s.request_id)
    assert [p.request_id for p in pairs] == [s.request_id for s in expected]
    for pair, seen in zip(pairs, expected, strict=True):
        assert (pair.user_id, pair.variant, pair.live) == (seen.user_id, seen.variant, seen.items)
        assert pair.shadow == tuple(reversed(seen.items))
    clicked = {p.request_id: p.clicked for p in pairs if p.clicked}
    assert clicked == {shown[4].request_id: (shown[4].items[2], shown[4].items[0])}  # in arrival order


def test_repeated_lists_pair_each_users_first_two_answers_for_one_k(backend: StoreBackend) -> None:
    shown, _ = shadowed_phase(backend)
    with backend.snapshot() as snapshot:
        repeated = snapshot.repeated_lists(1, "model_a", assignments=("strategy",), limit=100)
        assert len(snapshot.repeated_lists(1, "model_a", assignments=("strategy",), limit=2)) == 2
    by_user: dict[str, list[Exposure]] = {}
    for seen in sorted(shown, key=lambda s: s.ts):
        if seen.variant == "model_a":
            by_user.setdefault(seen.user_id, []).append(seen)
    assert [(r.user_id, r.first, r.second) for r in repeated] == [
        (user, lists[0].items, lists[1].items) for user, lists in sorted(by_user.items())
    ]


def test_a_second_call_of_one_shadow_for_one_request_is_refused_as_a_poison_row(backend: StoreBackend) -> None:
    seen = exposure(1)
    backend.write([seen, shadow_call_for(seen)])
    with pytest.raises(Exception) as raised:  # noqa: PT011 - each engine raises its own error type
        backend.write([shadow_call_for(seen)])
    failure = backend.classify(raised.value)
    assert failure is not None and failure.poison
    backend.write([shadow_call_for(seen, shadow="model_d")])  # another shadow may copy the same request
