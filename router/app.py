"""The router's web layer: `create_app(settings)` wires routes to RouterService and errors to JSON; nothing else.

    app = create_app(RouterSettings(config_path=Path("router/experiment.yaml")))
    uvicorn.run(app, port=8080)

Endpoints: GET /recommend/{user_id}?k=10, POST /feedback, GET /health, GET /config, GET /metrics,
GET /results (the A/B report as JSON), GET /report (as HTML), POST /admin/reload and
POST /admin/resume/{variant} (bearer token; resume: a variant stopped by a guardrail gets its weight back).
`create_app` returns the fast path (router.fastpath) wrapped around the FastAPI app: `app.service` is the
RouterService (started by the lifespan), `app.api` the FastAPI app. Errors are router.errors' tree, answered by
router.responses in one place; route bodies parse input, call the service once and return its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as FastApiPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.contract import MAX_K
from recsys.params import TopK, UserId
from recsys.signals import ProcessSignals
from recsys.web import serve_docs_offline
from router.admin_auth import AdminGuard
from router.config import VARIANT_NAME_PATTERN, RouterSettings
from router.errors import (
    ConfigError,
    NoDataError,
    ReportError,
    RequestRefusedError,
    RouterError,
    StoreError,
)
from router.fastpath import RecommendFastPath
from router.responses import (
    ErrorAnswer,
    FeedbackAccepted,
    RecommendationAnswer,
    ReloadAnswer,
    ResumeAnswer,
    as_response,
    error_response,
    internal_error_response,
    recommend_response,
    redact_paths,
)
from router.service import FeedbackIn, RouterService
from router.store import OutcomeStore
from router.watch import ConfigWatcher
from router.workers import METRICS_INTERVAL, Worker

log = logging.getLogger(__name__)

Phase = Annotated[int | None, Query(ge=1, description="Which phase (default: the latest).")]
VariantName = Annotated[
    str,
    FastApiPath(pattern=VARIANT_NAME_PATTERN, description="A variant's name, as in the config.", examples=["model_b"]),
]

_FRIENDLY = {
    (
        "user_id",
        "string_pattern_mismatch",
    ): "user_id must be 1-64 letters, digits, '_', '.', '-' (not starting with '.')",
    ("k", "greater_than_equal"): f"k must be an integer from 1 to {MAX_K}",
    ("k", "less_than_equal"): f"k must be an integer from 1 to {MAX_K}",
    ("k", "int_parsing"): f"k must be an integer from 1 to {MAX_K}",
}


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type="application/json")


def create_app(
    settings: RouterSettings,
    *,
    signals: ProcessSignals | None = None,
    rng: Any = None,
    store: OutcomeStore | None = None,
    worker: Worker | None = None,
) -> RecommendFastPath:
    """The router app. With the process's `signals`, SIGHUP reloads the config like POST /admin/reload while the
    app serves (before and after, it is ignored and logged: recsys.signals).

    `store` replaces the outcome store STORE_URL names (tests pass one over a backend they control). `worker`
    is set in a child of `--workers N` (router/workers.py): /metrics then answers every sibling's samples too.
    A config watch interval (ROUTER_CONFIG_WATCH_INTERVAL) reloads when the file changes (router/watch.py).
    """
    service = RouterService(settings, rng=rng, store=store)
    background: set[asyncio.Task[None]] = set()
    loops: set[asyncio.Task[None]] = set()

    async def reload_on_change() -> None:
        try:
            result = await service.reload()
        except (ConfigError, StoreError):
            return  # logged and counted by the service; the old config keeps serving
        log.info("config file changed: reload applied", extra={"phase": result.phase, "new_phase": result.new_phase})

    async def reload_on_signal() -> None:
        try:
            result = await service.reload()
        except (ConfigError, StoreError):
            return  # logged and counted by the service; the old config keeps serving
        except Exception:  # the task's outermost handler: never "Task exception was never retrieved"
            service.metrics.reload("refused")
            log.exception("SIGHUP reload failed unexpectedly; the previous config keeps serving")
            return
        log.info("SIGHUP reload applied", extra={"phase": result.phase, "new_phase": result.new_phase})

    async def publish_metrics(worker: Worker) -> None:
        while True:
            await asyncio.to_thread(worker.write_metrics, service.metrics.render())
            await asyncio.sleep(METRICS_INTERVAL)

    def in_background(coroutine: Coroutine[Any, Any, None]) -> None:
        """A loop that lives as long as the app (the config watcher, the worker's metric snapshots)."""
        loops.add(asyncio.get_running_loop().create_task(coroutine))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        loop = asyncio.get_running_loop()
        if settings.config_watch_interval > 0:
            watcher = ConfigWatcher(settings.config_path, reload_on_change, interval=settings.config_watch_interval)
            in_background(watcher.run())
        if worker is not None:
            in_background(publish_metrics(worker))

        def on_sighup() -> None:
            task = loop.create_task(reload_on_signal())
            background.add(task)
            task.add_done_callback(background.discard)

        if signals is not None and signals.stop_requested is None:
            signals.on_hup(on_sighup, loop)
        try:
            yield
        finally:
            if signals is not None:
                signals.on_hup(None, state="stopping (the outcome store is being written)")
            for task in loops:
                task.cancel()
            if worker is not None:
                worker.metrics_file.unlink(missing_ok=True)
            await service.stop()

    app = FastAPI(
        title="A/B router",
        description="Assigns each user a recommender variant, proxies to it, and logs exposures and feedback.",
        lifespan=lifespan,
        redirect_slashes=False,  # a 307 to "/path" would be built from the client's Host header: 404 instead
    )
    serve_docs_offline(app)  # /docs and /redoc from the app's own assets (the fast path passes /docs-assets on)
    app.openapi = lambda: _openapi_with_report(app)  # type: ignore[method-assign]
    app.state.service = service  # inert until the lifespan starts it; routes added later can use it
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=lambda: service.live.config.max_body_bytes)
    _add_error_handlers(app, service)

    admin_guard = AdminGuard(settings.admin_token)
    app.state.admin_guard = admin_guard

    def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        admin_guard.check(request.client.host if request.client else "unknown", authorization)

    @app.get(
        "/recommend/{user_id}",
        summary="Recommendations for a user from the variant the experiment assigns",
        responses={
            200: {
                "model": RecommendationAnswer,
                "description": "The backend's answer plus `variant` and `request_id`; headers X-Variant, X-Request-ID",
            },
            422: {"model": ErrorAnswer, "description": "Invalid user id or k, or an unknown QA override"},
            502: {"model": ErrorAnswer, "description": "The variant's backend answered badly"},
            503: {"model": ErrorAnswer, "description": "The variant's backend is unreachable"},
            504: {"model": ErrorAnswer, "description": "The variant's backend did not answer in time"},
        },
    )
    async def recommend(request: Request, user_id: UserId, k: TopK = 10) -> Response:
        override = service.live.config.override
        forced = request.headers.get(override.header) if override.enabled else None
        answer = await service.recommend(user_id, k, forced)
        response = as_response(recommend_response(answer))
        if answer.shadow_jobs:  # starlette runs it after the body is sent (a coroutine: no thread)
            response.background = BackgroundTask(service.submit_shadows_later, answer.shadow_jobs)
        return response

    @app.post(
        "/feedback",
        status_code=202,
        summary="Report an outcome (click, watch, rating, ...) for an exposure",
        responses={
            202: {"model": FeedbackAccepted, "description": "Attributed to an exposure and queued for the store"},
            404: {"model": ErrorAnswer, "description": "No exposure has this request id (or the user none this phase)"},
            409: {"model": ErrorAnswer, "description": "The exposure was an error: nothing was shown"},
            422: {"model": ErrorAnswer, "description": "Invalid body, or the request id was served to another user"},
            503: {"model": ErrorAnswer, "description": "The outcome store is overloaded or failing: retry"},
        },
    )
    async def feedback(event: FeedbackIn) -> Response:
        accepted = await service.feedback(event)
        if accepted.attributed_by != "request_id":
            # No proof the caller saw the exposure (anyone can name a user): say nothing of it (docs/router.md).
            return json_response({"status": "accepted", "attributed_by": accepted.attributed_by}, 202)
        return json_response(
            {
                "status": "accepted",
                "request_id": accepted.request_id,
                "variant": accepted.variant,
                "phase": accepted.phase,
                "assignment": accepted.assignment,
                "attributed_by": accepted.attributed_by,
                "position": accepted.position,
            },
            202,
        )

    @app.get("/health", summary="Router liveness and each backend's state")
    async def health() -> Response:
        return json_response(service.health())

    @app.get("/config", summary="The live experiment config")
    async def config() -> Response:
        return json_response(public_config())

    def public_config() -> dict[str, Any]:
        """service.describe() with the config file named, not located (no answer reveals a server path)."""
        described = service.describe()
        if "config_path" in described:
            described["config_path"] = Path(str(described["config_path"])).name
        return described

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        own = service.metrics.render()
        body = own if worker is None else await asyncio.to_thread(worker.all_metrics, own)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    report_lock = asyncio.Lock()  # one report at a time: it is CPU work, and matplotlib's rc settings are global
    report_cache: dict[tuple[int | None, int, str], tuple[float, bytes, str]] = {}

    async def report_response(phase: int | None, form: str) -> Response:
        """The report over everything acknowledged so far: queued events are written first.

        Building costs seconds of CPU on a big store, so a built report is reused for REPORT_MAX_AGE
        seconds (per phase and form, and never across a phase change): a page reloaded in a loop cannot
        take the router's CPU from /recommend. Errors (no data yet) are never cached.
        """
        key = (phase, service.live.phase, form)
        async with report_lock:
            cached = report_cache.get(key)
            if cached is None or time.monotonic() - cached[0] > REPORT_MAX_AGE:
                await service.store.aflush(5.0)
                status, body, media_type = await asyncio.to_thread(_render_report, service.store, phase, form)
                if status != 200:
                    return Response(body, status_code=status, media_type=media_type)
                cached = report_cache[key] = (time.monotonic(), body, media_type)
        headers = {"Cache-Control": f"max-age={REPORT_MAX_AGE:.0f}"}
        return Response(cached[1], media_type=cached[2], headers=headers)

    report_errors: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorAnswer, "description": "No store yet, no such phase, or the phase has no exposures yet"},
        500: {"model": ErrorAnswer, "description": "The store holds something the report cannot read"},
        503: {"model": ErrorAnswer, "description": "The outcome store cannot be read"},
    }

    @app.get(
        "/results",
        summary="The A/B results of a phase (latest by default) as JSON",
        responses={
            200: {
                "description": "The report (docs/report.md explains every field); non-finite numbers are null",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Report"}}},
            },
            **report_errors,
        },
    )
    async def results(phase: Phase = None) -> Response:
        return await report_response(phase, "json")

    @app.get(
        "/report",
        summary="The A/B results report of a phase (latest by default) as a self-contained HTML page",
        responses={
            200: {"description": "The report page", "content": {"text/html": {"schema": {"type": "string"}}}},
            404: {
                "description": "No data yet: a page that says why and links to the phases that have data",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            500: report_errors[500],
            503: report_errors[503],
        },
    )
    async def report(phase: Phase = None) -> Response:
        return await report_response(phase, "html")

    admin_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorAnswer, "description": "No bearer token"},
        403: {"model": ErrorAnswer, "description": "A wrong token, or admin endpoints are disabled"},
    }

    @app.post(
        "/admin/reload",
        dependencies=[Depends(require_admin)],
        summary="Re-read and apply the config file",
        responses={
            200: {"model": ReloadAnswer, "description": "The new config is live"},
            **admin_errors,
            400: {"model": ErrorAnswer, "description": "The file is missing, unreadable or not a YAML mapping"},
            422: {"model": ErrorAnswer, "description": "The config is invalid (the old one keeps serving)"},
            503: {"model": ErrorAnswer, "description": "The new phase could not be recorded in the store"},
        },
    )
    async def reload() -> Response:
        result = await service.reload()
        return json_response(
            {
                "status": "reloaded",
                "phase": result.phase,
                "new_phase": result.new_phase,
                "previous_phase": result.previous_phase,
                "config": public_config(),
            }
        )

    @app.post(
        "/admin/resume/{variant}",
        dependencies=[Depends(require_admin)],
        summary="Give a variant stopped by a guardrail its configured weight back (a new phase)",
        responses={
            200: {"model": ResumeAnswer, "description": "The variant has its weight back, in a new phase"},
            **admin_errors,
            409: {"model": ErrorAnswer, "description": "The variant is not stopped"},
            422: {"model": ErrorAnswer, "description": "No such variant"},
        },
    )
    async def resume(variant: VariantName) -> Response:
        result = await service.resume(variant)
        return json_response(
            {
                "status": "resumed",
                "variant": variant,
                "phase": result.phase,
                "previous_phase": result.previous_phase,
                "config": public_config(),
            }
        )

    return RecommendFastPath(app, service)


#: Seconds a built report is served again before it is rebuilt.
REPORT_MAX_AGE = 5.0
HTML = "text/html; charset=utf-8"


def error_triple(exc: RouterError) -> tuple[int, bytes, str]:
    """(status, JSON body, media type) of an error, as router.responses builds it (paths redacted)."""
    status, _, body = error_response(exc)
    return status, body, "application/json"


def _openapi_with_report(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document plus the schema of /results' report (from its dataclasses, built on first use).

    Built lazily: the report's modules (pandas, matplotlib) stay unloaded until someone asks for the document.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    from router.report import report_json_schema

    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema = report_json_schema("#/components/schemas/{model}")
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["Report"] = schema
    app.openapi_schema = document
    return document


def _render_report(store: OutcomeStore, phase: int | None, form: str) -> tuple[int, bytes, str]:
    """Build and render the report in a worker thread: (status, body, media type).

    The report's libraries (pandas, statsmodels, matplotlib) load here on first use, not at start-up,
    so the router starts fast and stays small until someone asks for a report.
    """
    from router import report

    try:
        built = report.build_report(store, phase)
    except NoDataError as exc:
        if form != "html":
            return error_triple(exc)
        try:
            found = report.list_phases(store, phase)
        except (ReportError, StoreError):  # the page still says what is missing, without the links
            found = report.PhaseList(None, (), ())
        page = report.render_no_data_html(found, redact_paths(exc.detail))
        return exc.status_code, page.encode(), HTML
    except (ReportError, StoreError) as exc:
        return error_triple(exc)
    if form == "html":
        return 200, report.render_html(built, live=True).encode(), HTML
    return 200, orjson.dumps(report.report_to_json(built)), "application/json"


def _add_error_handlers(app: FastAPI, service: RouterService) -> None:
    """The one boundary where errors become JSON answers (router.responses builds them)."""

    def endpoint(request: Request) -> str:
        return request.url.path.split("/")[1] or "/"

    async def router_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RouterError)
        if isinstance(exc, RequestRefusedError | StoreError):
            service.metrics.rejected(endpoint(request), exc.status_code)
        return as_response(error_response(exc))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        messages = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            field = loc[-1] if loc else ""
            message = _FRIENDLY.get((field, error.get("type", "")), f"{'.'.join(loc[1:]) or field}: {error.get('msg')}")
            messages.append(message)
            problems.append({"loc": loc, "msg": error.get("msg"), "type": error.get("type")})
        service.metrics.rejected(endpoint(request), 422)
        return json_response({"detail": "; ".join(messages), "errors": problems}, 422)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return as_response(internal_error_response())

    app.add_exception_handler(RouterError, router_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)


class BodyLimit:
    """Refuse request bodies over the configured size with 413, before any handler reads them.

    GET and HEAD pass straight through (no body is read for them); other methods are buffered up to the limit.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                if declared > limit:
                    await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send
        )


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A `receive` that yields `messages`, then defers to `then` (for the disconnect that may follow)."""
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
