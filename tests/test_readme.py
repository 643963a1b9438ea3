"""The README stays the newcomer's page (its two commands first, short), and no link in the docs is broken."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.router.conftest import (  # the fake model servers, for the feedback snippet
    Backend,
    backend_servers,  # noqa: F401
    backends,  # noqa: F401
    experiment,
    running_router,
    settings_for,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

#: The README's budget: about 200 lines; past this, a topic belongs in docs/.
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def shell_commands(markdown: str) -> list[str]:
    """The commands of the fenced sh/bash/console blocks, in order, without prompts or trailing comments.

    >>> shell_commands("text\\n```sh\\n$ make  # build\\n# a comment\\n\\nmake test\\n```\\n")
    ['make', 'make test']
    """
    commands = []
    for block in re.finditer(r"^```(sh|bash|shell|console)[ \t]*\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL):
        for line in block.group(2).splitlines():
            command = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ ")).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def relative_links(markdown: str) -> list[str]:
    """Link targets outside code and comments that point into the repository (not URLs, not mail).

    >>> relative_links("[a](x.md#y) [b](http://e) `[c](z.md)` [d](#t) <!-- [g](h.md) -->\\n```\\n[e](f.md)\\n```\\n")
    ['x.md#y', '#t']
    """
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"<!--.*?-->", "", FENCE.sub("", markdown), flags=re.DOTALL))
    return [target for target in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens; repeats get -1.

    >>> sorted(anchors("# Choosing the store: `STORE_URL`\\n## Notes\\n## Notes\\n"))
    ['choosing-the-store-store_url', 'notes', 'notes-1']
    """
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", FENCE.sub("", markdown), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_readme_shows_the_two_commands_first_exactly() -> None:
    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert commands[:2] == ["docker compose up", "scripts/check"], f"README's first commands are {commands[:2]}"


def test_readme_two_commands_are_on_the_first_screen() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("docker compose up"))
    assert first < 25, f"`docker compose up` is on line {first + 1}: keep it on the first screen"


def test_readme_stays_short() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, (
        f"README.md has {count} lines (budget {MAX_README_LINES}): move reference material to docs/ and link it"
    )


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_points_to_what_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in relative_links(text):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading in {destination.relative_to(REPO).as_posix()})")
    assert not broken, f"{page.relative_to(REPO).as_posix()}: broken links: {broken}"


def test_the_link_check_sees_the_docs() -> None:
    assert {page.name for page in DOCS} >= {"architecture.md", "config.md", "router.md", "store.md"}
    assert len(relative_links(README.read_text(encoding="utf-8"))) >= 10


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_repository_path_named_in_code_exists(page: Path) -> None:
    """`router/store/schema.py`-style paths in code spans name real files (a moved module must take its docs)."""
    named = re.findall(
        r"`((?:abtest|recsys|router|model_a|model_b|tests|scripts|docs)/[\w./-]*)`", page.read_text(encoding="utf-8")
    )
    missing = sorted({path for path in named if not (REPO / path).exists()})
    assert not missing, f"{page.relative_to(REPO).as_posix()} names paths that do not exist: {missing}"


def readme_shell_block(containing: str) -> str:
    """The fenced sh block of README.md that contains `containing`."""
    blocks: list[str] = re.findall(
        r"^```sh[ \t]*\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
    )
    return next(block for block in blocks if containing in block)


def test_readme_recommend_example_shows_the_variant_the_default_config_gives_user_42() -> None:
    from router.config import RouterSettings, load_config
    from router.strategies import HashStrategy, bucket_ranges

    config = load_config(RouterSettings(config_path=REPO / "router" / "experiment.yaml"))
    assert config.strategy == "hash"
    variant = HashStrategy(bucket_ranges(list(config.weights)), salt=config.salt).assign("42").variant
    example = readme_shell_block("/recommend/42")
    assert re.findall(r"X-Variant: (\w+)", example) == [variant]
    assert set(re.findall(r'"(?:model|variant)":"(\w+)"', example)) == {variant}


def test_readme_feedback_snippet_sends_the_request_id_of_the_answer_it_got(
    tmp_path: Path,
    backends: dict[str, Backend],  # noqa: F811
) -> None:
    """The README's two lines, run by a shell against a real router: the click is accepted for that exposure."""
    example = readme_shell_block("/feedback")
    lines = example.splitlines()
    snippet = "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("answer=")) :])
    with running_router(settings_for(tmp_path, experiment(backends))) as router:
        script = snippet.replace("http://localhost:8080", router.url)
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
        rows = router.rows(
            "SELECT e.request_id, e.items, f.item_id FROM feedback f JOIN exposures e USING (request_id)"
        )
    assert done.returncode == 0, done.stderr
    accepted = json.loads(done.stdout)
    assert accepted["status"] == "accepted" and accepted["attributed_by"] == "request_id"
    assert len(rows) == 1 and rows[0][0] == accepted["request_id"]
    assert rows[0][2] == json.loads(rows[0][1])[0]  # the first item of the list that user was shown
