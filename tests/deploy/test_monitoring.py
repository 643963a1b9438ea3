"""The Grafana dashboard and the alert rules ask only for metrics (and labels) that the servers really expose.

The router's names are read from its real /metrics: a router runs in-process over fake model servers and is
driven through every path that creates a series (answers, feedback, a refused request, a backend failure
with fallback, a reload) before it is scraped. Names a server does not expose yet are listed here with the
labels they are to have, and a test fails as soon as the server exposes them, so the list cannot go stale.
scripts/validate-deploy runs the same dashboard checks and hands every query and rule to promtool.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from recsys.server import ModelServerSettings, create_app
from recsys.training import trainer
from tests.containers.files import ROOT
from tests.router.conftest import AB, Backend, experiment, running_router, settings_for, users_of
from tests.support.fake_model import FakeModelControl, serve_fake_model
from tests.support.servers import serve

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "ab-router.json"
ALERTS = MONITORING / "prometheus" / "alerts.yml"

#: Labels that Prometheus adds to every series it scrapes (prometheus.yml's relabelling adds `service`).
TARGET_LABELS = frozenset({"instance", "job", "service", "pod"})
#: Series Prometheus makes itself.
PROMETHEUS_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}

#: The router's SRM gauge, which the lead adds: the p-value of the sample-ratio test per phase.
PENDING_ROUTER_SERIES = {"router_srm_p_value": frozenset({"phase"})}

#: The model servers' metrics, which another change adds to recsys/server.py, by exposition name and labels:
#: model_requests_total{model,status} (counter), model_request_seconds{model} (histogram), model_info{model,version}.
MODEL_SERIES = {
    "model_requests_total": frozenset({"model", "status"}),
    "model_request_seconds_bucket": frozenset({"model", "le"}),
    "model_request_seconds_sum": frozenset({"model"}),
    "model_request_seconds_count": frozenset({"model"}),
    "model_info": frozenset({"model", "version"}),
}
#: False while the model servers answer /metrics with 404; test_model_server_metrics_... says when to flip it.
MODEL_METRICS_SERVED = True

#: What issue 18 asks the dashboard to show, as the series that carry it.
DASHBOARD_MUST_SHOW = {
    "traffic split per variant": "router_requests_total",
    "latency per variant": "router_request_seconds_bucket",
    "backend errors": "router_backend_errors_total",
    "feedback rate": "router_feedback_total",
    "store queue": "router_events_pending",
    "store losses": "router_events_lost_total",
    "backends up": "router_backend_up",
    "SRM": "router_srm_p_value",
    "model server latency": "model_request_seconds_bucket",
    "model version": "model_info",
}


@cache
def checker() -> ModuleType:
    """scripts/check_monitoring.py, the checks scripts/validate-deploy runs."""
    spec = importlib.util.spec_from_file_location("check_monitoring", ROOT / "scripts" / "check_monitoring.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = checker().load_dashboard(DASHBOARD)
    return loaded


def queries() -> list[tuple[str, str]]:
    """(where, expression) for every dashboard query and every alert rule."""
    found: list[tuple[str, str]] = [(f"panel {t!r}", e) for t, e in checker().expressions(dashboard())]
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    found += [(f"alert {name}", expr) for name, expr in checker().rule_expressions(rules)]
    return found


def used_names() -> set[str]:
    return {name for _, expr in queries() for name in checker().metric_names(expr)}


@dataclass(frozen=True)
class Scrape:
    """A /metrics page: exposition name -> label names, and the names that have at least one sample.

    A labelled family with no sample yet (`# TYPE router_store_errors_total counter` and nothing else) keeps
    its names, but its labels cannot be read from the page.
    """

    series: dict[str, set[str]]
    sampled: set[str]


def parse_metrics(text: str) -> Scrape:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    series: dict[str, set[str]] = {}
    sampled: set[str] = set()
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
            sampled.add(sample.name)
    return Scrape(series, sampled)


@pytest.fixture(scope="module")
def router_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """The series of a real router's /metrics after traffic down every path that creates one."""
    controls = {"model_a": FakeModelControl(), "model_b": FakeModelControl()}
    with (
        serve_fake_model("model_a", controls["model_a"]) as url_a,
        serve_fake_model("model_b", controls["model_b"]) as url_b,
    ):
        backends = {"model_a": Backend(url_a, controls["model_a"]), "model_b": Backend(url_b, controls["model_b"])}
        raw = experiment(backends, on_error="fallback", fallback_variant="model_a")
        settings = settings_for(tmp_path_factory.mktemp("router"), raw, admin_token="test-token")
        with running_router(settings) as router:
            client = router.client
            (user_a,), (user_b,) = users_of("model_a", AB), users_of("model_b", AB)
            answer = client.get(f"/recommend/{user_a}")
            assert answer.status_code == 200
            assert client.get(f"/recommend/{user_b}").status_code == 200
            click = {"request_id": answer.json()["request_id"], "user_id": user_a, "event": "click"}
            assert client.post("/feedback", json={**click, "item_id": answer.json()["items"][0]}).status_code == 202
            assert client.post("/feedback", json={"user_id": user_a}).status_code == 422
            controls["model_b"].status = 500
            assert client.get(f"/recommend/{user_b}").json()["variant"] == "model_a"  # served by the fallback
            reload = client.post("/admin/reload", headers={"Authorization": "Bearer test-token"})
            assert reload.status_code == 200
            page = client.get("/metrics")
            assert page.status_code == 200
            yield parse_metrics(page.text)


def test_dashboard_has_no_structural_problems() -> None:
    assert checker().dashboard_problems(dashboard()) == []


def test_dashboard_shows_what_issue_18_asks_for() -> None:
    names = {name for _, expr in checker().expressions(dashboard()) for name in checker().metric_names(expr)}
    missing = {what: series for what, series in DASHBOARD_MUST_SHOW.items() if series not in names}
    assert not missing


def test_every_router_series_the_dashboard_and_alerts_use_is_in_the_router_s_metrics(
    router_metrics: Scrape,
) -> None:
    router_names = {name for name in used_names() if name.startswith("router_")}
    unknown = router_names - set(router_metrics.series) - set(PENDING_ROUTER_SERIES)
    assert not unknown, f"the router's /metrics has no {sorted(unknown)}"


def test_pending_router_series_are_still_pending(router_metrics: Scrape) -> None:
    """Fails once the router exposes router_srm_p_value: then remove it from PENDING_ROUTER_SERIES, so it is
    checked against the real /metrics like every other name."""
    arrived = set(PENDING_ROUTER_SERIES) & set(router_metrics.series)
    assert not arrived, f"the router now exposes {sorted(arrived)}: remove them from PENDING_ROUTER_SERIES"


def test_every_model_series_used_is_one_the_model_servers_are_to_expose() -> None:
    model_names = {name for name in used_names() if name.startswith("model_")}
    assert model_names
    assert model_names <= set(MODEL_SERIES)
    assert used_names() <= {n for n in used_names() if n.startswith(("router_", "model_"))} | set(PROMETHEUS_SERIES)


def test_model_server_metrics_are_pending_or_have_the_names_the_dashboard_uses(models_dir: Path) -> None:
    app = create_app(ModelServerSettings(name="model_a", models_dir=models_dir), trainer=trainer("model_a"))
    with serve(app) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        assert client.get("/recommend/1").status_code == 200
        page = client.get("/metrics")
    if not MODEL_METRICS_SERVED:
        assert page.status_code == 404, (
            "the model server now serves /metrics: set MODEL_METRICS_SERVED = True in tests/deploy/test_monitoring.py"
        )
        return
    assert page.status_code == 200
    exposed = parse_metrics(page.text).series
    for name, labels in MODEL_SERIES.items():
        assert name in exposed, f"the model server's /metrics has no {name}"
        assert labels <= exposed[name], f"{name}: labels {sorted(exposed[name])}, expected {sorted(labels)}"


def test_every_label_used_is_one_its_series_has(router_metrics: Scrape) -> None:
    """`sum by (variant)` over a series without `variant` draws one flat line: caught here, not on a dashboard."""
    known: dict[str, set[str]] = {
        **{name: set(router_metrics.series[name]) for name in router_metrics.sampled},
        **{name: set(labels) for name, labels in PENDING_ROUTER_SERIES.items()},
        **{name: set(labels) for name, labels in MODEL_SERIES.items()},
        **{name: set(labels) for name, labels in PROMETHEUS_SERIES.items()},
    }
    problems = []
    checked = 0
    for where, expr in queries():
        names = checker().metric_names(expr)
        if not names <= set(known):
            continue  # a family with no sample (store errors, see the next test): its labels are not on the page
        checked += 1
        offered = set(TARGET_LABELS).union(*(known[name] for name in names))
        missing = checker().label_names(expr) - offered
        if missing:
            problems.append(f"{where}: {sorted(missing)} not on {sorted(names)}")
    assert not problems
    assert checked >= len(queries()) - 2


def test_router_is_driven_until_every_series_used_has_samples(router_metrics: Scrape) -> None:
    """The fixture's traffic creates every series the files use, except store errors (that needs a failing store)."""
    used = {name for name in used_names() if name in router_metrics.series}
    assert used - router_metrics.sampled == {"router_store_errors_total"}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (variant) (rate(router_requests_total{status="200"}[5m]))', {"router_requests_total"}),
        (
            "histogram_quantile(0.95, sum by (model, le) (rate(model_request_seconds_bucket[1m])))",
            {"model_request_seconds_bucket"},
        ),
        ("max by (variant) (router_backend_up) == 0", {"router_backend_up"}),
        ("a / on (instance) group_left (version) b offset 5m", {"a", "b"}),
        ('up{job=~"router|models"} == bool 0 and nan', {"up"}),
        ("-sum(increase(lost_total[$__range])) * 1e3 > 0", {"lost_total"}),
        ("sum(rate(x[5m])) by (variant) / scalar(sum(y))", {"x", "y"}),
        ("min by (phase) (router_srm_p_value) < 0.001", {"router_srm_p_value"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ],
)
def test_metric_names_are_the_selected_series_only(expr: str, names: set[str]) -> None:
    assert checker().metric_names(expr) == names


def broken(change: str) -> dict[str, Any]:
    """The dashboard with one thing broken."""
    board = copy.deepcopy(dashboard())
    graphs = [p for p in board["panels"] if p["type"] != "row"]
    if change == "duplicate id":
        graphs[1]["id"] = graphs[0]["id"]
    elif change == "overlap":
        graphs[1]["gridPos"] = dict(graphs[0]["gridPos"])
    elif change == "outside the grid":
        graphs[0]["gridPos"]["x"] = 20
        graphs[0]["gridPos"]["w"] = 8
    elif change == "no refId":
        del graphs[0]["targets"][0]["refId"]
    elif change == "duplicate refId":
        graphs[0]["targets"].append(dict(graphs[0]["targets"][0]))
    elif change == "undefined variable":
        graphs[0]["targets"][0]["expr"] += " * $nope"
    elif change == "unknown datasource variable":
        graphs[0]["datasource"] = {"type": "prometheus", "uid": "${missing}"}
    elif change == "unknown panel type":
        graphs[0]["type"] = "graph-ng"
    elif change == "no queries":
        graphs[0]["targets"] = []
    else:
        raise AssertionError(change)
    return board


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("duplicate id", "duplicate panel id"),
        ("overlap", "overlaps"),
        ("outside the grid", "outside the 24-column grid"),
        ("no refId", "without refId"),
        ("duplicate refId", "duplicate refId"),
        ("undefined variable", "undefined variable $nope"),
        ("unknown datasource variable", "names no datasource variable"),
        ("unknown panel type", "unknown panel type"),
        ("no queries", "no queries"),
    ],
)
def test_dashboard_check_reports_each_kind_of_breakage(change: str, message: str) -> None:
    problems = checker().dashboard_problems(broken(change))
    assert any(message in problem for problem in problems), problems


def test_dashboard_queries_become_a_rule_file_promtool_can_parse() -> None:
    text = checker().promql_rule_file(checker().expressions(dashboard()))
    rules = yaml.safe_load(text)["groups"][0]["rules"]
    assert len(rules) == len(checker().expressions(dashboard()))
    assert not [r for r in rules if "$" in r["expr"]], "Grafana variables are replaced by values promtool accepts"
