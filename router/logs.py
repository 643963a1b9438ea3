"""The router's logs: the format every service shares (`recsys.logs`), tagged `"service": "router"`.

JSON lines on stderr in a container (or with LOG_FORMAT=json), readable lines in a terminal (LOG_FORMAT=text),
with whatever `extra=` fields a call adds:

log.warning("backend failed", extra={"request_id": rid, "variant": "model_b", "kind": "timeout"})
-> {"ts":1718000000.123,"level":"warning","service":"router","logger":"router.service",
    "msg":"backend failed","request_id":"...","variant":"model_b","kind":"timeout"}
"""

from __future__ import annotations

from recsys.logs import JsonFormatter, LogFormat, LogFormatError, TextFormatter, log_format
from recsys.logs import configure_logging as configure_service_logging

__all__ = ["JsonFormatter", "LogFormat", "LogFormatError", "TextFormatter", "configure_logging", "log_format"]


def configure_logging(level: str = "info", fmt: LogFormat | None = None) -> None:
    """Send the root logger's records (uvicorn's too) to stderr in the router's format; call once, at start."""
    configure_service_logging(level, service="router", fmt=fmt)
