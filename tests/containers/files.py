"""The container files under test, read once: Dockerfiles as instruction lists, the compose file as YAML."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: The image recipes: one for every model server (the build argument MODEL names the package), one for the router.
DOCKERFILES = {"model": ROOT / "recsys" / "Dockerfile", "router": ROOT / "router" / "Dockerfile"}
#: Which recipe each compose service builds.
SERVICE_DOCKERFILES = {
    "model_a": DOCKERFILES["model"],
    "model_b": DOCKERFILES["model"],
    "router": DOCKERFILES["router"],
}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined: `RUN pip install ...`."""

    line: int
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The arguments as a JSON list (exec form), or None when they are in shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@cache
def instructions(path: Path) -> tuple[Instruction, ...]:
    """The instructions of a Dockerfile, comments dropped and `\\` continuations joined."""
    parsed: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, arguments = " ".join(pending).partition(" ")
            parsed.append(Instruction(start, keyword.upper(), arguments.strip()))
            pending = []
    return tuple(parsed)


def stages(path: Path) -> list[list[Instruction]]:
    """The build stages of a Dockerfile, each starting with its FROM; the last one is the image.

    Instructions before the first FROM (global build arguments) belong to no stage.
    """
    result: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found
