"""`python -m router --config PATH --port N [--host H] [--workers N]`: serve the router with uvicorn.

`--workers N` runs N router processes sharing the port (SO_REUSEPORT) and the outcome store, under a small
supervisor (router/workers.py); the default, 1, is one process and no supervisor.

SIGTERM/SIGINT stop it gracefully (in-flight requests finish, then every queued event is written; a second
one is ignored); SIGHUP re-reads the config like POST /admin/reload while the router serves, and is ignored
(and logged) before that and while it stops: no signal kills it at any moment (recsys.signals, installed
before anything else is imported). Exit codes, each with a message that says what is wrong:
0 after a clean stop (also when a stop signal came before it served); 2 for an invalid experiment config or
environment (checked before uvicorn starts, logged once, in the format LOG_FORMAT picks), an unknown STORE_URL
included, or one where no database answers;
3 when start-up failed inside the server, e.g. the outcome store cannot be opened.
"""

# ruff: noqa: E402 - the signal handlers are installed before the other imports, on purpose (recsys.signals)
from __future__ import annotations

from recsys.signals import ProcessSignals

SIGNALS = ProcessSignals.install("router") if __name__ == "__main__" else None

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from router.app import create_app
from router.config import RouterSettings, load_config
from router.errors import ConfigError
from router.guard import server_options
from router.logs import LogFormatError, configure_logging
from router.store import backend_for
from router.workers import Worker, listening_socket, supervise

log = logging.getLogger("router")


def main(argv: Sequence[str] | None = None, signals: ProcessSignals | None = None) -> int:
    """Parse arguments, check the config, run the server until a signal stops it. Returns the exit code.

    `signals` is the process's handlers (installed at import when run as `python -m router`); without them
    the server is uvicorn's own (in-process callers: tests).
    """
    parser = argparse.ArgumentParser(prog="python -m router", description="The A/B router.")
    parser.add_argument(
        "--config", type=Path, help="experiment YAML (default $ROUTER_CONFIG or router/experiment.yaml)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in a container)")
    parser.add_argument(
        "--workers", type=_positive, default=1, help="router processes sharing the port and the store (default 1)"
    )
    parser.add_argument("--worker", type=Worker.parse, help=argparse.SUPPRESS)  # set by the supervisor only
    args = parser.parse_args(argv)

    try:
        overrides = {"config_path": args.config} if args.config is not None else {}
        settings = RouterSettings(**overrides)
    except ValidationError as exc:
        print(f"router: invalid environment settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        configure_logging(settings.log_level)
    except LogFormatError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    try:
        load_config(settings)  # fail fast, before uvicorn starts
        backend_for(settings.outcome_store_url).probe()  # an unknown STORE_URL, or nothing listening there
    except ConfigError as exc:
        # Said once, through the log (JSON in a container, a readable line in a terminal), not printed as well.
        log.critical("router not started: %s", exc)
        return 2
    if signals is not None and signals.stop_requested is not None:
        log.warning("router not started: asked to stop while starting")
        return 0
    if args.workers > 1 and args.worker is None:
        passed_on = ["--config", str(args.config)] if args.config is not None else []
        return supervise(passed_on, workers=args.workers, host=args.host, port=args.port)
    try:
        app = create_app(settings, signals=signals, worker=args.worker)
    except ConfigError as exc:  # e.g. a STORE_URL no backend understands
        log.critical("router not started: %s", exc)
        return 2

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        proxy_headers=False,  # the router never uses the client's address: don't parse X-Forwarded-For
        **server_options(app, settings),  # httptools with the client bounds, keep-alive (router.guard)
    )
    server = signals.server(config) if signals is not None else uvicorn.Server(config)
    try:
        server.run(sockets=None if args.worker is None else [listening_socket(args.host, args.port)])
    finally:
        if signals is not None:
            signals.release()
    # A lifespan start-up failure (e.g. the outcome store cannot be opened) makes uvicorn return without serving.
    return 0 if server.started else 3


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be from 1 to 64, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main(signals=SIGNALS))
