"""GET /results and GET /report: the live A/B report over the router's own outcome store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.router.conftest import AB, Backend, experiment, running_router, settings_for, users_of, write_config


def test_results_and_report_count_every_acknowledged_exposure_and_click(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    settings = settings_for(tmp_path, experiment(backends))
    with running_router(settings) as router:
        served: dict[str, int] = {"model_a": 0, "model_b": 0}
        clicks: dict[str, int] = {"model_a": 0, "model_b": 0}
        for number in range(60):
            body = router.client.get(f"/recommend/user-{number}", params={"k": 5}).json()
            served[body["variant"]] += 1
            if number % 3 == 0:
                feedback = {"request_id": body["request_id"], "user_id": f"user-{number}", "item_id": body["items"][0]}
                assert router.client.post("/feedback", json={**feedback, "event": "click"}).status_code == 202
                clicks[body["variant"]] += 1
        # no flush here: the endpoint itself must include events still queued for the writer
        results = router.client.get("/results")
        page = router.client.get("/report")

    assert results.status_code == 200
    report = results.json()
    assert report["experiment"] == "rec-ab" and report["phase"] == 1 and report["unit"] == "user"
    assert {row["name"]: row["exposures"] for row in report["variants"]} == served
    assert {row["name"]: row["clicked_exposures"] for row in report["variants"]} == clicks
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and "rec-ab" in page.text


def test_results_for_a_phase_that_does_not_exist_is_a_clear_404(tmp_path: Path, backends: dict[str, Backend]) -> None:
    settings = settings_for(tmp_path, experiment(backends))
    with running_router(settings) as router:
        before_traffic = router.client.get("/results")
        router.client.get(f"/recommend/{users_of('model_a', AB)[0]}")
        missing_phase = router.client.get("/report", params={"phase": 7})
        bad_phase = router.client.get("/results", params={"phase": 0})
    assert before_traffic.status_code == 404
    assert "no exposures" in before_traffic.json()["detail"]
    assert missing_phase.status_code == 404  # a page for people: what is wrong, where the data is
    assert (
        "Phase 7 is not in the store (phases: 1)" in missing_phase.text and '<a href="?phase=1">' in missing_phase.text
    )
    assert bad_phase.status_code == 422


def test_report_is_reused_for_a_few_seconds_so_reloading_it_cannot_starve_recommend(
    tmp_path: Path, backends: dict[str, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, experiment(backends))
    with running_router(settings) as router:
        router.client.get("/recommend/user-1")
        first = router.client.get("/results")
        router.client.get("/recommend/user-2")
        reused = router.client.get("/results")
        monkeypatch.setattr("router.app.REPORT_MAX_AGE", 0.0)
        rebuilt = router.client.get("/results")

    def exposures(response: httpx.Response) -> int:
        return sum(row["exposures"] for row in response.json()["variants"])

    assert first.headers["cache-control"] == "max-age=5"
    assert exposures(first) == exposures(reused) == 1
    assert exposures(rebuilt) == 2


def test_report_of_a_phase_without_data_is_a_page_that_says_so_and_links_the_previous_phase(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    settings = settings_for(tmp_path, experiment(backends), admin_token="t")
    with running_router(settings) as router:
        router.client.get("/recommend/user-1")
        write_config(settings.config_path, experiment(backends, salt="a-new-salt"))  # a new phase, no traffic yet
        assert router.client.post("/admin/reload", headers={"Authorization": "Bearer t"}).json()["phase"] == 2
        page = router.client.get("/report")
        results = router.client.get("/results")
        previous = router.client.get("/report", params={"phase": 1})

    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Phase 2 of experiment <strong>rec-ab</strong> started" in page.text and "no exposures yet" in page.text
    assert '<p id="previous-phase">Previous phase with data: <a href="?phase=1">phase 1</a>' in page.text
    assert results.status_code == 404 and results.json() == {"detail": "phase 2 has no exposures yet"}
    assert previous.status_code == 200 and "<svg" in previous.text
