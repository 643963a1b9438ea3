"""Generated blocks in Markdown files: text between two marker comments that a command rewrites from the code.

    <!-- BEGIN GENERATED experiment-fields: edit the code, then run `python -m router.configdoc --write` -->
    ...the table...
    <!-- END GENERATED experiment-fields -->

A reference table generated from its definition cannot drift from it: the renderer (router.configdoc,
router.store.schemadoc) writes the block, and a test fails when the file's block differs from what the renderer
produces now, naming the command that regenerates it.

>>> text = replace_block("a\\n" + markers("t", "cmd") + "\\nb", "t", "new")
>>> block(text, "t")
'new'
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: The repository's docs/ folder (present in a checkout, not in the images).
DOCS = Path(__file__).resolve().parent.parent / "docs"


class DocBlockError(ValueError):
    """A file lacks a block's markers, or has them more than once or out of order."""


def begin_marker(name: str, command: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: edit the code, then run `{command}` -->"


def end_marker(name: str) -> str:
    return f"<!-- END GENERATED {name} -->"


def markers(name: str, command: str) -> str:
    """An empty block: the two markers, for a new file."""
    return f"{begin_marker(name, command)}\n{end_marker(name)}"


def _span(text: str, name: str) -> tuple[int, int]:
    """Where block `name`'s content starts (after the begin marker's line) and ends (where the end marker starts)."""
    begins = [m.end() for m in re.finditer(rf"<!-- BEGIN GENERATED {re.escape(name)}:[^\n]*-->\n", text)]
    ends = [m.start() for m in re.finditer(rf"<!-- END GENERATED {re.escape(name)} -->", text)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise DocBlockError(
            f"expected one block {name!r} (a line with BEGIN GENERATED {name}, later END GENERATED {name}); "
            f"found {len(begins)} begin and {len(ends)} end markers"
        )
    return begins[0], ends[0]


def block(text: str, name: str) -> str:
    """The content of block `name`, without the markers. Raises DocBlockError if the markers are wrong."""
    start, end = _span(text, name)
    content = text[start:end]
    return content[:-1] if content.endswith("\n") else content


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with block `name`'s content replaced (the markers stay, each on its own line)."""
    start, end = _span(text, name)
    return text[:start] + content.rstrip("\n") + "\n" + text[end:]


def main(doc: Path, renderers: Mapping[str, Callable[[], str]], argv: Sequence[str] | None = None) -> int:
    """The command line of a renderer: print its blocks, or `--write` them into `doc`."""
    parser = argparse.ArgumentParser(description=f"Generate the reference blocks of {doc.name}.")
    parser.add_argument("--write", action="store_true", help=f"replace the blocks in {doc} (between their markers)")
    args = parser.parse_args(argv)
    if not args.write:
        print("\n\n".join(render() for render in renderers.values()))
        return 0
    text = doc.read_text(encoding="utf-8")
    for name, render in renderers.items():
        text = replace_block(text, name, render())
    doc.write_text(text, encoding="utf-8")
    print(f"{doc}: {', '.join(renderers)} regenerated", file=sys.stderr)
    return 0


# -- Markdown helpers the renderers share -------------------------------------------------------------------


def code(text: str) -> str:
    """`text` as a Markdown code span, safe in a table cell (backticks inside get a longer fence; | escaped).

    >>> code("a|b")
    '`a\\\\|b`'
    >>> code("x`y")
    '`` x`y ``'
    """
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    padded = f" {text} " if "`" in text else text
    return cell(f"{fence}{padded}{fence}")


def cell(text: str) -> str:
    """`text` fit for one Markdown table cell: on one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; cells are taken as they are (escape them with `cell` or `code`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
