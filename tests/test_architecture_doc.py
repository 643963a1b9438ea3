"""docs/architecture.md matches the tree: its layout names exactly the modules there are, and every contract."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("abtest", "recsys", "router", "model_a", "model_b")


def section(text: str, title: str) -> str:
    """The text after the heading `## title`, up to the next `## ` heading."""
    parts = re.split(rf"^## {re.escape(title)}\n", text, maxsplit=1, flags=re.MULTILINE)
    assert len(parts) == 2, f"no '## {title}' section"
    return re.split(r"^## ", parts[1], maxsplit=1, flags=re.MULTILINE)[0]


def layout_paths(text: str) -> list[str]:
    """The paths the layout block names: `dir/` lines open a folder, deeper-indented lines are inside it.

    >>> layout_paths("## Layout\\n```\\na/      pkg\\n  b.py  mod\\n  c/    sub\\n    d.py  x\\ne.py  top\\n```\\n")
    ['a/', 'a/b.py', 'a/c/', 'a/c/d.py', 'e.py']
    """
    block = section(text, "Layout").split("```", 2)[1]
    paths: list[str] = []
    folders: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"layout line indented by {indent}, not a multiple of 2: {line!r}"
        depth = indent // 2
        assert depth <= len(folders), f"layout line nested under no folder: {line!r}"
        del folders[depth:]
        name = line.split()[0]
        path = "".join(folders) + name
        paths.append(path)
        if name.endswith("/"):
            folders.append(name)
    return paths


def package_modules() -> set[str]:
    """Every module of the five packages as a layout path: a package is its folder, a module its file."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            relative = path.relative_to(REPO).as_posix()
            found.add(relative.removesuffix("__init__.py") if path.name == "__init__.py" else relative)
    return found


def test_every_path_in_the_architecture_layout_exists() -> None:
    paths = layout_paths(DOC.read_text(encoding="utf-8"))
    assert len(paths) > 40, "the layout block was not found or not parsed"
    assert len(paths) == len(set(paths)), f"named twice: {sorted(p for p in paths if paths.count(p) > 1)}"
    missing = [path for path in paths if not (REPO / path).exists()]
    assert not missing, f"docs/architecture.md's layout names paths that do not exist: {missing}"


def test_every_package_module_is_in_the_architecture_layout() -> None:
    named = set(layout_paths(DOC.read_text(encoding="utf-8")))
    undocumented = sorted(package_modules() - named)
    assert not undocumented, (
        f"modules missing from docs/architecture.md's layout (add one line each, saying what it is): {undocumented}"
    )


def test_every_import_contract_is_named_in_the_architecture_doc() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    assert contracts, "no import-linter contracts found in pyproject.toml"
    text = DOC.read_text(encoding="utf-8")
    unnamed = [contract["name"] for contract in contracts if f"**{contract['name']}**" not in text]
    assert not unnamed, f"import-linter contracts not described in docs/architecture.md: {unnamed}"


def test_the_drawn_layers_are_the_declared_layers() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    layers = next(c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    drawing = section(DOC.read_text(encoding="utf-8"), "Dependency direction").split("```", 2)[1]
    drawn = [re.split(r"\s{2,}", line.strip())[0] for line in drawing.splitlines() if re.match(r"^[a-z]", line)]
    assert drawn == layers, f"docs/architecture.md draws the layers {drawn}, pyproject.toml declares {layers}"
