"""Property-based fuzzing of every endpoint of the router and both real model servers, from their OpenAPI schemas.

Schemathesis reads each live server's /openapi.json and Hypothesis generates requests for every operation,
both schema-valid (positive) and schema-violating (negative) ones. No answer may be a 5xx or name a server
path, and no server may die. For the router, the count-level invariant holds too: one exposure row per
/recommend it answered, one feedback row per click it accepted.

    RELIABILITY_FUZZ_EXAMPLES=500 pytest tests/reliability/test_fuzz.py     # fuzz harder (default 40)

Generation is derandomized, so a CI run is reproducible; raise the example count to search further.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err, Ok
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation
from starlette.routing import Route

from abtest.processes import CLEAN_EXIT_CODES
from router.app import create_app
from router.config import RouterSettings
from tests.reliability.conftest import RouterFactory, experiment, urls_of
from tests.reliability.observe import rows, store_counters
from tests.reliability.services import Service, store_path
from tests.router.conftest import wait_until
from tests.router.test_openapi import server_paths

MAX_EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "40"))
TOKEN = "fuzz-admin-token"


def negatable(operation: APIOperation[Any, Any, Any, Any]) -> bool:
    """Whether schema-violating requests exist: a body, or a path/query parameter (a header is any string)."""
    locations = {parameter.location.value for parameter in operation.iter_parameters()}
    return bool(operation.body) or bool(locations & {"path", "query"})


def fuzz(base_url: str) -> Counter[tuple[str, int]]:
    """Fuzz every operation of the server at `base_url`; answers seen, by (operation, status)."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    seen: Counter[tuple[str, int]] = Counter()
    results = list(schema.get_all_operations())
    broken = [result.err() for result in results if isinstance(result, Err)]
    assert not broken, f"{base_url}/openapi.json has operations schemathesis cannot read: {broken}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert operations, f"no operations in {base_url}/openapi.json"
    for operation in operations:
        for mode in list(GenerationMode) if negatable(operation) else [GenerationMode.POSITIVE]:
            fuzz_operation(base_url, operation, mode, seen)
    return seen


def fuzz_operation(
    base_url: str, operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode, seen: Counter[tuple[str, int]]
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def one_request(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=base_url, timeout=15)
        seen[(operation.label, response.status_code)] += 1
        assert response.status_code < 500, (
            f"{operation.label} answered {response.status_code} to {case.as_curl_command()}: {response.text[:300]}"
        )
        leaked = server_paths(response.text)
        assert not leaked, f"{operation.label} answered with server paths {leaked} to {case.as_curl_command()}"

    one_request()


def test_model_servers_fuzzed_from_their_openapi_never_answer_5xx_and_keep_running(
    models: dict[str, Service],
) -> None:
    for name, model in models.items():
        seen = fuzz(model.url)
        print(f"\n{name}: {sum(seen.values())} fuzzed requests, {dict(sorted(seen.items()))}")
        assert model.healthy(), f"{name} died or stopped answering under fuzzing"
        assert {label for label, _ in seen} == {"GET /recommend/{user_id}", "GET /health", "GET /info"}


def test_router_fuzzed_from_its_openapi_never_answers_5xx_and_stores_one_row_per_answer(
    models: dict[str, Service], start_router: RouterFactory
) -> None:
    router = start_router(experiment(urls_of(models)), env={"ROUTER_ADMIN_TOKEN": TOKEN})
    seen = fuzz(router.url)
    print(f"\nrouter: {sum(seen.values())} fuzzed requests, {dict(sorted(seen.items()))}")
    assert router.healthy(), "the router died or stopped answering under fuzzing"
    labels = {label for label, _ in seen}
    assert {"GET /recommend/{user_id}", "POST /feedback", "POST /admin/reload", "GET /report"} <= labels
    assert seen[("GET /recommend/{user_id}", 200)] > 0 and seen[("GET /recommend/{user_id}", 422)] > 0
    wait_until(lambda: store_counters(router.url)["pending"] == 0, what="the queue to drain")
    repeats = store_counters(router.url)["duplicates"]["feedback"]  # the same event again: acknowledged, stored once
    assert router.stop() in CLEAN_EXIT_CODES
    store = store_path(router)
    assert rows(store, "SELECT COUNT(*) FROM exposures") == [(seen[("GET /recommend/{user_id}", 200)],)]
    assert rows(store, "SELECT COUNT(*) FROM feedback") == [(seen[("POST /feedback", 202)] - repeats,)]


def test_every_router_route_is_in_its_openapi_schema_so_the_fuzzer_reaches_it(tmp_path: Path) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment({"model_a": "http://127.0.0.1:1", "model_b": "http://127.0.0.1:2"})))
    app = create_app(RouterSettings(results_dir=tmp_path, config_path=config))
    documentation = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    routes = {route.path for route in app.api.routes if isinstance(route, Route)} - documentation
    assert routes <= set(app.api.openapi()["paths"])
    assert "/recommend/{user_id}" in routes and "/admin/reload" in routes
