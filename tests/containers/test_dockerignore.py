"""The build context: only what the images build from goes in (no .git, venvs, results, models, tests)."""

from __future__ import annotations

import re
from functools import cache

import pytest

from tests.containers.files import DOCKERFILES, ROOT, instructions


@cache
def rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    """.dockerignore as (exclude?, regex) pairs, in order (Docker's patternmatcher semantics)."""
    parsed = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            elif pattern[index] == "[":
                end = pattern.index("]", index)
                regex += pattern[index : end + 1]
                index = end + 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        parsed.append((exclude, re.compile(regex + "$")))
    return tuple(parsed)


def excluded(path: str) -> bool:
    """Whether the build context leaves `path` out: the last rule matching it or a parent folder wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exclude, pattern in rules():
        if any(pattern.match(prefix) for prefix in prefixes):
            verdict = exclude
    return verdict


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".env",
        ".venv/bin/python",
        "venv/bin/python",
        "results/outcomes.sqlite3",
        "models/model_a.npz",
        "tests/conftest.py",
        "docs/architecture.md",
        ".ci/run",
        "abtest/__pycache__/cli.cpython-311.pyc",
        "router/__pycache__/app.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/nodeids",
        "ab_router.egg-info/PKG-INFO",
        "docker-compose.yml",
    ],
)
def test_build_context_leaves_out(path: str) -> None:
    assert excluded(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "scripts/requirements.py",
        "abtest/cli.py",
        "model_a/model.py",
        "model_b/model.py",
        "recsys/server.py",
        "router/app.py",
        "router/experiment.yaml",
        "router/report/render.py",
    ],
)
def test_build_context_keeps(path: str) -> None:
    assert not excluded(path)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_everything_a_dockerfile_copies_is_in_the_context(name: str) -> None:
    for instruction in instructions(DOCKERFILES[name]):
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from="):
            continue
        *sources, _ = instruction.arguments.split()
        for source in (s.replace("${MODEL}", model) for s in sources for model in ("model_a", "model_b")):
            path = ROOT / source
            assert path.exists(), f"{name}/Dockerfile copies {source}, which does not exist"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            kept = [f for f in files if not excluded(f.relative_to(ROOT).as_posix())]
            assert kept, f"{name}/Dockerfile copies {source}, which .dockerignore leaves out"
