"""The dependency split: each image's extra covers everything its service imports, and nothing much more."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.containers.files import ROOT

OWN_PACKAGES = {"abtest", "recsys", "model_a", "model_b", "router"}

#: What each image runs, as the modules to import, and the extra its Dockerfile installs.
IMAGES = {
    "model_a": ("model-a", ["model_a.__main__", "model_a.model", "recsys.server", "abtest.cli"]),
    "model_b": ("model-b", ["model_b.__main__", "model_b.model", "recsys.server", "abtest.cli"]),
    "router": ("router", ["router.__main__", "router.app", "abtest.cli", "abtest.simulator", "router.report"]),
}


@cache
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requirements_script", ROOT / "scripts" / "requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def project() -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return loaded


def requirements(*extras: str) -> list[str]:
    result: list[str] = script().requirements(project(), extras)
    return result


def names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def closure(reqs: list[str]) -> set[str]:
    """Every installed distribution that `reqs` pull in, following extras and environment markers."""
    found: set[str] = set()
    pending = [Requirement(r) for r in reqs]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req = pending.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(key[0])
        for text in metadata.requires(req.name) or []:
            dependency = Requirement(text)
            wanted = {""} | set(req.extras)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in wanted):
                pending.append(dependency)
    return found


def test_requirements_are_the_core_plus_the_extra() -> None:
    core = names(project()["dependencies"])
    assert names(requirements()) == core
    assert names(requirements("model-a")) == core | {"scikit-learn"}
    assert names(requirements("model_b")) == core | {"scikit-surprise"}


def test_each_model_image_leaves_out_the_other_model_and_the_router() -> None:
    assert not names(requirements("model-a")) & {"scikit-surprise", "aiohttp", "statsmodels", "matplotlib"}
    assert not names(requirements("model-b")) & {"scikit-learn", "aiohttp", "statsmodels", "matplotlib"}
    assert not names(requirements("router")) & {"scikit-learn", "scikit-surprise"}


def test_dev_extra_installs_every_dependency_of_every_extra() -> None:
    everything = set(names(project()["dependencies"]))
    for extra, reqs in project()["optional-dependencies"].items():
        if extra not in {"all", "dev"}:
            everything |= names(reqs)
    assert everything <= names(requirements("dev"))
    assert names(requirements("all")) == everything


def test_unknown_extra_is_refused() -> None:
    with pytest.raises(KeyError, match="no extra 'nope'"):
        requirements("nope")


def imported_names(path: Path) -> set[str]:
    """Top-level names of every absolute import in a source file, function-level (lazy) ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_extra_covers_every_module_its_service_imports(image: str) -> None:
    """Every third-party import in the project modules the service loads must come from the image's extra.

    The service's modules are imported in a fresh interpreter to see which of ours it loads; the imports
    written in those files are then checked (libraries' own optional imports are their business).
    """
    extra, modules = IMAGES[image]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"ours = {sorted(OWN_PACKAGES)!r}\n"
        "print('\\n'.join(sorted({m.__file__ for n, m in list(sys.modules.items())"
        " if n.split('.')[0] in ours and getattr(m, '__file__', None)})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    sources = [Path(line) for line in result.stdout.splitlines()]
    assert any(path.name == "__main__.py" for path in sources) or image == "router"
    distributions = metadata.packages_distributions()
    allowed = closure(requirements(extra))
    missing = {}
    for source in sources:
        for name in imported_names(source) - OWN_PACKAGES - set(sys.stdlib_module_names):
            owners = {canonicalize_name(d) for d in distributions.get(name, [])}
            if not owners & allowed:
                missing[f"{name} ({source.relative_to(ROOT)})"] = sorted(owners)
    assert not missing, f"the {image} image (extra {extra!r}) lacks: {missing}"
