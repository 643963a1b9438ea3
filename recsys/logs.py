"""One log format per service: JSON lines in containers, readable single lines in a terminal.

The router and both model servers call `configure_logging(level, service=...)` once, from their entry point:

    LOG_FORMAT=json (or stderr is not a terminal, as in a container) -> one JSON object per line:
    {"ts":1718000000.123,"level":"warning","service":"router","logger":"router.routing",
     "msg":"backend failed","request_id":"...","variant":"model_b","kind":"timeout"}
    LOG_FORMAT=text (or stderr is a terminal) -> one readable line:
    12:00:00.123 WARNING router.routing: backend failed  request_id=... variant=model_b kind=timeout

Fields a call adds with `extra=` are kept in both formats; uvicorn's `color_message` (the same message with
ANSI colour escapes) is dropped, and floats are rounded so that 0.17970000000000003 prints as 0.1797.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import IO, Any, Literal

LogFormat = Literal["json", "text"]
FORMATS: tuple[LogFormat, ...] = ("json", "text")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
#: Extra fields that are never logged: uvicorn repeats every message with ANSI colour codes in this one.
_DROPPED = frozenset({"color_message"})
#: Decimal places kept for floats in log fields and printed summaries (significant digits below 10**-4).
FLOAT_DIGITS = 4


class LogFormatError(ValueError):
    """LOG_FORMAT names no known format."""


def round_floats(value: Any, digits: int = FLOAT_DIGITS) -> Any:
    """`value` with every float (also inside dicts, lists and tuples) rounded to `digits` decimal places.

    Tiny values keep `digits` significant digits instead, so they do not print as 0.

    >>> round_floats({"precision_at_10": 0.17970000000000003, "n": 3, "xs": [1.23456789, 0.0000123456]})
    {'precision_at_10': 0.1797, 'n': 3, 'xs': [1.2346, 1.235e-05]}
    """
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0:
            return value
        return round(value, digits) if abs(value) >= 10**-digits else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(round_floats(item, digits) for item in value)
    return value


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a logging call added with `extra=` (minus the dropped ones), floats rounded."""
    return {
        key: round_floats(value)
        for key, value in vars(record).items()
        if key not in _STANDARD and key not in _DROPPED and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON line: ts, level, service (if given), logger, msg, the extra fields, and the exception if any."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower()}
        if self.service:
            entry["service"] = self.service
        entry |= {"logger": record.name, "msg": record.getMessage(), **extra_fields(record)}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`HH:MM:SS.mmm LEVEL logger: message  key=value ...`; a message's own extra lines are indented under it."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = "".join(f" {key}={value}" for key, value in extra_fields(record).items())
        text = f"{clock}.{int(record.msecs):03d} {record.levelname} {record.name}: {record.getMessage()}"
        text += f" {fields}" if fields else ""
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text.replace("\n", "\n    ")


def log_format(stream: IO[str] | None = None, environ: dict[str, str] | None = None) -> LogFormat:
    """`LOG_FORMAT` if set (json | text), else text when `stream` (stderr) is a terminal, else json."""
    wanted = (environ if environ is not None else os.environ).get("LOG_FORMAT", "").strip().lower()
    if wanted:
        if wanted not in FORMATS:
            raise LogFormatError(f"LOG_FORMAT={wanted!r}: use one of {', '.join(FORMATS)}")
        return "json" if wanted == "json" else "text"
    stream = stream if stream is not None else sys.stderr
    return "text" if stream.isatty() else "json"


def formatter(fmt: LogFormat, service: str | None = None) -> logging.Formatter:
    """The formatter for `fmt`."""
    return JsonFormatter(service) if fmt == "json" else TextFormatter()


def configure_logging(level: str = "info", *, service: str | None = None, fmt: LogFormat | None = None) -> None:
    """Send every record (uvicorn's included) to stderr in one format; call once, from the entry point.

    Raises LogFormatError if LOG_FORMAT is set to something else than json or text.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt or log_format(sys.stderr), service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn may have set its own handlers and level already (a server configured earlier in the process):
        # the root's handler and level decide from now on.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)
