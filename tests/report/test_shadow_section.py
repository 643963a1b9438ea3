"""The report's shadow section over a real SQLite store: its numbers equal the pure comparison of the same requests,
the self-shadow and repeated requests give the noise floor, a bounded sample of users is compared and stated, and
pairs are read in bounded chunks."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.report import build_report, render_html, render_markdown, report_to_json
from router.report.shadow import availability, compare_affinity, compare_lists
from router.report.shadow_section import SAMPLE_SALT, read_shadow_section
from router.store import Exposure, Feedback, ShadowCall, SQLiteBackend
from router.strategies import unit_point
from tests.report.test_shadow_comparison import approx_measure

URLS = {"model_a": "http://model_a:8000", "model_b": "http://model_b:8000"}
DESIGN = {
    "experiment": "rec-ab",
    "strategy": "hash",
    "unit": "user",
    "salt": "s",
    "variants": [{"name": n, "url": u, "weight": 50, "share": 0.5} for n, u in URLS.items()],
}


def affinity_of(user_id: str, items: Sequence[int]) -> float | None:
    """A stand-in ground truth: lower item ids are better, for everyone."""
    return -float(np.mean(items)) / 100 if items else None


class Phase:
    """A phase of 80 users (40 per variant), 5 requests each, copied to model_c (its own lists, every 9th call
    failing) and to model_s at model_a's URL (model_a's own lists: a self-shadow), with clicks."""

    def __init__(self, backend: SQLiteBackend, *, users: int = 80, requests: int = 5, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        backend.start_phase("rec-ab", "key", DESIGN)
        self.exposures: list[Exposure] = []
        self.calls: list[ShadowCall] = []
        feedback: list[Feedback] = []
        n = 0
        for u in range(users):
            user, variant = f"user-{u}", "model_a" if u % 2 else "model_b"
            for _ in range(requests):
                n += 1
                live = tuple(int(x) for x in rng.permutation(40)[:10])
                seen = Exposure(
                    ts=1_700_000_000.0 + n,
                    request_id=f"{n:032x}",
                    experiment="rec-ab",
                    phase=1,
                    user_id=user,
                    variant=variant,
                    assigned_variant=variant,
                    strategy="hash",
                    assignment="strategy",
                    propensity=0.5,
                    status=200,
                    latency_ms=float(rng.lognormal(1.0, 0.3)),
                    k=10,
                    items=live,
                    error=None,
                )
                self.exposures.append(seen)
                failed = n % 9 == 0
                own = tuple(int(x) for x in rng.permutation(np.r_[np.array(live[:5]), rng.integers(40, 60, 5)]))
                self.calls.append(self._call(seen, "model_c", "http://model_c:8000", own, failed, rng))
                if variant == "model_a":
                    self.calls.append(self._call(seen, "model_s", URLS["model_a"], live, False, rng))
                for item in rng.choice(live, size=rng.integers(0, 3), replace=False):
                    feedback.append(
                        Feedback(
                            ts=seen.ts + 0.5,
                            request_id=seen.request_id,
                            experiment="rec-ab",
                            phase=1,
                            user_id=user,
                            variant=variant,
                            assignment="strategy",
                            item_id=int(item),
                            position=live.index(int(item)),
                            event="click",
                            value=None,
                            attributed_by="request_id",
                        )
                    )
        override = replace(self.exposures[0], request_id="f" * 32, assignment="override", propensity=None)
        backend.write([*self.exposures, override, *feedback])
        backend.write([*self.calls, self._call(override, "model_c", "http://model_c:8000", (1,), False, rng)])

    @staticmethod
    def _call(
        seen: Exposure, shadow: str, url: str, items: tuple[int, ...], failed: bool, rng: np.random.Generator
    ) -> ShadowCall:
        return ShadowCall(
            ts=seen.ts + 0.01,
            request_id=seen.request_id,
            phase=1,
            user_id=seen.user_id,
            variant=seen.variant,
            shadow=shadow,
            shadow_url=url,
            k=10,
            status=504 if failed else 200,
            latency_ms=float(rng.lognormal(0.5, 0.3)),
            wait_ms=0.0,
            items=() if failed else items,
            error="timeout" if failed else None,
        )

    def pairs(self, shadow: str, variant: str) -> list[tuple[Exposure, ShadowCall]]:
        by_id = {e.request_id: e for e in self.exposures}
        return [
            (by_id[c.request_id], c)
            for c in self.calls
            if c.shadow == shadow and c.variant == variant and c.request_id in by_id
        ]

    def clicked(self, backend: SQLiteBackend, request_id: str) -> list[int]:
        with backend.snapshot() as snapshot:
            rows = snapshot.connection.execute(
                "SELECT item_id FROM feedback WHERE request_id = ? ORDER BY id", (request_id,)
            )
            return [int(r[0]) for r in rows]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SQLiteBackend]:
    opened = SQLiteBackend(tmp_path / "outcomes.sqlite3")
    opened.open()
    yield opened
    opened.close()


def test_the_section_equals_the_pure_comparison_of_the_same_requests(backend: SQLiteBackend) -> None:
    phase = Phase(backend)
    report = build_report(backend, truth=affinity_of, truth_name="stand-in truth")
    section = report.shadow
    assert section is not None and section.truth == "stand-in truth"
    assert [s.shadow for s in section.shadows] == ["model_c", "model_s"]
    model_c = section.shadows[0]
    assert (model_c.unmatched, model_c.sample_rate, model_c.urls) == (1, 1.0, ("http://model_c:8000",))
    assert [c.variant for c in model_c.comparisons] == ["model_a", "model_b"]  # the control first
    for comparison in model_c.comparisons:
        pairs = phase.pairs("model_c", comparison.variant)
        ok = [(e, c) for e, c in pairs if c.status == 200]
        users = [e.user_id for e, _ in ok]
        clicked = [phase.clicked(backend, e.request_id) for e, _ in ok]
        expected = compare_lists(users, [e.items for e, _ in ok], [c.items for _, c in ok], clicked)
        for name in ("jaccard", "rbo", "kendall_tau", "click_coverage"):
            assert getattr(expected, name) == approx_measure(getattr(comparison.lists, name)), name
        assert comparison.lists.requests == len(ok) and comparison.calls == len(pairs)
        assert comparison.availability == availability(
            [e.user_id for e, _ in pairs], [c.status == 200 for _, c in pairs]
        )
        assert comparison.errors == {"timeout": len(pairs) - len(ok)}
        assert comparison.latency.live_p50 == pytest.approx(float(np.percentile([e.latency_ms for e, _ in ok], 50)))
        assert comparison.latency.shadow_p99 == pytest.approx(float(np.percentile([c.latency_ms for _, c in ok], 99)))
        truth = compare_affinity(
            users,
            [affinity_of(u, e.items) for u, (e, _) in zip(users, ok, strict=True)],
            [affinity_of(u, c.items) for u, (_, c) in zip(users, ok, strict=True)],
        )
        assert comparison.affinity is not None
        assert truth.difference == approx_measure(comparison.affinity.difference)
        assert not comparison.self_comparison

    self_shadow = section.shadows[1].comparisons
    assert [(c.variant, c.self_comparison) for c in self_shadow] == [("model_a", True)]
    assert self_shadow[0].lists.jaccard.value == 1.0 and self_shadow[0].lists.identical == self_shadow[0].lists.requests
    floors = {f.variant: f for f in section.noise_floors}
    assert floors["model_a"].floor.deterministic is True and "model_s" in floors["model_a"].source
    # model_b has no self-shadow: its users' first two answers differ (random lists), a non-zero floor.
    assert floors["model_b"].floor.deterministic is False and "repeated requests" in floors["model_b"].source
    assert floors["model_b"].floor.requests == 40

    markdown = render_markdown(report)
    for title in ("availability and latency", "how different the lists are", "the ground truth", "noise floor"):
        assert f"Shadow traffic: {title}" in markdown
    assert "RBO p=0.9" in markdown and "model_s vs model_a (self-comparison)" in markdown
    assert 'id="shadow-lists"' in render_html(report)
    encoded = json.dumps(report_to_json(report), allow_nan=False)
    assert json.loads(encoded)["shadow"]["shadows"][0]["comparisons"][0]["lists"]["k"] == 10


def test_without_a_truth_there_is_no_truth_block_and_without_shadows_no_section(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    shadowed = Phase(backend, users=10)
    report = build_report(backend)
    assert report.shadow is not None and report.shadow.truth is None
    assert all(c.affinity is None for s in report.shadow.shadows for c in s.comparisons)
    assert "ground truth (simulation)" not in render_markdown(report)

    plain = SQLiteBackend(tmp_path / "plain.sqlite3")
    plain.open()
    plain.start_phase("rec-ab", "key", DESIGN)
    plain.write([shadowed.exposures[0]])
    bare = build_report(plain)
    plain.close()
    assert bare.shadow is None and "Shadow traffic" not in render_markdown(bare)


class CountingSnapshot:
    """A snapshot that records the limit of every chunk of pairs asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.limits: list[int] = []
        self.largest = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def shadow_pairs(self, *args: Any, **kwargs: Any) -> Any:
        self.limits.append(kwargs["limit"])
        chunk = self.inner.shadow_pairs(*args, **kwargs)
        self.largest = max(self.largest, len(chunk))
        return chunk


@contextmanager
def counting(backend: SQLiteBackend) -> Iterator[CountingSnapshot]:
    with backend.snapshot() as snapshot:
        yield CountingSnapshot(snapshot)


def test_a_large_shadow_is_compared_on_a_stated_hash_sample_of_whole_users_read_in_bounded_chunks(
    backend: SQLiteBackend,
) -> None:
    phase = Phase(backend, users=200, requests=6)
    with counting(backend) as snapshot:
        record = snapshot.phase(None)
        section = read_shadow_section(snapshot, record, max_compared=300, chunk=64)
    assert section is not None
    assert set(snapshot.limits) == {64} and snapshot.largest == 64
    model_c = section.shadows[0]
    pairs = sum(c.status == 200 for c in phase.calls if c.shadow == "model_c")
    assert model_c.pairs == pairs and model_c.sample_rate == pytest.approx(300 / pairs)
    sampled = {e.user_id for e in phase.exposures if unit_point(SAMPLE_SALT, e.user_id) < model_c.sample_rate}
    expected = sum(
        1 for c in phase.calls if c.shadow == "model_c" and c.status == 200 and c.user_id in sampled
    )  # every request of each sampled user
    assert model_c.compared_requests == expected and model_c.compared_users == len(sampled)
    # The sample's size is within a wide band of its target (users are sampled, not requests).
    assert 0.5 * 300 < expected < 1.5 * 300
    assert all(math.isfinite(c.availability.value or 0.0) for c in model_c.comparisons)
    markdown = render_markdown(build_report(backend))
    assert "no sampling" in markdown  # the default bound is far above this phase's 1,200 pairs
