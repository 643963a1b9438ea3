"""docker-compose.yml, structurally: what compose-smoke runs for real, checked in milliseconds."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.containers.files import DOCKERFILES, ROOT, SERVICE_DOCKERFILES, compose, instructions, service

SERVERS = ("model_a", "model_b", "router")
MODELS = ("model_a", "model_b")


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `180s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def bind_mounts(name: str) -> dict[str, str]:
    """A service's bind mounts: container path -> host path (relative to the compose file)."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def image_env(name: str) -> dict[str, str]:
    """The ENV values a service's Dockerfile sets (`KEY=value` pairs)."""
    env: dict[str, str] = {}
    for instruction in instructions(SERVICE_DOCKERFILES[name]):
        if instruction.keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", instruction.arguments))
    return env


def environment(name: str) -> dict[str, Any]:
    """A service's effective environment: its image's ENV, then compose's `environment`."""
    return {**image_env(name), **service(name).get("environment", {})}


def test_compose_has_the_three_services_and_a_demo_simulator() -> None:
    services = compose()["services"]
    assert set(SERVERS) <= set(services)
    assert services["simulate"]["profiles"] == ["demo"]
    assert "http://router:8080" in " ".join(services["simulate"]["command"])
    for name in SERVERS:
        build = services[name]["build"]
        assert build["context"] == "."
        assert (ROOT / build["dockerfile"]) == SERVICE_DOCKERFILES[name]
    for name in MODELS:
        assert services[name]["build"]["args"] == {"MODEL": name}, "the model image is built for its own package"


def test_only_the_router_publishes_a_port() -> None:
    """Without a profile only the router is reachable; each profile's services publish what its docs name."""
    published = {name: spec["ports"] for name, spec in compose()["services"].items() if "ports" in spec}
    default = {name: ports for name, ports in published.items() if "profiles" not in service(name)}
    assert default == {"router": ["8080:8080"]}
    assert {name: ports for name, ports in published.items() if name not in default} == {
        "router-pg": ["8081:8080"],
        "prometheus": ["127.0.0.1:9090:9090"],  # monitoring UIs: this machine only
        "grafana": ["127.0.0.1:3000:3000"],
    }


@pytest.mark.parametrize("name", SERVERS)
def test_service_healthcheck_is_one_podman_accepts(name: str) -> None:
    check = service(name)["healthcheck"]
    test = check["test"]
    assert isinstance(test, list)
    assert test[0] in {"CMD", "CMD-SHELL"}
    if test[0] == "CMD":
        assert not [arg for arg in test[1:] if re.search(r"\s", arg)], "podman 4.3 splits CMD arguments on spaces"
    else:
        assert len(test) == 2
    port = 8080 if name == "router" else 8000
    assert f"http://127.0.0.1:{port}/health" in test[-1]
    for key in ("interval", "timeout", "start_period"):
        seconds(check[key])
    assert check["retries"] >= 1


@pytest.mark.parametrize("name", MODELS)
def test_model_healthcheck_allows_for_training_on_first_start(name: str) -> None:
    assert seconds(service(name)["healthcheck"]["start_period"]) >= 60


def test_router_waits_for_healthy_models() -> None:
    depends = service("router")["depends_on"]
    for name in MODELS:
        assert depends[name] == {"condition": "service_healthy"}
    assert depends["results-init"] == {"condition": "service_completed_successfully"}


def test_results_folder_is_the_routers_results_dir() -> None:
    results_dir = environment("router")["RESULTS_DIR"]
    assert bind_mounts("router")[results_dir] == "./results"
    assert bind_mounts("simulate")[results_dir] == "./results"
    assert bind_mounts("results-init")["/results"] == "./results"


def test_experiment_config_is_mounted_as_a_folder_the_router_reads() -> None:
    """A folder mount sees editors that save by replacing the file; a single-file mount would not."""
    config = PurePosixPath(environment("router")["ROUTER_CONFIG"])
    mounts = bind_mounts("router")
    host_folder = mounts[str(config.parent)]
    assert (ROOT / host_folder).is_dir()
    assert (ROOT / host_folder / config.name).is_file()
    mode = next(v for v in service("router")["volumes"] if v.split(":")[1] == str(config.parent))
    assert mode.endswith(":ro")


@pytest.mark.parametrize("name", MODELS)
def test_model_artefacts_live_in_a_named_volume(name: str) -> None:
    models_dir = image_env(name)["MODELS_DIR"]
    named = [v.split(":") for v in service(name)["volumes"] if not v.startswith((".", "/"))]
    assert [volume for volume, target, *_ in named if target == models_dir] == ["models"]
    assert "models" in compose()["volumes"]


def test_default_experiment_points_at_the_compose_services() -> None:
    experiment = yaml.safe_load((ROOT / "router" / "experiment.yaml").read_text(encoding="utf-8"))
    for variant in experiment["variants"]:
        url = urlsplit(variant["url"])
        assert url.hostname in compose()["services"], variant
        assert url.port == 8000, variant


def test_admin_token_comes_only_from_the_environment() -> None:
    assert service("router")["environment"]["ROUTER_ADMIN_TOKEN"] == "${ROUTER_ADMIN_TOKEN:-}"
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for match in re.finditer(r"(?im)^\s*([A-Z_]*(TOKEN|SECRET|PASSWORD)[A-Z_]*):\s*(.*)$", text):
        assert match[3].startswith("${"), match[0]


def with_defaults(text: str) -> str:
    """Compose interpolation with an empty environment: `${ABTEST_UID:-10001}` -> `10001`."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_only_the_one_shot_results_init_runs_as_root() -> None:
    """results-init fixes the ./results permissions and exits; every long-running service is non-root."""
    as_root = {
        name: spec
        for name, spec in compose()["services"].items()
        if with_defaults(str(spec.get("user", ""))).split(":")[0] in {"0", "root"}
    }
    assert set(as_root) == {"results-init"}
    assert "ports" not in as_root["results-init"]
    assert as_root["results-init"].get("restart") == "no"


def test_router_user_defaults_to_the_image_user_and_results_init_grants_it() -> None:
    image_user = next(i for i in reversed(instructions(DOCKERFILES["router"])) if i.keyword == "USER").arguments
    for name in ("router", "simulate"):
        assert with_defaults(service(name)["user"]) == image_user
    uid, gid = re.findall(r"\$\{[^}]*\}|[^:]+", service("router")["user"])
    command = " ".join(service("results-init")["command"])
    assert f"--reuid={uid} --regid={gid}" in command
    assert f"chgrp {gid} /results" in command
    for name in DOCKERFILES:
        assert next(i for i in reversed(instructions(DOCKERFILES[name])) if i.keyword == "USER").arguments == image_user


def test_compose_file_is_in_the_repository_root() -> None:
    assert Path(ROOT / "docker-compose.yml").is_file()


# --- profiles postgres and monitoring ---------------------------------------------------------------------------

PROFILES = {"db": "postgres", "router-pg": "postgres", "prometheus": "monitoring", "grafana": "monitoring"}
MONITORING = ROOT / "deploy" / "monitoring"


def profiled(name: str) -> dict[str, Any]:
    """A profile's service, checked to be in that profile only (so `docker compose up` alone never starts it)."""
    spec = service(name)
    assert spec.get("profiles") == [PROFILES[name]], f"{name} belongs to the profile {PROFILES[name]!r} only"
    return spec


def interpolation(value: str) -> str:
    """The variable a compose value is read from: `${POSTGRES_PASSWORD:-x}` -> `POSTGRES_PASSWORD`."""
    match = re.fullmatch(r"\$\{(\w+)(?::-[^}]*)?\}", value)
    assert match, f"{value!r} is not read from the environment"
    return match[1]


def router_command() -> list[str]:
    command = next(i for i in reversed(instructions(DOCKERFILES["router"])) if i.keyword == "CMD").exec_form()
    assert command is not None
    return command


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_service_has_a_healthcheck_podman_accepts_and_a_stop_timeout(name: str) -> None:
    spec = profiled(name)
    test = spec["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    if test[0] == "CMD":
        assert not [arg for arg in test[1:] if re.search(r"\s", arg)], "podman 4.3 splits CMD arguments on spaces"
    else:
        assert len(test) == 2
    assert seconds(spec["stop_grace_period"]) >= 10, "podman's default stop timeout is 0 s (a SIGKILL)"
    assert spec["restart"] == "unless-stopped"


def test_postgres_profile_runs_postgres_15_on_a_named_volume() -> None:
    db = profiled("db")
    assert db["image"] == "postgres:15"
    assert "ports" not in db, "the database is reachable only on the compose network"
    assert "pg_isready" in db["healthcheck"]["test"][-1]
    named = {target: source for source, target in (v.split(":")[:2] for v in db["volumes"])}
    assert named["/var/lib/postgresql/data"] in compose()["volumes"]
    assert interpolation(db["environment"]["POSTGRES_PASSWORD"]) == "POSTGRES_PASSWORD"
    assert seconds(db["stop_grace_period"]) >= 20, "time for a fast shutdown's checkpoint"


def test_router_pg_stores_in_the_postgres_service_with_two_workers() -> None:
    router_pg, db = profiled("router-pg"), profiled("db")
    assert router_pg["image"] == service("router")["image"]
    assert router_pg["pull_policy"] == "never"
    assert router_pg["command"] == [*router_command(), "--workers", "2"]
    assert router_pg["depends_on"]["db"] == {"condition": "service_healthy"}
    for name in MODELS:
        assert router_pg["depends_on"][name] == {"condition": "service_healthy"}

    url = urlsplit(router_pg["environment"]["STORE_URL"])
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("db", 5432)
    assert url.username == db["environment"]["POSTGRES_USER"]
    assert url.path == "/" + db["environment"]["POSTGRES_DB"]
    password = router_pg["environment"]["STORE_URL"].split("@")[0].split(":", 2)[2]
    assert password == db["environment"]["POSTGRES_PASSWORD"], "the same variable, with the same default"
    assert interpolation(router_pg["environment"]["ROUTER_ADMIN_TOKEN"]) == "ROUTER_ADMIN_TOKEN"
    config = PurePosixPath(environment("router")["ROUTER_CONFIG"])
    assert router_pg["environment"]["ROUTER_CONFIG"] == str(config)
    assert f"./router:{config.parent}:ro" in router_pg["volumes"]


def test_prometheus_mounts_its_checked_config_and_rules() -> None:
    prometheus = profiled("prometheus")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config = PurePosixPath(flags["config.file"])
    source, target, mode = next(v.split(":") for v in prometheus["volumes"] if v.startswith("./"))
    assert (target, mode) == (str(config.parent), "ro")
    folder = ROOT / source
    assert folder == MONITORING / "prometheus"
    loaded = yaml.safe_load((folder / config.name).read_text(encoding="utf-8"))
    for rule_file in loaded["rule_files"]:
        assert (folder / rule_file).is_file(), f"{rule_file} is not in the mounted folder"
    named = {target: source for source, target in (v.split(":")[:2] for v in prometheus["volumes"])}
    assert named[flags["storage.tsdb.path"]] in compose()["volumes"]


def scrape_targets() -> dict[str, tuple[str, int]]:
    """Compose service -> (job, port) that deploy/monitoring/prometheus/prometheus.yml scrapes it as."""
    loaded = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {}
    for job in loaded["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for discovery in job["dns_sd_configs"]:
            assert discovery["type"] == "A"
            for name in discovery["names"]:
                targets[name] = (job["job_name"], discovery["port"])
    return targets


def test_prometheus_scrapes_every_router_and_model_server_on_its_port() -> None:
    targets = scrape_targets()
    assert set(targets) == {"router", "router-pg", *MODELS}
    assert targets["router"] == ("router", int(router_command()[router_command().index("--port") + 1]))
    assert targets["router-pg"] == ("router", int(service("router-pg")["command"][-3]))
    for name in MODELS:
        port = next(i for i in instructions(SERVICE_DOCKERFILES[name]) if i.keyword == "EXPOSE").arguments
        assert targets[name] == ("models", int(port))


def test_grafana_is_provisioned_with_the_checked_dashboards_and_prometheus() -> None:
    grafana = profiled("grafana")
    mounts = {target: source for source, target, *_ in (v.split(":") for v in grafana["volumes"]) if source[0] == "."}
    provisioning = MONITORING / "grafana" / "provisioning"
    assert ROOT / mounts["/etc/grafana/provisioning/datasources"] == provisioning / "datasources"
    assert ROOT / mounts["/etc/grafana/provisioning/dashboards"] == provisioning / "dashboards"

    provider = yaml.safe_load((provisioning / "dashboards" / "ab-router.yml").read_text(encoding="utf-8"))
    dashboards = ROOT / mounts[provider["providers"][0]["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == ["ab-router.json"]
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert ROOT / mounts[str(home.parent)] / home.name == dashboards / "ab-router.json"

    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname == "prometheus"
    assert f"127.0.0.1:{url.port}:{url.port}" in service("prometheus")["ports"]
    assert grafana["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    assert interpolation(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]) == "GRAFANA_ADMIN_PASSWORD"
