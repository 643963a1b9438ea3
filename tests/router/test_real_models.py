"""The router in front of the real model servers (`python -m model_a`, `python -m model_b`) on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from abtest.processes import free_port, python_module, start_service, stop_service, wait_healthy
from recsys.training import MODEL_NAMES
from tests.router.conftest import AB, running_router, settings_for, users_of, wait_until


@pytest.fixture(scope="module")
def model_urls(models_dir: Path) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        for name in MODEL_NAMES:
            port = free_port()
            proc = start_service(python_module(name, "--port", str(port)), env={"MODELS_DIR": str(models_dir)})
            stack.callback(stop_service, proc)
            urls[name] = f"http://127.0.0.1:{port}"
            wait_healthy(urls[name], proc, timeout=60)
        yield urls


def test_router_serves_both_real_models_and_records_their_info(
    tmp_path: Path, model_urls: dict[str, str], models_dir: Path
) -> None:
    raw = {
        "experiment": "rec-ab",
        "strategy": "hash",
        "salt": "test-salt",
        "variants": [{"name": name, "url": url, "weight": 50} for name, url in model_urls.items()],
    }
    with running_router(settings_for(tmp_path, raw)) as router:
        for name in ("model_a", "model_b"):
            user = users_of(name, AB)[0]
            response = router.client.get(f"/recommend/{user}", params={"k": 7})
            assert response.status_code == 200
            body = response.json()
            assert (body["variant"], body["model"], response.headers["X-Variant"]) == (name, name, name)
            assert len(body["items"]) == 7 and all(isinstance(item, int) for item in body["items"])
            feedback = {
                "request_id": body["request_id"],
                "user_id": user,
                "item_id": body["items"][0],
                "event": "click",
            }
            assert router.client.post("/feedback", json=feedback).json()["position"] == 0
        wait_until(lambda: router.client.get("/health").json()["status"] == "ok", what="both models healthy")
        wait_until(lambda: len(router.rows("SELECT 1 FROM variant_info")) == 2, what="both models' /info stored")
        for name, info_json in router.rows("SELECT variant, info_json FROM variant_info"):
            meta = json.loads((models_dir / f"{name}.json").read_text())
            assert json.loads(info_json)["version"] == meta["version"]
        assert router.rows("SELECT variant, COUNT(*) FROM feedback GROUP BY variant") == [
            ("model_a", 1),
            ("model_b", 1),
        ]
