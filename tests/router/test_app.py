"""The real router app on a loopback socket in front of fake model servers: the API end to end."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from abtest.processes import free_port
from router.fastpath import parse_recommend
from router.strategies import Assignment, Outcome, Unit
from tests.router.conftest import (
    AB,
    Backend,
    experiment,
    running_router,
    settings_for,
    users_of,
    wait_until,
    write_config,
)
from tests.support.fake_model import items_for

TOKEN = "test-admin-token"


def test_recommend_proxies_and_adds_variant_and_request_id(tmp_path: Path, backends: dict[str, Backend]) -> None:
    user_a, user_b = users_of("model_a", AB)[0], users_of("model_b", AB)[0]
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        for user, name in ((user_a, "model_a"), (user_b, "model_b")):
            response = router.client.get(f"/recommend/{user}", params={"k": 5})
            assert response.status_code == 200
            body = response.json()
            assert body["variant"] == name == response.headers["X-Variant"]
            assert body["request_id"] == response.headers["X-Request-ID"]
            assert re.fullmatch("[0-9a-f]{48}", body["request_id"])  # 128 random bits and a 64-bit tag
            assert body["items"] == items_for(user, 5)
            assert body["model"] == name and body["user_id"] == user  # the backend's own fields pass through
            assert backends[name].control.seen[-1] == f"/recommend/{user}?k=5"
        assert len(backends["model_a"].control.seen) == len(backends["model_b"].control.seen) == 1
        rows = router.rows(
            "SELECT user_id, variant, assigned_variant, assignment, status, k, items, phase FROM exposures"
        )
        assert sorted(rows) == sorted(
            [
                (
                    user_a,
                    "model_a",
                    "model_a",
                    "strategy",
                    200,
                    5,
                    json.dumps(items_for(user_a, 5)).replace(" ", ""),
                    1,
                ),
                (
                    user_b,
                    "model_b",
                    "model_b",
                    "strategy",
                    200,
                    5,
                    json.dumps(items_for(user_b, 5)).replace(" ", ""),
                    1,
                ),
            ]
        )


def test_default_k_is_10(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        assert len(router.client.get("/recommend/42").json()["items"]) == 10


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/recommend/.hidden", "user_id"),
        ("/recommend/a%20b", "user_id"),
        ("/recommend/%C3%A9t%C3%A9", "user_id"),
        ("/recommend/" + "x" * 65, "user_id"),
        ("/recommend/a%0D%0AX-Injected:%201", "user_id"),
        ("/recommend/42?k=0", "k"),
        ("/recommend/42?k=101", "k"),
        ("/recommend/42?k=ten", "k"),
    ],
)
def test_invalid_requests_get_422_naming_the_field_and_reach_no_backend(
    tmp_path: Path, backends: dict[str, Backend], path: str, field: str
) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        response = router.client.get(path)
        assert response.status_code == 422
        assert field in response.json()["detail"]
        assert router.rows("SELECT COUNT(*) FROM exposures") == [(0,)]
    assert backends["model_a"].control.seen == backends["model_b"].control.seen == []


@pytest.mark.parametrize("path", ["/recommend/..%2F..%2Fadmin", "/recommend/a/b", "/recommend/%2E%2E"])
def test_path_tricks_never_reach_a_backend(tmp_path: Path, backends: dict[str, Backend], path: str) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        assert router.client.get(path).status_code in (404, 422)
    assert backends["model_a"].control.seen == backends["model_b"].control.seen == []


def test_client_headers_are_not_forwarded(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        router.client.get(
            "/recommend/42", headers={"X-Secret": "s", "Host": "evil.example", "Authorization": "Bearer x"}
        )
    sent = backends["model_a"].control.headers + backends["model_b"].control.headers
    assert len(sent) == 1
    assert "x-secret" not in sent[0] and "authorization" not in sent[0]
    assert sent[0]["host"].startswith("127.0.0.1:")


def test_feedback_is_attributed_by_request_id(tmp_path: Path, backends: dict[str, Backend]) -> None:
    user = users_of("model_b", AB)[0]
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        shown = router.client.get(f"/recommend/{user}", params={"k": 5}).json()
        response = router.client.post(
            "/feedback",
            json={"request_id": shown["request_id"], "user_id": user, "item_id": shown["items"][2], "event": "click"},
        )
        assert response.status_code == 202
        assert response.json() == {
            "status": "accepted",
            "request_id": shown["request_id"],
            "variant": "model_b",
            "phase": 1,
            "assignment": "strategy",
            "attributed_by": "request_id",
            "position": 2,
        }
        assert router.rows(
            "SELECT request_id, user_id, variant, item_id, position, event, attributed_by FROM feedback"
        ) == [(shown["request_id"], user, "model_b", shown["items"][2], 2, "click", "request_id")]


def test_feedback_without_request_id_goes_to_the_users_latest_exposure(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    user = users_of("model_a", AB)[0]
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        router.client.get(f"/recommend/{user}", params={"k": 3})
        latest = router.client.get(f"/recommend/{user}", params={"k": 4}).json()
        response = router.client.post(
            "/feedback", json={"user_id": user, "item_id": 999_999, "event": "rating", "value": 4.5}
        )
        assert response.status_code == 202
        # Anyone can name a user: the answer says nothing of the exposure (no id, variant or position).
        assert response.json() == {"status": "accepted", "attributed_by": "user"}
        assert router.rows("SELECT request_id, value, position FROM feedback") == [(latest["request_id"], 4.5, None)]


def test_feedback_answers_do_not_tell_foreign_ids_from_unknown_ones(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        shown = router.client.get("/recommend/alice").json()
        forged = shown["request_id"][:32] + "0" * 16  # the random half of a real id with a made-up tag
        answers = [
            router.client.post("/feedback", json={"request_id": rid, "user_id": "bob", "item_id": 1, "event": "click"})
            for rid in (shown["request_id"], "0" * 48, forged)
        ]
        assert {
            (a.status_code, a.json()["detail"].replace(rid, "ID"))
            for a, rid in zip(answers, (shown["request_id"], "0" * 48, forged), strict=True)
        } == {(404, "unknown request_id 'ID' for user 'bob'")}
        assert router.rows("SELECT COUNT(*) FROM feedback") == [(0,)]


def test_repeated_feedback_is_stored_once(tmp_path: Path, backends: dict[str, Backend]) -> None:
    user = users_of("model_a", AB)[0]
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        shown = router.client.get(f"/recommend/{user}", params={"k": 3}).json()
        click = {"request_id": shown["request_id"], "user_id": user, "item_id": shown["items"][0], "event": "click"}
        for _ in range(3):
            assert router.client.post("/feedback", json=click).status_code == 202
        by_user = {"user_id": user, "item_id": shown["items"][0], "event": "click"}  # the same exposure, by user
        assert router.client.post("/feedback", json=by_user).status_code == 202
        assert router.client.post("/feedback", json={**click, "event": "watch"}).status_code == 202
        assert router.rows("SELECT event, COUNT(*) FROM feedback GROUP BY event ORDER BY event") == [
            ("click", 1),
            ("watch", 1),
        ]


def test_feedback_by_user_picks_the_latest_to_arrive_when_answers_finish_out_of_order(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    user = users_of("model_a", AB)[0]
    slow_path = f"/recommend/{user}?k=3"
    backends["model_a"].control.held.add(slow_path)  # the first request to arrive finishes last
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        slow: list[dict[str, Any]] = []
        first = threading.Thread(
            target=lambda: slow.append(router.client.get(f"/recommend/{user}", params={"k": 3}).json())
        )
        first.start()
        wait_until(lambda: backends["model_a"].control.seen == [slow_path], what="the slow request at the backend")
        quick = router.client.get(f"/recommend/{user}", params={"k": 4}).json()
        backends["model_a"].control.held.discard(slow_path)
        first.join()
        assert slow and slow[0]["request_id"] != quick["request_id"]
        # "Latest" is the latest to arrive: the quick one, though the slow one was recorded after it.
        by_user = {"user_id": user, "item_id": 1, "event": "click"}
        assert router.client.post("/feedback", json=by_user).status_code == 202  # from the in-memory index
        assert router.rows("SELECT request_id FROM feedback") == [(quick["request_id"],)]
    with running_router(settings_for(tmp_path, experiment(backends))) as again:  # a new process: the store
        assert again.client.post("/feedback", json={**by_user, "event": "watch"}).status_code == 202
        assert again.rows("SELECT request_id FROM feedback WHERE event = 'watch'") == [(quick["request_id"],)]


def test_feedback_that_cannot_be_attributed_is_refused_clearly(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        shown = router.client.get("/recommend/alice").json()
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"request_id": "0" * 48, "user_id": "alice", "item_id": 1, "event": "click"}, 404, "unknown request_id"),
            ({"request_id": shown["request_id"], "user_id": "bob", "item_id": 1, "event": "click"}, 404, "unknown"),
            ({"request_id": "0" * 32, "user_id": "alice", "item_id": 1, "event": "click"}, 422, "request_id"),
            ({"user_id": "nobody", "item_id": 1, "event": "click"}, 404, "no exposure for user 'nobody'"),
            ({"user_id": "alice", "item_id": "1", "event": "click"}, 422, "item_id"),
            ({"user_id": "alice", "item_id": 1}, 422, "event"),
            ({"user_id": "alice", "item_id": 1, "event": "click", "extra": 1}, 422, "extra"),
            ({"user_id": "../alice", "item_id": 1, "event": "click"}, 422, "user_id"),
            ({"request_id": "not-hex", "user_id": "alice", "item_id": 1, "event": "click"}, 422, "request_id"),
            ({"user_id": "alice", "item_id": 1, "event": "Click Me"}, 422, "event"),
            ({"user_id": "alice", "item_id": 2**70, "event": "click"}, 422, "item_id"),
        ]
        for body, status, message in cases:
            response = router.client.post("/feedback", json=body)
            assert (response.status_code, message in response.json()["detail"]) == (status, True), (body, response.text)
        json_type = {"Content-Type": "application/json"}
        assert router.client.post("/feedback", content=b"{not json", headers=json_type).status_code == 422
        infinite = b'{"user_id": "alice", "item_id": 1, "event": "rating", "value": 1e999}'
        refused = router.client.post("/feedback", content=infinite, headers=json_type)
        assert refused.status_code == 422 and "value" in refused.json()["detail"]
        assert router.rows("SELECT COUNT(*) FROM feedback") == [(0,)]


def test_feedback_on_an_error_exposure_is_a_conflict(tmp_path: Path, backends: dict[str, Backend]) -> None:
    user = users_of("model_b", AB)[0]
    backends["model_b"].control.status = 500
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        failed = router.client.get(f"/recommend/{user}").json()
        response = router.client.post(
            "/feedback", json={"request_id": failed["request_id"], "user_id": user, "item_id": 1, "event": "click"}
        )
        assert response.status_code == 409
        assert "answered with an error" in response.json()["detail"]


def test_oversized_bodies_get_413(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends, max_body_bytes=1024))) as router:
        big = {"user_id": "alice", "item_id": 1, "event": "click", "pad": "x" * 5_000}
        assert router.client.post("/feedback", json=big).status_code == 413

        def chunks() -> Any:
            for _ in range(10):
                yield b"x" * 500  # no Content-Length: the limit is enforced while reading

        response = router.client.post("/feedback", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert "larger than 1024 bytes" in response.json()["detail"]


def test_override_header_is_ignored_when_disabled(tmp_path: Path, backends: dict[str, Backend]) -> None:
    user = users_of("model_a", AB)[0]
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        response = router.client.get(f"/recommend/{user}", headers={"X-Variant": "model_b"})
        assert response.headers["X-Variant"] == "model_a"
        assert router.rows("SELECT variant, assignment FROM exposures") == [("model_a", "strategy")]
    assert backends["model_b"].control.seen == []


def test_override_header_forces_a_variant_when_enabled(tmp_path: Path, backends: dict[str, Backend]) -> None:
    user = users_of("model_a", AB)[0]
    raw = experiment(backends, override={"enabled": True, "header": "X-QA-Variant"})
    with running_router(settings_for(tmp_path, raw)) as router:
        forced = router.client.get(f"/recommend/{user}", headers={"X-QA-Variant": "model_b"})
        assert (forced.status_code, forced.headers["X-Variant"]) == (200, "model_b")
        unknown = router.client.get(f"/recommend/{user}", headers={"X-QA-Variant": "model_z"})
        assert unknown.status_code == 422 and "'model_z' is not a variant" in unknown.json()["detail"]
        plain = router.client.get(f"/recommend/{user}")
        assert plain.headers["X-Variant"] == "model_a"
        assert router.rows("SELECT variant, assigned_variant, assignment FROM exposures ORDER BY id") == [
            ("model_b", "model_b", "override"),
            ("model_a", "model_a", "strategy"),
        ]


def test_dead_backend_gets_a_clear_error_and_the_router_stays_up(tmp_path: Path, backends: dict[str, Backend]) -> None:
    raw = experiment(backends)
    raw["variants"][1]["url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    user_a, user_b = users_of("model_a", AB)[0], users_of("model_b", AB)[0]
    with running_router(settings_for(tmp_path, raw)) as router:
        for _ in range(3):
            failed = router.client.get(f"/recommend/{user_b}")
            assert failed.status_code == 503
            body = failed.json()
            assert body["variant"] == "model_b" and "model_b" in body["detail"]
            assert body["request_id"] == failed.headers["X-Request-ID"]
        assert router.client.get(f"/recommend/{user_a}").status_code == 200
        wait_until(
            lambda: router.client.get("/health").json()["backends"]["model_b"]["status"] == "down",
            what="health to report model_b down",
        )
        health = router.client.get("/health").json()
        assert (health["status"], health["backends"]["model_a"]["status"]) == ("degraded", "up")
        assert (
            router.rows("SELECT variant, status, error FROM exposures WHERE variant = 'model_b'")
            == [("model_b", 503, "unavailable")] * 3
        )


def test_slow_backend_times_out_and_the_other_variant_is_unaffected(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    backends["model_b"].control.delay = 3.0
    read_timeout = 1.0
    raw = experiment(backends, timeouts={"connect": 0.5, "read": read_timeout, "pool": 0.5})
    user_a, user_b = users_of("model_a", AB)[0], users_of("model_b", AB)[0]
    with running_router(settings_for(tmp_path, raw)) as router:
        router.client.get(f"/recommend/{user_a}")  # warm the pool
        outcome: dict[str, Any] = {}

        def slow_call() -> None:
            with httpx.Client(base_url=router.url, timeout=10) as other:
                started = time.monotonic()
                outcome["response"] = other.get(f"/recommend/{user_b}")
                outcome["ended"] = time.monotonic()
                outcome["elapsed"] = outcome["ended"] - started

        caller = threading.Thread(target=slow_call)
        caller.start()
        wait_until(lambda: len(backends["model_b"].control.seen) == 1, what="the slow request to reach model_b")
        for _ in range(5):  # while model_b hangs, model_a answers
            assert router.client.get(f"/recommend/{user_a}").status_code == 200
        fast_done = time.monotonic()
        caller.join(10)
        response = outcome["response"]
        assert response.status_code == 504
        assert response.json()["variant"] == "model_b"
        # Not a time budget but the order: all five model_a answers came while model_b's request still hung
        # (nothing waited behind it), and that one ended by its read timeout, before model_b's answer.
        assert fast_done < outcome["ended"], "a model_a request waited for the hung model_b"
        assert read_timeout <= outcome["elapsed"] < backends["model_b"].control.delay, outcome["elapsed"]


@pytest.mark.parametrize(
    ("fault", "status"), [({"status": 500}, 502), ({"garbage": True}, 502), ({"status": 503}, 503)]
)
def test_broken_backend_answers_map_to_502_or_503(
    tmp_path: Path, backends: dict[str, Backend], fault: dict[str, Any], status: int
) -> None:
    for name, value in fault.items():
        setattr(backends["model_b"].control, name, value)
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        response = router.client.get(f"/recommend/{users_of('model_b', AB)[0]}")
        assert (response.status_code, response.json()["variant"]) == (status, "model_b")


def test_fallback_serves_the_fallback_variant_marked_as_such(tmp_path: Path, backends: dict[str, Backend]) -> None:
    raw = experiment(backends, on_error="fallback", fallback_variant="model_a")
    raw["variants"][1]["url"] = f"http://127.0.0.1:{free_port()}"
    user_b = users_of("model_b", AB)[0]
    with running_router(settings_for(tmp_path, raw)) as router:
        response = router.client.get(f"/recommend/{user_b}", params={"k": 3})
        assert response.status_code == 200
        assert response.headers["X-Variant"] == response.json()["variant"] == "model_a"
        assert response.json()["items"] == items_for(user_b, 3)
        assert router.rows("SELECT variant, assigned_variant, assignment, status FROM exposures") == [
            ("model_a", "model_b", "fallback", 200)
        ]
        metrics = router.client.get("/metrics").text
        assert 'router_fallbacks_total{fallback="model_a",variant="model_b"} 1.0' in metrics


def test_admin_is_disabled_without_a_token(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        response = router.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 403
        assert "disabled" in response.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": TOKEN}, 401),
        ({"Authorization": "Basic " + TOKEN}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ],
)
def test_admin_requires_the_bearer_token(
    tmp_path: Path, backends: dict[str, Backend], headers: dict[str, str], status: int
) -> None:
    with running_router(settings_for(tmp_path, experiment(backends), admin_token=TOKEN)) as router:
        response = router.client.post("/admin/reload", headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_wrong_admin_tokens_are_throttled_per_address_and_logged(
    tmp_path: Path, backends: dict[str, Backend], caplog: pytest.LogCaptureFixture
) -> None:
    wrong, right = {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}"}
    with running_router(settings_for(tmp_path, experiment(backends), admin_token=TOKEN)) as router:
        assert router.client.post("/admin/reload", headers=right).status_code == 200  # success costs nothing
        with caplog.at_level("WARNING", logger="router.admin_auth"):
            statuses = [router.client.post("/admin/reload", headers=wrong).status_code for _ in range(12)]
        assert statuses == [403] * 10 + [429] * 2
        throttled = router.client.post("/admin/reload", headers=right)  # even the right token: no oracle
        assert throttled.status_code == 429 and 1 <= int(throttled.headers["Retry-After"]) <= 60
        assert any(
            r.getMessage() == "wrong admin token" and getattr(r, "client", None) == "127.0.0.1" for r in caplog.records
        )
        assert router.client.get("/recommend/alice").status_code == 200  # only admin requests are refused


def test_reload_applies_a_good_file_with_a_new_phase_and_refuses_a_bad_one(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    raw = experiment(backends)
    settings = settings_for(tmp_path, raw, admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_router(settings) as router:
        router.client.get("/recommend/before")
        assert router.client.get("/config").json()["phase"] == 1

        # Only timeouts change: nobody can move, so the phase continues.
        write_config(settings.config_path, {**raw, "timeouts": {"connect": 0.5, "read": 0.9, "pool": 0.5}})
        same = router.client.post("/admin/reload", headers=auth).json()
        assert (same["phase"], same["new_phase"]) == (1, False)
        assert same["config"]["timeouts"]["read"] == 0.9

        # A new strategy: a new phase, recorded on later exposures.
        write_config(settings.config_path, {**raw, "strategy": "random"})
        applied = router.client.post("/admin/reload", headers=auth)
        assert applied.status_code == 200
        assert (applied.json()["phase"], applied.json()["new_phase"], applied.json()["previous_phase"]) == (2, True, 1)
        assert router.client.get("/config").json()["strategy"] == "random"
        router.client.get("/recommend/after")

        # A bad file is refused with the field named; the old config keeps serving.
        write_config(settings.config_path, {**raw, "strategy": "sticky"})
        refused = router.client.post("/admin/reload", headers=auth)
        assert refused.status_code == 422
        assert "strategy" in refused.json()["detail"] and "'sticky'" in refused.json()["detail"]
        settings.config_path.write_text("variants: [broken\n")
        unreadable = router.client.post("/admin/reload", headers=auth)
        assert unreadable.status_code == 400 and "not valid YAML" in unreadable.json()["detail"]
        assert router.client.get("/config").json()["strategy"] == "random"
        assert router.client.get("/recommend/still-serving").status_code == 200

        assert router.rows("SELECT user_id, phase, strategy FROM exposures ORDER BY id") == [
            ("before", 1, "hash"),
            ("after", 2, "random"),
            ("still-serving", 2, "random"),
        ]
        assert router.rows("SELECT phase, config_key FROM phases ORDER BY phase")[1][0] == 2
        metrics = router.client.get("/metrics").text
        assert 'router_reloads_total{result="refused"} 2.0' in metrics
        assert "router_phase 2.0" in metrics


def test_config_shows_the_live_config_without_secrets(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends), admin_token=TOKEN)) as router:
        config = router.client.get("/config")
        assert config.status_code == 200
        shown = config.json()
        assert (shown["experiment"], shown["strategy"], shown["weights"]) == (
            "rec-ab",
            "hash",
            {"model_a": 0.5, "model_b": 0.5},
        )
        assert TOKEN not in config.text


def test_health_metrics_and_variant_info(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        wait_until(lambda: router.client.get("/health").json()["status"] == "ok", what="both backends up")
        health = router.client.get("/health").json()
        assert set(health["backends"]) == {"model_a", "model_b"}
        assert health["backends"]["model_b"]["model"] == "model_b"
        shown = router.client.get("/recommend/42").json()
        router.client.post("/feedback", json={"user_id": "42", "item_id": shown["items"][0], "event": "click"})
        router.client.get("/recommend/42?k=0")
        router.flush()
        metrics = router.client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        variant = shown["variant"]
        for line in (
            f'router_requests_total{{status="200",variant="{variant}"}} 1.0',
            f'router_feedback_total{{event="click",variant="{variant}"}} 1.0',
            'router_events_written_total{kind="exposure"} 1.0',
            'router_events_written_total{kind="feedback"} 1.0',
            'router_rejected_total{endpoint="recommend",status="422"} 1.0',
            "router_events_pending 0.0",
            f'router_request_seconds_count{{variant="{variant}"}} 1.0',
            'router_backend_up{variant="model_a"} 1.0',
        ):
            assert line in text, line
        wait_until(
            lambda: len(router.rows("SELECT variant FROM variant_info WHERE phase = 1")) == 2, what="variant_info"
        )
        infos = dict(router.rows("SELECT variant, info_json FROM variant_info"))
        assert orjson.loads(infos["model_b"])["algorithm"] == "fake-model_b"


def test_httpx_backend_client_serves_the_same(tmp_path: Path, backends: dict[str, Backend]) -> None:
    raw = experiment(backends, backend_client="httpx")
    raw["variants"][1]["url"] = f"http://127.0.0.1:{free_port()}"
    with running_router(settings_for(tmp_path, raw)) as router:
        ok = router.client.get(f"/recommend/{users_of('model_a', AB)[0]}")
        dead = router.client.get(f"/recommend/{users_of('model_b', AB)[0]}")
        assert (ok.status_code, dead.status_code, dead.json()["variant"]) == (200, 503, "model_b")
        assert router.client.get("/config").json()["backend_client"] == "httpx"


def test_random_strategy_from_the_environment(
    tmp_path: Path, backends: dict[str, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_STRATEGY", "random")
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        seen = {router.client.get("/recommend/same-user").headers["X-Variant"] for _ in range(40)}
        assert seen == {"model_a", "model_b"}  # per request: (1/2)^39 chance of a false failure
        assert router.rows("SELECT DISTINCT strategy FROM exposures") == [("random",)]


@pytest.mark.parametrize(
    ("path", "query", "parsed"),
    [
        ("/recommend/42", b"", ("42", 10)),
        ("/recommend/u.1-x_", b"k=100", ("u.1-x_", 100)),
        ("/recommend/42", b"k=0", None),
        ("/recommend/42", b"k=101", None),
        ("/recommend/42", b"k=5&x=1", None),
        ("/recommend/42", b"k=-1", None),
        ("/recommend/.x", b"", None),
        ("/recommend/a/b", b"", None),
        ("/recommend/", b"", None),
    ],
)
def test_fast_path_takes_only_plainly_valid_requests(path: str, query: bytes, parsed: tuple[str, int] | None) -> None:
    assert parse_recommend({"path": path, "query_string": query}) == parsed


def test_requests_outside_the_fast_path_are_answered_the_same(tmp_path: Path, backends: dict[str, Backend]) -> None:
    raw = experiment(backends)
    raw["variants"][1]["url"] = f"http://127.0.0.1:{free_port()}"
    user_a, user_b = users_of("model_a", AB)[0], users_of("model_b", AB)[0]
    with running_router(settings_for(tmp_path, raw)) as router:
        for extra in ({}, {"utm": "x"}):  # an unknown query parameter sends the request through FastAPI
            ok = router.client.get(f"/recommend/{user_a}", params={"k": 3, **extra})
            assert (ok.status_code, ok.headers["X-Variant"], ok.json()["items"]) == (
                200,
                "model_a",
                items_for(user_a, 3),
            )
            assert ok.json()["request_id"] == ok.headers["X-Request-ID"]
            failed = router.client.get(f"/recommend/{user_b}", params={"k": 3, **extra})
            assert failed.status_code == 503
            assert set(failed.json()) == {"detail", "variant", "request_id"}
            assert failed.headers["X-Request-ID"] == failed.json()["request_id"]
        assert (
            router.rows("SELECT variant, status FROM exposures ORDER BY id")
            == [
                ("model_a", 200),
                ("model_b", 503),
            ]
            * 2
        )


class ExplodingStrategy:
    """A strategy with a bug: every assignment raises something no handler expects."""

    name = "hash"
    unit: Unit = "user"

    def assign(self, unit_id: str) -> Assignment:
        raise RuntimeError("a bug in a strategy")

    def observe(self, outcome: Outcome) -> None:
        """Nothing to learn."""


def test_an_unexpected_error_is_the_same_json_500_on_the_fast_path_and_through_fastapi(
    tmp_path: Path, backends: dict[str, Backend], caplog: pytest.LogCaptureFixture
) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        live = router.service.live
        router.service._live = replace(live, strategy=ExplodingStrategy())
        fast = router.client.get("/recommend/alice")  # plainly valid: the fast path serves it
        slow = router.client.get("/recommend/alice", params={"utm": "x"})  # an extra parameter: FastAPI does
        router.service._live = live
        assert router.client.get("/recommend/alice").status_code == 200  # and the router is fine afterwards
    for answer in (fast, slow):
        assert answer.status_code == 500
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {"detail": "internal error in the router"}  # no detail of the bug leaks
    assert sum("unhandled error" in r.getMessage() and r.exc_info is not None for r in caplog.records) == 2


def test_a_full_store_queue_refuses_feedback_and_counts_lost_exposures(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        shown = router.client.get("/recommend/alice").json()
        router.flush()
        router.service.store.max_pending = 0  # as if the store had been failing until the queue filled up
        served = router.client.get("/recommend/alice")
        assert served.status_code == 200  # requests keep being served
        refused = router.client.post(
            "/feedback", json={"request_id": shown["request_id"], "user_id": "alice", "item_id": 1, "event": "click"}
        )
        assert refused.status_code == 503
        assert refused.json()["detail"] == "outcome store overloaded, retry"
        assert refused.headers["Retry-After"] == "1"
        metrics = router.client.get("/metrics").text
        assert 'router_events_lost_total{kind="exposure"} 1.0' in metrics
        assert 'router_rejected_total{endpoint="feedback",status="503"} 1.0' in metrics
        assert router.client.get("/health").json()["store"]["lost"]["exposure"] == 1
