"""The Kubernetes overlays agree with the images, the router's settings and the compose file they stand beside.

No cluster runs here: each overlay is rendered with `kubectl kustomize` and its resources are held against
what the code reads (scripts/validate-deploy checks the same renders against the API schemas).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from recsys.server import ModelServerSettings
from router.config import RouterSettings, build_config, read_yaml
from tests.containers.files import ROOT, compose, service
from tests.containers.test_compose import seconds
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    PENDING_ROUTER_ENV,
    PENDING_ROUTER_OPTIONS,
    SERVERS,
    argparse_options,
    compose_images,
    container,
    container_port,
    deployment_for,
    effective_env,
    env_values,
    environ_reads,
    module_source,
    mount_holding,
    mounts,
    one,
    option_value,
    options_in,
    pod_labels,
    reads_env,
    render,
    resources,
    router_deployment,
    selects,
    without_tag,
)

overlays = pytest.mark.parametrize("overlay", OVERLAYS)
EXPERIMENT = ROOT / "router" / "experiment.yaml"
#: Env names whose values are paths the process writes to (the values are read from the image and manifests).
WRITTEN_PATH_ENV = ("RESULTS_DIR", "MODELS_DIR", "MPLCONFIGDIR", "SURPRISE_DATA_FOLDER")
#: Env names that a library in the image reads (not our settings), by the module that reads them.
LIBRARY_ENV = {"SURPRISE_DATA_FOLDER": "surprise.builtin_datasets"}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|STORE_URL")


def test_the_overlays_are_the_documented_two() -> None:
    assert OVERLAYS == ("postgres-replicas", "sqlite-single")


@overlays
def test_overlay_runs_each_server_from_the_image_compose_builds(overlay: str) -> None:
    images = sorted(without_tag(container(d)["image"]) for d in resources(overlay, "Deployment"))
    assert images == sorted(compose_images())
    for deployment in resources(overlay, "Deployment"):
        assert container(deployment)["imagePullPolicy"] == "IfNotPresent", "images loaded into the cluster by hand"
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))


@overlays
def test_container_runs_the_image_command_on_the_port_it_exposes(overlay: str) -> None:
    for image_name, image in compose_images().items():
        deployment = deployment_for(overlay, image_name)
        spec = container(deployment)
        argv = [*spec["command"], *spec["args"]]
        assert tuple(argv[:3]) == image.command[:3], "the same `python -m module` as the image's CMD"
        assert option_value(argv, "--host") == "0.0.0.0"
        assert int(option_value(argv, "--port")) == image.port
        assert [p["containerPort"] for p in spec["ports"]] == [image.port]
        known = argparse_options(module_source(image.module))
        if image.module == "router":
            known |= PENDING_ROUTER_OPTIONS
        assert set(options_in(argv)) <= known, f"{image_name}: options that python -m {image.module} lacks"


@overlays
def test_probes_ask_for_the_health_path_the_image_checks_on_its_port(overlay: str) -> None:
    for image_name, image in compose_images().items():
        deployment = deployment_for(overlay, image_name)
        spec = container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = spec[probe]["httpGet"]
            assert check["path"] == image.health_path, f"{image_name} {probe}"
            assert container_port(deployment, check["port"]) == image.port, f"{image_name} {probe}"
            assert spec[probe]["timeoutSeconds"] < spec[probe]["periodSeconds"]


@overlays
def test_model_startup_probe_waits_as_long_as_compose_does_for_training(overlay: str) -> None:
    for name in ("model_a", "model_b"):
        probe = container(deployment_for(overlay, service(name)["image"]))["startupProbe"]
        allowed = probe["periodSeconds"] * probe["failureThreshold"]
        assert allowed >= seconds(service(name)["healthcheck"]["start_period"])


@overlays
def test_pods_run_as_the_image_user_non_root_and_restricted(overlay: str) -> None:
    for image_name, image in compose_images().items():
        pod = deployment_for(overlay, image_name)["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (image.uid, image.gid, image.gid)
        assert security["runAsNonRoot"] is True
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        box = container(deployment_for(overlay, image_name))["securityContext"]
        assert box["allowPrivilegeEscalation"] is False
        assert box["privileged"] is False
        assert box["readOnlyRootFilesystem"] is True
        assert box["capabilities"] == {"drop": ["ALL"]}
    namespace = one(overlay, "Namespace", "ab-router")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for resource in render(overlay):
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "ab-router", resource["metadata"]["name"]


@overlays
def test_every_path_the_process_writes_is_a_writable_volume(overlay: str) -> None:
    """The root filesystem is read-only, so each written folder must be an emptyDir or a claim."""
    for image_name, image in compose_images().items():
        deployment = deployment_for(overlay, image_name)
        env = effective_env(deployment, image)
        written = ["/tmp"] + [env[name] for name in WRITTEN_PATH_ENV if name in env]
        assert len(written) >= 2, f"{image_name}: the image names the folder it writes"
        for path in written:
            held = mount_holding(deployment, path)
            assert held is not None, f"{image_name}: {path} is on the read-only root filesystem"
            mount, volume = held
            assert not mount.get("readOnly", False), f"{image_name}: {path} is mounted read-only"
            assert "emptyDir" in volume or "persistentVolumeClaim" in volume, f"{image_name}: {path}: {volume}"


@overlays
def test_router_env_names_are_settings_the_router_reads(overlay: str) -> None:
    image = compose_images()[service("router")["image"]]
    for name in env_values(router_deployment(overlay)):
        assert reads_env(RouterSettings, name) or name in image.env or name in PENDING_ROUTER_ENV, name


@overlays
def test_model_env_names_are_settings_the_model_server_reads(overlay: str) -> None:
    for name in ("model_a", "model_b"):
        image = compose_images()[service(name)["image"]]
        read = environ_reads(module_source(image.module))
        for env in env_values(deployment_for(overlay, service(name)["image"])):
            assert reads_env(ModelServerSettings, env) or env in read or env in image.env or env in LIBRARY_ENV, env


@pytest.mark.parametrize("name", sorted(LIBRARY_ENV))
def test_library_env_names_are_read_by_that_library(name: str) -> None:
    module = importlib.import_module(LIBRARY_ENV[name])
    assert module.__file__
    assert f'"{name}"' in Path(module.__file__).read_text(encoding="utf-8")


def test_pending_router_features_are_still_pending() -> None:
    """Fails once the router reads STORE_URL or parses --workers: then remove it from the PENDING_ lists in
    tests/deploy/manifests.py, so the manifests' use of it is checked against the code like every other name."""
    arrived = {name for name in PENDING_ROUTER_ENV if reads_env(RouterSettings, name)}
    arrived |= PENDING_ROUTER_OPTIONS & argparse_options(module_source("router"))
    assert not arrived, f"the router now has {sorted(arrived)}: remove them from tests/deploy/manifests.py PENDING_*"


@overlays
def test_experiment_is_router_experiment_yaml_mounted_as_the_folder_router_config_names(overlay: str) -> None:
    image = compose_images()[service("router")["image"]]
    deployment = router_deployment(overlay)
    config = PurePosixPath(effective_env(deployment, image)["ROUTER_CONFIG"])
    assert str(config) == image.env["ROUTER_CONFIG"], "the same path as the image's default"
    mount, volume = mounts(deployment)[str(config.parent)]
    assert "subPath" not in mount, "a subPath mount is never updated: the router would not see edits"
    assert mount["readOnly"] is True
    configmap = one(overlay, "ConfigMap", volume["configMap"]["name"])
    assert configmap["data"] == {config.name: EXPERIMENT.read_text(encoding="utf-8")}
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    generator = next(g for g in base["configMapGenerator"] if g["name"] == configmap["metadata"]["name"])
    assert generator["options"]["disableNameSuffixHash"] is True, "a hash suffix would restart pods on every edit"


@overlays
def test_variant_urls_reach_each_variant_s_model_service_and_port(overlay: str) -> None:
    deployment = router_deployment(overlay)
    urls = RouterSettings(variant_urls=env_values(deployment)["ROUTER_VARIANT_URLS"]["value"]).url_overrides()
    raw = read_yaml(EXPERIMENT)
    config = build_config(raw, urls=urls)  # the router's own validation: names that are variants, URLs that parse
    assert set(urls) == {v.name for v in config.variants}
    services = {s["metadata"]["name"]: s for s in resources(overlay, "Service")}
    for variant in raw["variants"]:
        url = urlsplit(urls[variant["name"]])
        target = services[str(url.hostname)]
        port = next(p for p in target["spec"]["ports"] if p["port"] == url.port)
        compose_service = urlsplit(variant["url"]).hostname  # the compose service the default config names
        model = deployment_for(overlay, service(str(compose_service))["image"])
        assert selects(target["spec"]["selector"], pod_labels(model)), f"{url.hostname} selects {compose_service}"
        assert (
            container_port(model, port["targetPort"]) == compose_images()[service(str(compose_service))["image"]].port
        )


@overlays
def test_services_select_exactly_their_deployment(overlay: str) -> None:
    deployments = resources(overlay, "Deployment")
    for svc in resources(overlay, "Service"):
        chosen = [d for d in deployments if selects(svc["spec"]["selector"], pod_labels(d))]
        assert len(chosen) == 1, svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            container_port(chosen[0], port["targetPort"])
    router = one(overlay, "Service", "router")
    assert [p["port"] for p in router["spec"]["ports"]] == [compose_images()[service("router")["image"]].port]


@overlays
def test_secrets_are_referenced_never_written(overlay: str) -> None:
    assert not resources(overlay, "Secret")
    for path in K8S.rglob("*.yaml"):
        assert not re.search(r"(?m)^kind:\s*Secret\b", path.read_text(encoding="utf-8")), path
    for deployment in resources(overlay, "Deployment"):
        for name, entry in env_values(deployment).items():
            if SECRET_NAME.search(name):
                assert "value" not in entry, f"{name} has a value in the manifest"
                assert set(entry["valueFrom"]) == {"secretKeyRef"}, name
    token = env_values(router_deployment(overlay))["ROUTER_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True, "admin endpoints stay off until the Secret exists, as without a token"


@overlays
def test_router_stops_gracefully_within_its_grace_period(overlay: str) -> None:
    pod = router_deployment(overlay)["spec"]["template"]["spec"]
    pre_stop = container(router_deployment(overlay))["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = float(pre_stop[1]) + seconds(service("router")["stop_grace_period"])
    assert pod["terminationGracePeriodSeconds"] >= budget
    assert pod["enableServiceLinks"] is False, "service links would add ROUTER_* variables to the router's env"


def test_sqlite_single_runs_one_router_that_keeps_its_store_on_a_claim() -> None:
    overlay = "sqlite-single"
    deployment = router_deployment(overlay)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two pods must never share one SQLite file"
    assert not resources(overlay, "HorizontalPodAutoscaler")
    assert not PENDING_ROUTER_ENV & set(env_values(deployment)), "SQLite is the default: no STORE_URL"
    image = compose_images()[service("router")["image"]]
    results_dir = effective_env(deployment, image)["RESULTS_DIR"]
    _, volume = mounts(deployment)[results_dir]
    claim = one(overlay, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_postgres_replicas_scale_router_pods_that_share_the_store_from_a_secret() -> None:
    overlay = "postgres-replicas"
    deployment = router_deployment(overlay)
    (hpa,) = resources(overlay, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "router"}
    assert 2 <= hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    spec = container(deployment)
    assert int(option_value(spec["args"], "--workers")) >= 2
    assert spec["resources"]["requests"]["cpu"], "the HorizontalPodAutoscaler scales on CPU utilisation of requests"
    store = env_values(deployment)["STORE_URL"]["valueFrom"]["secretKeyRef"]
    assert store.get("optional", False) is False, "without its store the router must not start"


@overlays
def test_router_disruption_budget_keeps_one_router_when_there_are_several(overlay: str) -> None:
    (budget,) = resources(overlay, "PodDisruptionBudget")
    deployment = router_deployment(overlay)
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hpas = resources(overlay, "HorizontalPodAutoscaler")
    fewest = hpas[0]["spec"]["minReplicas"] if hpas else deployment["spec"]["replicas"]
    if fewest > 1:
        assert fewest - budget["spec"]["maxUnavailable"] >= 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@overlays
def test_models_are_reached_only_by_the_router_and_reach_nothing(overlay: str) -> None:
    (policy,) = resources(overlay, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    router = router_deployment(overlay)
    models = [deployment_for(overlay, service(name)["image"]) for name in SERVERS if name != "router"]
    assert all(selects(selector, pod_labels(m)) for m in models)
    assert not selects(selector, pod_labels(router))
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["spec"]["egress"] == []
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}, "pods in this namespace only"
    assert selects(source["podSelector"]["matchLabels"], pod_labels(router))
    assert not any(selects(source["podSelector"]["matchLabels"], pod_labels(m)) for m in models)
    for model in models:
        assert [container_port(model, p["port"]) for p in rule["ports"]] == [
            container(model)["ports"][0]["containerPort"]
        ]


def test_kubernetes_names_stand_for_the_compose_services() -> None:
    """Compose names variants' services model_a/model_b; Kubernetes names cannot hold '_'."""
    for overlay in OVERLAYS:
        names = {d["metadata"]["name"] for d in resources(overlay, "Deployment")}
        assert names == {name.replace("_", "-") for name in SERVERS}
        for name in SERVERS:
            assert (
                without_tag(container(one(overlay, "Deployment", name.replace("_", "-")))["image"])
                == (compose()["services"][name]["image"])
            )
