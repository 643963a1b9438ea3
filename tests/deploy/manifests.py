"""The Kubernetes overlays as rendered by `kubectl kustomize`, and what the code says they must agree with.

Everything expected is read from the source of truth: images from docker-compose.yml, ports, users, ENV, the
command and the health check from the Dockerfiles, env names from the settings classes, options from the
argparse parsers (by reading the source, so no server is started).
"""

from __future__ import annotations

import ast
import copy
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic_settings import BaseSettings

from tests.containers.files import ROOT, SERVICE_DOCKERFILES, service, stages

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = tuple(sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir()))
#: The compose services that are servers, and so Deployments on Kubernetes.
SERVERS = ("model_a", "model_b", "router")

#: Router features the manifests use before the router has them (the lead is adding them). Each test that
#: reads a name from the code accepts these too, and test_pending_router_features_are_still_pending fails
#: as soon as the code has one, so that it leaves this list and is checked like every other name.
PENDING_ROUTER_ENV: frozenset[str] = frozenset()
PENDING_ROUTER_OPTIONS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Image:
    """What a Dockerfile's final stage says about the image it builds."""

    dockerfile: Path
    port: int
    uid: int
    gid: int
    env: dict[str, str]
    command: tuple[str, ...]
    health_path: str

    @property
    def module(self) -> str:
        """The module the image runs with `python -m`."""
        assert self.command[:2] == ("python", "-m"), self.command
        return self.command[2]


@cache
def image_facts(dockerfile: Path) -> Image:
    final = stages(dockerfile)[-1]

    def last(keyword: str) -> str:
        found = [i.arguments for i in final if i.keyword == keyword]
        assert found, f"{dockerfile}: no {keyword} in the final stage"
        return found[-1]

    env: dict[str, str] = {}
    for instruction in final:
        if instruction.keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", instruction.arguments))
    uid, gid = (int(part) for part in last("USER").split(":"))
    cmd = next(i for i in reversed(final) if i.keyword == "CMD").exec_form()
    check = next(i for i in reversed(final) if i.keyword == "HEALTHCHECK").exec_form()
    assert cmd is not None and check is not None
    url = re.search(r"https?://[^'\"\s,)]+", check[-1])
    assert url, f"{dockerfile}: no URL in the HEALTHCHECK"
    return Image(dockerfile, int(last("EXPOSE")), uid, gid, env, tuple(cmd), urlsplit(url[0]).path)


def compose_images() -> dict[str, Image]:
    """Image name (as docker-compose.yml tags it) -> what its Dockerfile says, for every server."""
    return {str(service(name)["image"]): image_facts(SERVICE_DOCKERFILES[name]) for name in SERVERS}


def without_tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


@cache
def _render(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found: it renders the kustomize overlays (install kubectl)"
    result = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed: {result.stderr}"
    return result.stdout


@cache
def _parsed(overlay: str) -> tuple[dict[str, Any], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all(_render(overlay), Loader=loader) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's resources, a fresh copy each time (tests may not share mutable state)."""
    return copy.deepcopy(list(_parsed(overlay)))


def resources(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in render(overlay) if r["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources(overlay, kind) if r["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container per pod"
    found: dict[str, Any] = containers[0]
    return found


def deployment_for(overlay: str, image: str) -> dict[str, Any]:
    """The one Deployment whose container runs `image`."""
    found = [d for d in resources(overlay, "Deployment") if without_tag(container(d)["image"]) == image]
    assert len(found) == 1, f"{overlay}: expected one Deployment of {image}, found {len(found)}"
    return found[0]


def router_deployment(overlay: str) -> dict[str, Any]:
    return deployment_for(overlay, str(service("router")["image"]))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def container_port(deployment: dict[str, Any], port: int | str) -> int:
    """A port number or name resolved against the deployment's container ports."""
    for declared in container(deployment).get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            number: int = declared["containerPort"]
            return number
    raise AssertionError(f"{deployment['metadata']['name']} declares no port {port!r}")


def env_values(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env entries by name (each a `value` or a `valueFrom`)."""
    return {entry["name"]: entry for entry in container(deployment).get("env", [])}


def effective_env(deployment: dict[str, Any], image: Image) -> dict[str, str]:
    """The plain values the process sees: the image's ENV, then the manifest's `value`s."""
    values = dict(image.env)
    values.update({name: e["value"] for name, e in env_values(deployment).items() if "value" in e})
    return values


def mounts(deployment: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Mount path -> (volumeMount, volume) of the container."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(deployment).get("volumeMounts", [])}


def mount_holding(deployment: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The mount whose folder holds `path` (the deepest one), if any."""
    candidates = [m for m in mounts(deployment) if PurePosixPath(path).is_relative_to(m)]
    return mounts(deployment)[max(candidates, key=len)] if candidates else None


def settings_env_names(settings: type[BaseSettings]) -> tuple[set[str], set[str]]:
    """(exact env names, prefixes of nested names like `ROUTER_TIMEOUTS__`) a pydantic-settings class reads."""
    config = settings.model_config
    prefix = str(config.get("env_prefix", "")).upper()
    delimiter = config.get("env_nested_delimiter")
    exact: set[str] = set()
    nested: set[str] = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        env = alias.upper() if isinstance(alias, str) else f"{prefix}{name.upper()}"
        exact.add(env)
        if delimiter and "dict" in str(field.annotation):
            nested.add(env + str(delimiter))
    return exact, nested


def reads_env(settings: type[BaseSettings], name: str) -> bool:
    exact, nested = settings_env_names(settings)
    return name.upper() in exact or any(name.upper().startswith(prefix) for prefix in nested)


def _source_calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.Call)]


def argparse_options(path: Path) -> set[str]:
    """Every option string passed to `add_argument` in a source file."""
    found = set()
    for call in _source_calls(path):
        if isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument":
            found |= {a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return {option for option in found if option.startswith("--")}


def environ_reads(path: Path) -> set[str]:
    """Names read with `os.environ.get("NAME")` or `os.getenv("NAME")` in a source file."""
    found = set()
    for call in _source_calls(path):
        text = ast.unparse(call.func)
        if text in {"os.environ.get", "os.getenv"} and call.args and isinstance(call.args[0], ast.Constant):
            found.add(str(call.args[0].value))
    return found


def module_source(module: str) -> Path:
    """The source file `python -m module` runs."""
    package = ROOT / module.replace(".", "/")
    return package / "__main__.py" if package.is_dir() else package.with_suffix(".py")


def options_in(args: list[str]) -> list[str]:
    return [arg for arg in args if arg.startswith("--")]


def option_value(args: list[str], option: str) -> str:
    assert option in args, f"{option} not in {args}"
    return args[args.index(option) + 1]
