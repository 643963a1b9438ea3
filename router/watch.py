"""Reload when the mounted config file changes: how a Kubernetes ConfigMap edit reaches a running router.

    watcher = ConfigWatcher(Path("/etc/router/experiment.yaml"), reload, interval=2.0)
    await watcher.run()              # until cancelled: calls `reload()` after each change of the file's content

A ConfigMap volume is a folder of symlinks: `experiment.yaml -> ..data/experiment.yaml`, `..data ->
..2026_12_02_00_35_01.123`. The kubelet updates it by writing a new timestamped folder and swapping `..data`
in one rename, so the file at the path is replaced, never written in place: its inode changes, its mtime may
not. Editors and `cp` write in place (mtime and size change, inode kept). So each poll compares the resolved
path, device, inode, size and mtime; when any differs, it reads the file (a regular file only, at most
`MAX_BYTES`) and calls `reload` if its SHA-256 differs from the last one seen. A file that disappears is
ignored until it is back (the swap is atomic, but a hand edit may not be); the reload itself validates the
content and, when it refuses it, the old config keeps serving and the refusal is logged and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Bytes of the config file hashed to detect a change (a larger file is left to the reload to refuse).
MAX_BYTES = 4 * 1024 * 1024

Signature = tuple[str, int, int, int, int]


class ConfigWatcher:
    """Polls one file and calls `reload` after its content changed (see the module docstring)."""

    def __init__(self, path: Path, reload: Callable[[], Awaitable[None]], *, interval: float = 2.0) -> None:
        self.path = path
        self.interval = interval
        self._reload = reload
        self._signature = _signature(path)
        self._digest = _digest(path) if self._signature is not None else None
        self.reloads = 0  # reloads this watcher asked for

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # polling is the watch: inotify misses a ConfigMap's symlink swap
            await self.poll()

    async def poll(self) -> bool:
        """Check once; True if the content changed and `reload` was called."""
        signature = await asyncio.to_thread(_signature, self.path)
        if signature is None or signature == self._signature:
            return False
        self._signature = signature
        digest = await asyncio.to_thread(_digest, self.path)
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        self.reloads += 1
        log.info("config file changed; reloading", extra={"path": str(self.path), "resolved": signature[0]})
        await self._reload()
        return True


def _signature(path: Path) -> Signature | None:
    """Where the path leads and what is there now, or None if there is nothing (yet)."""
    try:
        resolved = os.path.realpath(path)
        info = os.stat(resolved)
    except OSError:
        return None
    return resolved, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _digest(path: Path) -> bytes | None:
    """The SHA-256 of the file's first MAX_BYTES, or None if it is not a regular file or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks on a FIFO put in its place
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            return hashlib.sha256(file.read(MAX_BYTES)).digest()
    except OSError:
        return None
    finally:
        os.close(fd)
