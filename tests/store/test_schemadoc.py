"""docs/store.md's tables and migrations are what router/store/schema.py defines."""

from __future__ import annotations

import pytest

from router import docblocks
from router.store import schemadoc
from router.store.schema import SCHEMA_VERSION, TABLES


@pytest.mark.parametrize("name", list(schemadoc.BLOCKS))
def test_store_doc_block_is_what_the_schema_renders(name: str) -> None:
    text = schemadoc.DOC.read_text(encoding="utf-8")
    assert docblocks.block(text, name) == schemadoc.BLOCKS[name](), (
        f"docs/store.md's block {name!r} differs from router/store/schema.py: run `{schemadoc.COMMAND}` and commit"
    )


def test_store_doc_names_every_column_and_the_current_version() -> None:
    rendered = schemadoc.render()
    for table in TABLES:
        assert f"### `{table.name}`" in rendered
        for column in table.columns:
            assert f"| `{column.name}` |" in rendered, f"{table.name}.{column.name}"
    assert f"**{SCHEMA_VERSION}**" in rendered


def test_store_doc_version_history_reaches_the_current_version() -> None:
    """The hand-written history (why each version exists) has a row for every version up to SCHEMA_VERSION."""
    text = schemadoc.DOC.read_text(encoding="utf-8")
    for version in range(1, SCHEMA_VERSION + 1):
        assert f"\n| {version} | " in text, f"docs/store.md: add version {version} to the version table"
    assert f"\n| {SCHEMA_VERSION + 1} | " not in text
