"""The shared log format: JSON lines or readable lines, extra fields kept, uvicorn's colour copy dropped."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from recsys.logs import JsonFormatter, LogFormatError, TextFormatter, configure_logging, log_format, round_floats


def record(msg: str = "Uvicorn running on %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args or ("http://127.0.0.1:8001",), None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_keep_extra_fields_and_drop_uvicorns_colour_message() -> None:
    coloured = record(color_message="Uvicorn running on \x1b[1m%s\x1b[0m", variant="model_b", score=0.17970000000000003)
    line = JsonFormatter(service="router").format(coloured)
    entry = json.loads(line)
    assert "\n" not in line and "\\u001b" not in line and "\x1b" not in line
    assert "color_message" not in entry
    assert entry["msg"] == "Uvicorn running on http://127.0.0.1:8001"
    assert (entry["service"], entry["logger"], entry["level"]) == ("router", "uvicorn.error", "info")
    assert (entry["variant"], entry["score"]) == ("model_b", 0.1797)


def test_text_lines_are_readable_and_indent_a_multi_line_message() -> None:
    text = TextFormatter().format(record("invalid config:\n  %s", "strategy: bad", color_message="x", kind="config"))
    first, second = text.split("\n")
    assert first.endswith("INFO uvicorn.error: invalid config:")
    assert second == "      strategy: bad  kind=config"
    assert "color_message" not in text


def test_log_format_follows_log_format_then_the_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert log_format(io.StringIO(), {}) == "json"  # a container's stderr is no terminal
    assert log_format(Terminal(), {}) == "text"
    assert log_format(Terminal(), {"LOG_FORMAT": "json"}) == "json"
    assert log_format(io.StringIO(), {"LOG_FORMAT": "TEXT"}) == "text"
    with pytest.raises(LogFormatError, match="LOG_FORMAT='xml'"):
        log_format(io.StringIO(), {"LOG_FORMAT": "xml"})


def test_configure_logging_sends_uvicorn_through_the_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", service="model_a", fmt="json")
        logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "x", extra={"color_message": "\x1b[1mx"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert json.loads(stream.getvalue()) | {"ts": 0} == {
        "ts": 0,
        "level": "info",
        "service": "model_a",
        "logger": "uvicorn.error",
        "msg": "Uvicorn running on x",
    }


def test_round_floats_removes_float_noise_but_keeps_tiny_values() -> None:
    assert round_floats([0.17970000000000003, 2.0, 1e-7, float("nan"), None, "0.123456"])[:3] == [0.1797, 2.0, 1e-7]
    assert round_floats({"a": (0.30000000000000004,)}) == {"a": (0.3,)}
