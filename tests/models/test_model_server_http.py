"""The model REST contract over real HTTP: each real server started as `python -m model_x --port N`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from abtest.processes import (
    CLEAN_EXIT_CODES,
    free_port,
    python_module,
    start_service,
    stop_service,
    wait_healthy,
)
from recsys.training import MODEL_NAMES


@pytest.fixture(scope="module", params=MODEL_NAMES)
def server(request: pytest.FixtureRequest, models_dir: Path) -> Iterator[tuple[str, httpx.Client]]:
    name: str = request.param
    port = free_port()
    proc = start_service(python_module(name, "--port", str(port)), env={"MODELS_DIR": str(models_dir)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, timeout=60)
        with httpx.Client(base_url=base, timeout=5) as client:
            yield name, client
    finally:
        stop_service(proc)


def test_recommend_returns_the_contract_for_a_known_user(server: tuple[str, httpx.Client], models_dir: Path) -> None:
    name, client = server
    response = client.get("/recommend/42", params={"k": 7})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user_id", "items", "scores", "model", "version", "cold_start"}
    assert body["user_id"] == "42" and body["model"] == name and body["cold_start"] is False
    assert len(body["items"]) == 7 == len(set(body["items"]))
    assert all(isinstance(item, int) for item in body["items"])
    assert body["scores"] == sorted(body["scores"], reverse=True)
    meta = json.loads((models_dir / f"{name}.json").read_text())
    assert body["version"] == meta["version"]


def test_recommend_defaults_to_ten_items(server: tuple[str, httpx.Client]) -> None:
    _, client = server
    assert len(client.get("/recommend/7").json()["items"]) == 10


def test_unknown_user_gets_a_popular_list_marked_cold_start(server: tuple[str, httpx.Client]) -> None:
    _, client = server
    response = client.get("/recommend/new-user_1.x", params={"k": 3})
    assert response.status_code == 200
    assert response.json()["cold_start"] is True and len(response.json()["items"]) == 3


@pytest.mark.parametrize("k", ["0", "101", "-1", "ten", "1.5", ""])
def test_k_outside_1_to_100_is_a_422_naming_k(server: tuple[str, httpx.Client], k: str) -> None:
    _, client = server
    response = client.get(f"/recommend/42?k={k}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "k"]


@pytest.mark.parametrize(
    "user_id", ["a%20b", "x" * 65, ".hidden", "%2E%2E", "caf%C3%A9", "a%0d%0aX-Injected:%201", "semi;colon"]
)
def test_malformed_user_id_is_a_422_naming_user_id(server: tuple[str, httpx.Client], user_id: str) -> None:
    _, client = server
    response = client.get(f"/recommend/{user_id}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


def test_health_and_info_describe_the_loaded_model(server: tuple[str, httpx.Client]) -> None:
    name, client = server
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == name
    info = client.get("/info").json()
    assert info["model"] == name and info["version"] == health["version"]
    assert info["metrics"]["precision_at_10"] > 0.1
    assert info["dataset"]["users"] == 1000


def test_openapi_docs_are_served(server: tuple[str, httpx.Client]) -> None:
    _, client = server
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend/{user_id}", "/health", "/info"} <= set(paths)


def test_server_trains_an_artefact_at_start_when_none_exists(tmp_path: Path) -> None:
    port = free_port()
    proc = start_service(
        python_module("model_a", "--port", str(port)),
        env={"MODELS_DIR": str(tmp_path), "ABTEST_DATA": "synthetic:users=200,items=300,ratings=6000,seed=1"},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=60)
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
    finally:
        assert stop_service(proc) in CLEAN_EXIT_CODES
    assert (tmp_path / "model_a.npz").is_file()
    assert info["dataset"]["spec"] == "synthetic:seed=1,users=200,items=300,ratings=6000"


def test_docs_load_swagger_ui_from_the_server_itself_not_a_cdn(server: tuple[str, httpx.Client]) -> None:
    _, client = server
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css|png))["']""", html)
        assert assets, f"{page} names no script or stylesheet"
        assert all(asset.startswith("/docs-assets/") for asset in assets), assets
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
    assert "swagger-ui-bundle.js" in client.get("/docs").text


def metric_samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_recommend_requests_by_status_and_name_the_version(server: tuple[str, httpx.Client]) -> None:
    name, client = server
    before = metric_samples(client.get("/metrics").text)
    for _ in range(3):
        assert client.get("/recommend/42").status_code == 200
    assert client.get("/recommend/42?k=0").status_code == 422
    client.get("/health")  # not the model's traffic: not counted
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = metric_samples(response.text)
    ok, bad = (
        f'model_requests_total{{model="{name}",status="200"}}',
        f'model_requests_total{{model="{name}",status="422"}}',
    )
    assert after[ok] - before.get(ok, 0) == 3
    assert after[bad] - before.get(bad, 0) == 1
    count = f'model_request_seconds_count{{model="{name}"}}'
    assert after[count] - before.get(count, 0) == 4
    assert after[f'model_request_seconds_bucket{{le="+Inf",model="{name}"}}'] == after[count]
    version = client.get("/health").json()["version"]
    assert after[f'model_info{{model="{name}",version="{version}"}}'] == 1
    assert sum(key.startswith("model_info{") for key in after) == 1
    assert not any(key.startswith("model_requests_total") and "/health" in key for key in after)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_server_logs_one_clean_format(models_dir: Path, tmp_path: Path, log_format: str) -> None:
    """JSON lines (what a container gets) or readable lines, uvicorn's included; no ANSI colour, no float noise."""
    port, log_path = free_port(), tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = start_service(
            python_module("model_a", "--port", str(port)),
            env={"MODELS_DIR": str(models_dir), "LOG_FORMAT": log_format},
            log=log,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=60)
        finally:
            assert stop_service(proc) in CLEAN_EXIT_CODES
    lines = log_path.read_text().splitlines()
    assert any("Uvicorn running" in line for line in lines), lines  # uvicorn's records, in our format
    loaded = next(line for line in lines if "loaded:" in line)
    assert "\x1b[" not in "".join(lines)
    assert not re.search(r"\d\.\d{6,}", loaded), loaded  # metrics rounded: 0.1797, not 0.17970000000000003
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert all(record["service"] == "model_a" for record in records)
        assert not any("color_message" in record for record in records)
    else:
        assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR) \S+: ", line) for line in lines), lines
