"""Strategy `interleave` through the real router over two fake backends on loopback: fan-out, merge, logging,
attribution, degraded and failed interleaves, the switch from an A/B phase, and the report of what it logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.interleaving import team_draft
from router.report import build_report, render_markdown
from tests.router.conftest import Backend, RunningRouter, experiment, running_router, settings_for, write_config
from tests.support.fake_model import items_for

TOKEN = "test-admin-token"
SHIFT = 3  # model_b's lists share all but 3 items with model_a's


def interleave(backends: dict[str, Backend], **changes: Any) -> dict[str, Any]:
    """The fakes' experiment under strategy interleave, model_b recommending a shifted list."""
    backends["model_b"].control.shift = SHIFT
    return experiment(backends, strategy="interleave", **changes)


def expected_merge(user: str, k: int, request_id: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """What team draft makes of the fakes' two lists for `user`: the items and who placed each."""
    merged = team_draft({"model_a": items_for(user, k), "model_b": items_for(user, k, SHIFT)}, k, request_id)
    return merged.items, merged.teams


def exposure_row(router: RunningRouter, request_id: str) -> dict[str, Any]:
    columns = "variant, assigned_variant, strategy, assignment, propensity, status, items, teams, failed_variant, error"
    rows = router.rows(f"SELECT {columns} FROM exposures WHERE request_id = ?", (request_id,))
    assert len(rows) == 1, rows
    return dict(zip([c.strip() for c in columns.split(",")], rows[0], strict=True))


def test_interleave_answers_one_team_draft_list_from_both_backends(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    with running_router(settings_for(tmp_path, interleave(backends))) as router:
        response = router.client.get("/recommend/user-7", params={"k": 6})
        assert response.status_code == 200
        body = response.json()
        request_id = body["request_id"]
        # The client learns that the list is interleaved and its request id, nothing about the teams.
        assert set(body) == {"items", "variant", "request_id"}
        assert body["variant"] == response.headers["X-Variant"] == "interleaved"
        assert request_id == response.headers["X-Request-ID"]
        items, teams = expected_merge("user-7", 6, request_id)
        assert tuple(body["items"]) == items
        assert set(teams) == {"model_a", "model_b"}
        for backend in backends.values():
            assert backend.control.seen == ["/recommend/user-7?k=6"]
        row = exposure_row(router, request_id)
    assert row == {
        "variant": "interleaved",
        "assigned_variant": "interleaved",
        "strategy": "interleave",
        "assignment": "strategy",
        "propensity": 1.0,
        "status": 200,
        "items": orjson.dumps(list(items)).decode(),
        "teams": orjson.dumps(list(teams)).decode(),
        "failed_variant": None,
        "error": None,
    }


def test_interleave_asks_both_backends_at_once(tmp_path: Path, backends: dict[str, Backend]) -> None:
    """Each backend takes 2 s: the second call arrives before the first has answered (the cause, whatever the
    machine's load), and the request takes at least one delay but less than the two calls in a row would."""
    delay = 2.0
    for backend in backends.values():
        backend.control.delay = delay
    raw = interleave(backends, timeouts={"connect": 1.0, "read": 10.0, "pool": 1.0})
    with running_router(settings_for(tmp_path, raw)) as router:
        response = router.client.get("/recommend/user-3")
        assert response.status_code == 200
        (arrived_a,), (arrived_b,) = backends["model_a"].control.arrived, backends["model_b"].control.arrived
        assert abs(arrived_a - arrived_b) < delay  # the later call started while the earlier one was still waiting
        (latency,) = router.rows("SELECT latency_ms FROM exposures")[0]
    assert delay * 1000 <= latency < 2 * delay * 1000


def test_one_failing_backend_gives_a_degraded_interleave_of_the_other_list(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    with running_router(settings_for(tmp_path, interleave(backends))) as router:
        backends["model_b"].control.status = 500
        response = router.client.get("/recommend/user-1", params={"k": 5})
        assert response.status_code == 200
        body = response.json()
        assert body["variant"] == "interleaved" and body["items"] == items_for("user-1", 5)
        row = exposure_row(router, body["request_id"])
        assert (row["status"], row["failed_variant"], row["error"]) == (200, "model_b", None)
        assert json.loads(row["teams"]) == ["model_a"] * 5
        metrics = router.client.get("/metrics").text
    assert 'router_backend_errors_total{kind="bad_response",variant="model_b"} 1.0' in metrics
    assert 'router_fallbacks_total{fallback="model_a",variant="model_b"} 1.0' in metrics


def test_a_backend_that_times_out_degrades_the_interleave_at_the_configured_timeout(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    raw = interleave(backends, timeouts={"connect": 0.5, "read": 0.3, "pool": 0.5})
    with running_router(settings_for(tmp_path, raw)) as router:
        backends["model_a"].control.delay = 3.0
        response = router.client.get("/recommend/user-2", params={"k": 4})
        assert response.status_code == 200
        assert response.json()["items"] == items_for("user-2", 4, SHIFT)
        row = exposure_row(router, response.json()["request_id"])
        (latency,) = router.rows("SELECT latency_ms FROM exposures")[0]
    assert row["failed_variant"] == "model_a" and json.loads(row["teams"]) == ["model_b"] * 4
    assert 300 <= latency < 3000  # waited for the read timeout, not for the hung backend


def test_both_backends_failing_is_the_usual_bounded_error_and_is_recorded(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    with running_router(settings_for(tmp_path, interleave(backends))) as router:
        for backend in backends.values():
            backend.control.status = 503
        response = router.client.get("/recommend/user-5")
        assert response.status_code == 503
        body = response.json()
        assert body["variant"] == response.headers["X-Variant"] == "interleaved"
        assert "model_a failed" in body["detail"] and "model_b failed too" in body["detail"]
        row = exposure_row(router, body["request_id"])
    assert (row["status"], row["error"], row["items"], row["teams"], row["failed_variant"]) == (
        503,
        "unavailable",
        "[]",
        "[]",
        None,
    )


def test_feedback_is_credited_to_the_team_of_the_clicked_position(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, interleave(backends))) as router:
        body = router.client.get("/recommend/user-9", params={"k": 8}).json()
        request_id, items = body["request_id"], body["items"]
        _, teams = expected_merge("user-9", 8, request_id)
        shared = next(p for p, item in enumerate(items) if item in items_for("user-9", 8, SHIFT) and p > 0)
        clicked = [0, 1, shared, shared]  # the shared item counts for whoever placed it; twice is once
        for position in clicked:
            accepted = router.client.post(
                "/feedback",
                json={"request_id": request_id, "user_id": "user-9", "item_id": items[position], "event": "click"},
            )
            assert accepted.status_code == 202
        unknown = router.client.post(
            "/feedback", json={"request_id": request_id, "user_id": "user-9", "item_id": 999_999, "event": "click"}
        )
        assert unknown.status_code == 202
        rows = router.rows("SELECT position, variant FROM feedback ORDER BY id")
        report = build_report(router.service.store)
    # Each repeat is stored once (`shared` may be position 1 too: the request id seeds the merge).
    assert rows == [*((p, teams[p]) for p in dict.fromkeys(clicked)), (None, "interleaved")]
    assert report.interleaving is not None
    preference = report.interleaving.preference
    credited = {team: sum(1 for p in {0, 1, shared} if teams[p] == team) for team in ("model_a", "model_b")}
    assert (preference.control_clicks, preference.treatment_clicks) == (credited["model_a"], credited["model_b"])


def test_the_qa_override_serves_the_named_variant_alone(tmp_path: Path, backends: dict[str, Backend]) -> None:
    raw = interleave(backends, override={"enabled": True, "header": "X-Variant"})
    with running_router(settings_for(tmp_path, raw)) as router:
        response = router.client.get("/recommend/user-4", params={"k": 3}, headers={"X-Variant": "model_b"})
        assert response.json()["variant"] == "model_b"
        assert response.json()["items"] == items_for("user-4", 3, SHIFT)
        assert backends["model_a"].control.seen == []
        row = exposure_row(router, response.json()["request_id"])
    assert (row["assignment"], row["teams"]) == ("override", None)


def test_a_reload_switches_a_running_experiment_to_interleaving_in_a_new_phase(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    settings = settings_for(tmp_path, experiment(backends), admin_token=TOKEN)
    with running_router(settings) as router:
        assert router.client.get("/recommend/user-1").json()["variant"] in ("model_a", "model_b")
        write_config(settings.config_path, interleave(backends))
        reloaded = router.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert (reloaded["phase"], reloaded["new_phase"], reloaded["previous_phase"]) == (2, True, 1)
        assert router.client.get("/recommend/user-1").json()["variant"] == "interleaved"
        phases = router.rows("SELECT phase, strategy FROM exposures ORDER BY id")
        design = json.loads(router.rows("SELECT config_json FROM phases WHERE phase = 2")[0][0])
        markdown = render_markdown(build_report(router.service.store))
    assert phases == [(1, "hash"), (2, "interleave")]
    assert design["fan_out"] == {"label": "interleaved", "method": "team-draft"}
    assert markdown.startswith("# Interleaving results: rec-ab, phase 2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"on_error": "fallback", "fallback_variant": "model_a"}, "on_error 'fallback' does not apply"),
        ({"variants": "three"}, "compares exactly 2 variants, got 3 (model_a, model_b, model_c)"),
    ],
)
def test_a_reload_to_an_interleave_it_cannot_serve_is_refused(
    tmp_path: Path, backends: dict[str, Backend], change: dict[str, Any], message: str
) -> None:
    settings = settings_for(tmp_path, experiment(backends), admin_token=TOKEN)
    raw = interleave(backends, **change)
    if raw["variants"] == "three":
        raw["variants"] = [{"name": n, "url": backends["model_a"].url, "weight": 1} for n in ("model_a", "model_b")]
        raw["variants"].append({"name": "model_c", "url": backends["model_b"].url, "weight": 1})
    with running_router(settings) as router:
        write_config(settings.config_path, raw)
        refused = router.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 422 and message in refused.json()["detail"]
        assert router.client.get("/recommend/user-1").json()["variant"] in ("model_a", "model_b")  # still serving
