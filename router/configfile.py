"""Reading the experiment file within bounds: size, time, nesting and size once expanded; regular files only.

    raw = ConfigFileReader().read(Path("router/experiment.yaml"))   # a mapping, or ConfigFileError (400)

A reload must never wedge the router nor cost it memory: a FIFO or a hung mount would block a plain read (and
the reload lock with it), a 300 MB file slows every request while it parses, invalid UTF-8 and a deeply nested
document raised errors no one caught (PyYAML composes recursively). So the file is opened non-blocking and
refused unless it is a regular file; it is read in a thread the caller waits for at most `timeout` seconds (a
read that hangs anyway is left behind, and further reads are refused at once until it returns, so hung
threads never pile up); its size, nesting depth and node count (aliases expanded) are bounded.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from router.errors import ConfigFileError

#: The largest experiment file read (bytes). The shipped one is about 2 KB; a config with 1,000 variants ~200 KB.
MAX_BYTES = 1024 * 1024
#: Seconds a read may take before it is abandoned (the file system is hung).
READ_TIMEOUT = 5.0
#: The deepest nesting of mappings and lists (the shipped config nests 4 deep).
MAX_DEPTH = 32
#: The most YAML nodes once aliases are expanded (what validation walks): stops "billion laughs" documents.
MAX_NODES = 200_000


@dataclass(frozen=True)
class ReadLimits:
    max_bytes: int = MAX_BYTES
    timeout: float = READ_TIMEOUT
    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES


class ConfigFileReader:
    """Reads experiment files within `limits`; keep one per process that reloads (it remembers a hung read)."""

    def __init__(self, limits: ReadLimits | None = None) -> None:
        self.limits = limits or ReadLimits()
        self._hung: threading.Thread | None = None
        self._hung_path: Path | None = None

    def read(self, path: Path) -> dict[str, Any]:
        """The file's YAML mapping. Raises ConfigFileError saying which bound, and where."""
        return parse_yaml(self.read_text(path), path, self.limits)

    def read_text(self, path: Path) -> str:
        """The file's text (strict UTF-8), read in a thread within `limits.timeout`. Raises ConfigFileError."""
        hung = self._hung
        if hung is not None and hung.is_alive():
            raise ConfigFileError(
                f"{path}: an earlier read of {self._hung_path} has not returned after {self.limits.timeout:g}s "
                "(a hung file system?); not reading again until it does"
            )
        result: list[str | ConfigFileError] = []
        thread = threading.Thread(
            target=lambda: result.append(_read_capture(path, self.limits.max_bytes)), name="config-read", daemon=True
        )
        thread.start()
        thread.join(self.limits.timeout)
        if thread.is_alive():
            self._hung, self._hung_path = thread, path
            raise ConfigFileError(f"{path}: reading the experiment config took more than {self.limits.timeout:g}s")
        found = result[0]
        if isinstance(found, ConfigFileError):
            raise found
        return found


def _read_capture(path: Path, max_bytes: int) -> str | ConfigFileError:
    try:
        return read_bounded(path, max_bytes)
    except ConfigFileError as exc:
        return exc


def read_bounded(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """A regular file's text, at most `max_bytes`, strict UTF-8 (blocking). Raises ConfigFileError.

    Opened with O_NONBLOCK, so opening a FIFO does not wait for a writer, and refused unless fstat says it is a
    regular file (FIFOs, devices, sockets, directories never are).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the experiment config ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigFileError(f"{path}: the experiment config must be a regular file, not a {_kind(info.st_mode)}")
        if info.st_size > max_bytes:
            raise ConfigFileError(f"{path}: the experiment config is {info.st_size} bytes, more than {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # the file may grow after fstat: read at most one byte past the bound
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise ConfigFileError(f"{path}: the experiment config must be a regular file, not a directory") from exc
        raise ConfigFileError(f"{path}: cannot read the experiment config ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ConfigFileError(f"{path}: the experiment config is more than {max_bytes} bytes")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError(f"{path}: not valid UTF-8 (byte {exc.start}, line {line}: {exc.reason})") from exc


def parse_yaml(text: str, path: Path, limits: ReadLimits | None = None) -> dict[str, Any]:
    """The text as a YAML mapping, with its depth and expanded size bounded. Raises ConfigFileError."""
    limits = limits or ReadLimits()
    loader = _BoundedLoader(text, limits, path)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML ({exc})") from exc
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}: the experiment config must be a mapping, got {type(raw).__name__}")
    return raw


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (pure Python), refusing documents nested deeper or expanding larger than the limits.

    Depth is counted while composing, before the recursion gets deep; the expanded size is counted over the
    composed graph with shared (aliased) nodes memoised, so a "billion laughs" document costs linear time.
    """

    def __init__(self, text: str, limits: ReadLimits, path: Path) -> None:
        super().__init__(text)
        self._limits = limits
        self._path = path
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > self._limits.max_depth:
                raise ConfigFileError(f"{self._path}: nested more than {self._limits.max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        expanded = _expanded_size(node, {})
        if expanded > self._limits.max_nodes:
            raise ConfigFileError(
                f"{self._path}: {expanded} YAML nodes once aliases are expanded, more than {self._limits.max_nodes}"
            )
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Nodes in the tree `node` stands for, aliases expanded (at most max_depth deep: recursion is fine)."""
    known = seen.get(id(node))
    if known is not None:
        return known
    seen[id(node)] = MAX_NODES * 1000  # a recursive alias (a node inside itself) expands without end
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(key, seen) + _expanded_size(value, seen) for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, seen) for item in node.value)
    seen[id(node)] = size
    return size


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"
