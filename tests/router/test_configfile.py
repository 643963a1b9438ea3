"""The experiment file is read within bounds: regular files only, size, time, UTF-8, nesting, expanded size."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from router.configfile import MAX_BYTES, MAX_DEPTH, ConfigFileReader, ReadLimits, read_bounded
from router.errors import ConfigFileError


def test_a_regular_file_is_read_as_its_mapping(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("experiment: rec-ab\nvariants: [{name: a, weight: 1}]\n")
    assert ConfigFileReader().read(path) == {"experiment": "rec-ab", "variants": [{"name": "a", "weight": 1}]}


def test_the_shipped_config_is_well_within_every_bound() -> None:
    assert ConfigFileReader(ReadLimits(max_depth=8, max_nodes=2_000)).read(Path("router/experiment.yaml"))


def test_a_fifo_is_refused_at_once_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "experiment.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigFileError, match="must be a regular file, not a FIFO"):
        read_bounded(fifo)  # would block forever in open() without O_NONBLOCK: no writer ever comes


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "."])
def test_devices_and_directories_are_refused(special: str) -> None:
    with pytest.raises(ConfigFileError, match="must be a regular file"):
        read_bounded(Path(special))


def test_a_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as out:
        out.truncate(50 * 1024 * 1024)  # 50 MiB, sparse: nothing to parse, the bound must refuse it first
    with pytest.raises(ConfigFileError, match=f"more than {MAX_BYTES}"):
        read_bounded(path)
    path.write_text("x: 1\n" * 10)
    assert read_bounded(path, max_bytes=50) == "x: 1\n" * 10
    with pytest.raises(ConfigFileError, match="more than 49"):
        read_bounded(path, max_bytes=49)


def test_invalid_utf8_is_a_config_file_error_naming_the_place(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"experiment: rec-ab\nsalt: caf\xe9\n")
    with pytest.raises(ConfigFileError, match=r"not valid UTF-8 \(byte 28, line 2"):
        ConfigFileReader().read(path)


@pytest.mark.parametrize("form", ["flow", "block"])
def test_deep_nesting_is_refused_quickly_instead_of_recursing(tmp_path: Path, form: str) -> None:
    depth = 100_000
    path = tmp_path / "deep.yaml"
    if form == "flow":
        path.write_text("a: " + "[" * depth + "]" * depth + "\n")
    else:
        path.write_text("".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "v\n")
    with pytest.raises(ConfigFileError, match=f"nested more than {MAX_DEPTH} levels deep"):
        ConfigFileReader().read(path)


def test_nesting_up_to_the_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "nested.yaml"
    path.write_text("a: " + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2) + "\n")
    assert ConfigFileReader().read(path)["a"] is not None


def test_an_alias_bomb_is_refused_by_its_expanded_size(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10**10 once expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigFileError, match="once aliases are expanded"):
        ConfigFileReader().read(path)


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [*a]\n")
    with pytest.raises(ConfigFileError, match="once aliases are expanded"):
        ConfigFileReader().read(path)


def test_a_hung_read_is_abandoned_and_blocks_no_later_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung file system (outside the project) is stood in for by an open() that blocks until released."""
    hung, good = tmp_path / "on-a-hung-mount.yaml", tmp_path / "good.yaml"
    hung.write_text("x: 1\n")
    good.write_text("x: 2\n")
    release = threading.Event()
    real_open = os.open

    def open_blocking_on_the_hung_mount(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == hung:
            release.wait(60)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_blocking_on_the_hung_mount)
    reader = ConfigFileReader(ReadLimits(timeout=0.2))
    with pytest.raises(ConfigFileError, match=r"took more than 0\.2s"):
        reader.read(hung)
    with pytest.raises(ConfigFileError, match="has not returned"):  # refused at once: no second hung thread
        reader.read(good)
    release.set()
    configfile_threads = [t for t in threading.enumerate() if t.name == "config-read"]
    for thread in configfile_threads:
        thread.join(10)
    assert reader.read(good) == {"x": 2}
    assert reader.read(hung) == {"x": 1}
