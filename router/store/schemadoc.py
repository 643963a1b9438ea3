"""docs/store.md's tables and migrations, generated from router.store.schema so the documented schema is the real one.

    python -m router.store.schemadoc            # print them
    python -m router.store.schemadoc --write    # rewrite them in docs/store.md, between their marker comments

tests/store/test_schemadoc.py fails when docs/store.md differs from `render()`, so a schema change is documented
in the commit that makes it (schema.py asks for a new SCHEMA_VERSION and a migration step too).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

from router import docblocks
from router.docblocks import cell, code, table
from router.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES, Column, Table

DOC = docblocks.DOCS / "store.md"
COMMAND = "python -m router.store.schemadoc --write"


def render_tables() -> str:
    """One section per table: what a row is, then each column's type, NULL-ability and meaning; then its indexes."""
    return "\n\n".join(_table(t) for t in TABLES)


def render_migrations() -> str:
    """The schema version this code writes, and the statements that bring an older store up to it."""
    lines = [f"Current schema version: **{SCHEMA_VERSION}** (`meta.schema_version`)."]
    for migration in MIGRATIONS:
        lines.append("")
        lines.append(f"From version {migration.from_version} to {migration.from_version + 1}:")
        for dialect, statements in migration.statements.items():
            lines.append("")
            if not statements:
                lines.append(f"- {dialect}: nothing (such stores start at version {migration.from_version + 1})")
                continue
            lines.append(f"- {dialect}:")
            lines.append("")
            lines.append("  ```sql")
            for statement in statements:
                lines += ["  " + line for line in _sql_lines(statement)]
            lines.append("  ```")
    return "\n".join(lines)


#: The generated blocks of docs/store.md, by marker name.
BLOCKS = {"store-tables": render_tables, "store-migrations": render_migrations}


def render() -> str:
    """Every generated block of docs/store.md, in order (what `python -m router.store.schemadoc` prints)."""
    return "\n\n".join(render_block() for render_block in BLOCKS.values())


def _table(t: Table) -> str:
    rows = [[code(c.name), _column_type(t, c), "yes" if c.nullable else "no", cell(c.comment)] for c in t.columns]
    summary = cell(t.comment[0].upper() + t.comment[1:]) + "."
    parts = [f"### `{t.name}`", "", summary, "", table(["column", "type", "NULL", "meaning"], rows)]
    if t.indexes:
        listed = ", ".join(
            f"{code(i.name)} ({', '.join(i.columns)}){', unique' if i.unique else ''}" for i in t.indexes
        )
        parts += ["", f"Indexes: {listed}."]
    return "\n".join(parts)


def _column_type(t: Table, c: Column) -> str:
    words: list[str] = ["integer, generated row id" if c.type == "id" else c.type]
    if c.name in t.primary_key:
        words.append("primary key" if len(t.primary_key) == 1 else f"primary key ({', '.join(t.primary_key)})")
    if c.unique:
        words.append("unique")
    return ", ".join(words)


def _sql_lines(statement: str) -> list[str]:
    """A statement as it reads in schema.py, ended by `;`: its continuation lines dedented, then indented by 4."""
    first, _, rest = statement.strip().partition("\n")
    continued = textwrap.indent(textwrap.dedent(rest), "    ").splitlines() if rest else []
    lines = [first, *(line.rstrip() for line in continued if line.strip())]
    lines[-1] += ";"
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    return docblocks.main(DOC, BLOCKS, argv)


if __name__ == "__main__":
    sys.exit(main())
