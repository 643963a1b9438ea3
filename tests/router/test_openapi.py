"""The router's API documents itself: /docs and /redoc work offline, and the OpenAPI document describes every
answer the endpoints really give (each real answer below validates against the schema the document names)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.router.conftest import AB, Backend, experiment, running_router, settings_for, users_of, write_config

TOKEN = "openapi-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def assets_of(page: str) -> list[str]:
    """Every script, stylesheet and icon a docs page loads."""
    return re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"(?:url|spec-url): ?'([^']+)'", page)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_router_itself(
    tmp_path: Path, backends: dict[str, Backend], page: str
) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        html = router.client.get(page)
        assets = [url for url in assets_of(html.text) if not url.startswith("#")]
        answers = {url: router.client.get(url) for url in assets}
    assert html.status_code == 200
    assert assets and all(url.startswith("/") for url in assets), assets  # no CDN, no font service
    assert any(url.endswith(".js") for url in assets)
    assert {url: answer.status_code for url, answer in answers.items()} == dict.fromkeys(assets, 200)
    assert "/openapi.json" in assets or "openapi.json" in html.text


def schema_of(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The JSON schema the document gives for one answer, with the document's components to resolve $refs."""
    answer = document["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = answer["content"]["application/json"]["schema"]
    return {**schema, "components": document["components"]}


def validate(document: dict[str, Any], path: str, method: str, answer: httpx.Response) -> None:
    jsonschema.validate(answer.json(), schema_of(document, path, method, answer.status_code))


def test_openapi_names_a_schema_for_every_answer_and_real_answers_validate(
    tmp_path: Path, backends: dict[str, Backend]
) -> None:
    settings = settings_for(tmp_path, experiment(backends), admin_token=TOKEN)
    user_a, user_b = users_of("model_a", AB)[0], users_of("model_b", AB)[0]
    with running_router(settings) as router:
        document = router.client.get("/openapi.json").json()
        client = router.client
        answers: list[tuple[str, str, httpx.Response]] = []

        def record(path: str, method: str, answer: httpx.Response) -> httpx.Response:
            answers.append((path, method, answer))
            return answer

        shown = record("/recommend/{user_id}", "get", client.get(f"/recommend/{user_a}", params={"k": 3})).json()
        record("/recommend/{user_id}", "get", client.get(f"/recommend/{user_a}", params={"k": 0}))
        click = {"request_id": shown["request_id"], "user_id": user_a, "item_id": shown["items"][0], "event": "click"}
        record("/feedback", "post", client.post("/feedback", json=click))
        record("/feedback", "post", client.post("/feedback", json={**click, "request_id": "0" * 32}))
        record("/feedback", "post", client.post("/feedback", json={**click, "user_id": user_b}))
        backends["model_b"].control.status = 500
        failed = client.get(f"/recommend/{user_b}")
        record("/recommend/{user_id}", "get", failed)
        error_click = {**click, "request_id": failed.json()["request_id"], "user_id": user_b}
        record("/feedback", "post", client.post("/feedback", json=error_click))
        backends["model_b"].control.status = 200
        record("/results", "get", client.get("/results"))
        record("/results", "get", client.get("/results", params={"phase": 99}))
        record("/admin/reload", "post", client.post("/admin/reload"))
        record("/admin/reload", "post", client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}))
        record("/admin/reload", "post", client.post("/admin/reload", headers=ADMIN))
        record("/admin/resume/{variant}", "post", client.post("/admin/resume/model_b", headers=ADMIN))

    statuses = {(path, method, answer.status_code) for path, method, answer in answers}
    assert statuses == {
        ("/recommend/{user_id}", "get", 200),
        ("/recommend/{user_id}", "get", 422),
        ("/recommend/{user_id}", "get", 502),
        ("/feedback", "post", 202),
        ("/feedback", "post", 404),
        ("/feedback", "post", 409),
        ("/feedback", "post", 422),
        ("/results", "get", 200),
        ("/results", "get", 404),
        ("/admin/reload", "post", 200),
        ("/admin/reload", "post", 401),
        ("/admin/reload", "post", 403),
        ("/admin/resume/{variant}", "post", 409),
    }
    for path, method, answer in answers:
        validate(document, path, method, answer)
    # Documented though not provoked here: the store's overload, a backend down or slow, the resume itself.
    for path, method, status in (
        ("/feedback", "post", 503),
        ("/recommend/{user_id}", "get", 503),
        ("/recommend/{user_id}", "get", 504),
        ("/admin/resume/{variant}", "post", 200),
    ):
        assert schema_of(document, path, method, status)["$ref"].startswith("#/components/schemas/")


def test_report_schema_is_strict_enough_to_catch_a_wrong_answer(tmp_path: Path, backends: dict[str, Backend]) -> None:
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        router.client.get("/recommend/someone")
        results = router.client.get("/results").json()
        document = router.client.get("/openapi.json").json()
    schema = schema_of(document, "/results", "get", 200)
    jsonschema.validate(results, schema)
    for broken in ({**results, "phase": "one"}, {k: v for k, v in results.items() if k != "variants"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_no_answer_names_a_server_path(tmp_path: Path, backends: dict[str, Backend]) -> None:
    """GET /config names its file without its folder; errors that would name a path name only its last part."""
    settings = settings_for(tmp_path, experiment(backends), admin_token=TOKEN)
    with running_router(settings) as router:
        answers = [
            router.client.get("/config"),
            router.client.get("/results", params={"phase": 99}),
            router.client.get("/report", params={"phase": 99}),
            router.client.post("/admin/reload", headers=ADMIN),
        ]
        write_config(settings.config_path, {"experiment": "broken"})
        answers.append(router.client.post("/admin/reload", headers=ADMIN))
        settings.config_path.unlink()
        answers.append(router.client.post("/admin/reload", headers=ADMIN))
    assert [a.status_code for a in answers] == [200, 404, 404, 200, 422, 400]
    assert answers[0].json()["config_path"] == "experiment.yaml"
    for answer in answers:
        assert str(tmp_path) not in answer.text, answer.text
        assert not server_paths(answer.text), answer.text


def server_paths(text: str) -> list[str]:
    """Absolute paths in `text` whose first folder exists on this machine (/tmp/..., /work/..., /srv/...)."""
    found = re.findall(r"(?<![\w.:/~<-])(/([\w.@+-]+)/[\w.@+-]+)", text)
    return [path for path, top in found if Path("/", top).is_dir()]
