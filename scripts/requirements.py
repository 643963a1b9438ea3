"""Print the requirements of the core plus some extras of pyproject.toml, one per line.

The Dockerfiles install these in a layer of their own, before any code is copied, so that editing code
reuses the cached dependency layer:

    python scripts/requirements.py model-a > requirements.txt    # core + scikit-learn
    python scripts/requirements.py router                        # core + the router's extras

Self-references such as `ab-router[model-a,router]` (how `all` and `dev` are built) are expanded.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def normalise(name: str) -> str:
    """PEP 503/685 name normalisation: `Model_A` and `model-a` are the same extra."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: Mapping[str, Any], extras: Sequence[str]) -> list[str]:
    """The core dependencies plus those of `extras`, in file order, without duplicates.

    Raises KeyError naming an extra that pyproject.toml does not define.
    """
    optional = {normalise(name): list(reqs) for name, reqs in project.get("optional-dependencies", {}).items()}
    self_reference = re.compile(rf"^{re.escape(normalise(project['name']))}\[(?P<extras>[^\]]*)\]$")
    result: list[str] = list(project.get("dependencies", []))
    pending = [normalise(extra) for extra in reversed(extras)]
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise KeyError(f"no extra {extra!r} in pyproject.toml (extras: {', '.join(sorted(optional))})")
        seen.add(extra)
        for requirement in optional[extra]:
            match = self_reference.match(normalise(requirement.split(";")[0].strip()))
            if match:
                pending.extend(normalise(name) for name in reversed(match["extras"].split(",")) if name.strip())
            else:
                result.append(requirement)
    return list(dict.fromkeys(result))


def main(argv: Sequence[str]) -> int:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    try:
        lines = requirements(project, argv)
    except KeyError as exc:
        print(f"requirements.py: {exc.args[0]}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
