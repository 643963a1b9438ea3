"""ConfigWatcher on real files: content changes reload, same content does not, a FIFO never blocks it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from router.watch import ConfigWatcher


def test_a_change_of_content_reloads_and_a_rewrite_of_the_same_content_does_not(tmp_path: Path) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text("salt: a\n")
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append(config.read_text())

    async def scenario() -> list[bool]:
        watcher = ConfigWatcher(config, reload)
        polls = [await watcher.poll()]  # nothing changed
        config.write_text("salt: a\n")
        os.utime(config, ns=(1, 1))  # a new mtime, the same content
        polls.append(await watcher.poll())
        config.write_text("salt: b\n")
        os.utime(config, ns=(2, 2))
        polls.append(await watcher.poll())
        replacement = tmp_path / "new.yaml"
        replacement.write_text("salt: c\n")
        os.replace(replacement, config)  # replaced by rename: a new inode
        polls.append(await watcher.poll())
        config.unlink()
        polls.append(await watcher.poll())  # gone: ignored until it is back
        return polls

    assert asyncio.run(scenario()) == [False, False, True, True, False]
    assert reloads == ["salt: b\n", "salt: c\n"]


def test_a_fifo_in_place_of_the_file_is_not_read(tmp_path: Path) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text("salt: a\n")

    async def reload() -> None:
        raise AssertionError("a FIFO is not a config")

    async def scenario() -> bool:
        watcher = ConfigWatcher(config, reload)
        config.unlink()
        os.mkfifo(config)  # nobody writes it: reading would block forever
        return await asyncio.wait_for(watcher.poll(), 10)

    assert asyncio.run(scenario()) is False
