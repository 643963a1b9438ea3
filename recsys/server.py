"""The REST contract both model servers share: one FastAPI app over any FactorModel.

    GET /recommend/{user_id}?k=10 -> {"user_id", "items", "scores", "model", "version", "cold_start"}
    GET /health                   -> {"status": "ok", "model", "version"}
    GET /info                     -> the artefact's metadata (algorithm, data, offline metrics, ...)
    GET /metrics                  -> Prometheus: model_requests_total, model_request_seconds, model_info
    GET /docs                     -> Swagger UI, served without a CDN (recsys.web)

`python -m model_a --port 8001` and `python -m model_b --port 8002` both end up in `run(trainer)`; so does
`python -m recsys.server --model model_a` (or `MODEL_NAME=model_a`), which is what the one model image runs.
Logs are JSON lines in a container and readable lines in a terminal (`recsys.logs`, LOG_FORMAT).
"""

# ruff: noqa: E402 - the signal handlers are installed before the other imports, on purpose (recsys.signals)
from __future__ import annotations

from recsys.signals import ProcessSignals

# `python -m recsys.server`: the handlers first, before the heavy imports below (see recsys.signals).
SIGNALS = ProcessSignals.install("model") if __name__ == "__main__" else None

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.logs import LogFormatError, configure_logging, round_floats
from recsys.metrics import CONTENT_TYPE, ModelMetrics, RecommendMetricsMiddleware
from recsys.params import TopK, UserId
from recsys.recommender import FactorModel
from recsys.training import DEFAULT_SEED, Trainer, load_or_train, trainer
from recsys.web import serve_docs_offline

log = logging.getLogger(__name__)


class ModelServerSettings(BaseSettings):
    """Where a model server finds its artefact and, if it must train one, on what data."""

    model_config = SettingsConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    models_dir: Path = Field(default=Path("models"), validation_alias="MODELS_DIR")
    data_spec: str | None = Field(default=None, validation_alias="ABTEST_DATA")
    seed: int = Field(default=DEFAULT_SEED, validation_alias="ABTEST_SEED")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[int] = Field(description="Item ids, best first; never an item the user already rated.")
    scores: list[float] = Field(description="The model's score for each item (popularity for cold start).")
    model: str
    version: str
    cold_start: bool = Field(description="True when the user is unknown and the list is the most popular items.")


class HealthResponse(BaseModel):
    status: str
    model: str
    version: str


def create_app(
    settings: ModelServerSettings, model: FactorModel | None = None, *, trainer: Trainer | None = None
) -> FastAPI:
    """The model server. Without `model`, loads the artefact at start-up (training one with `trainer` if none)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if model is not None:
            app.state.model = model
        else:
            if trainer is None:
                raise ValueError("create_app needs a model or a trainer")
            app.state.model = await asyncio.to_thread(
                load_or_train,
                trainer,
                settings.models_dir,
                data_spec=settings.data_spec,
                seed=settings.seed,
            )
        meta = app.state.model.metadata
        metrics.set_version(str(meta.get("version", "unknown")))
        log.info("%s %s loaded: %s", settings.name, meta.get("version"), round_floats(meta.get("metrics")))
        yield

    app = FastAPI(
        title=f"{settings.name} recommender",
        description="Top-k recommendations from a trained model. Same contract for every model server.",
        lifespan=lifespan,
    )
    serve_docs_offline(app)
    metrics = ModelMetrics(settings.name)
    app.state.metrics = metrics
    app.add_middleware(RecommendMetricsMiddleware, metrics=metrics)

    def loaded(request: Request) -> FactorModel:
        found: FactorModel | None = getattr(request.app.state, "model", None)
        if found is None:
            raise HTTPException(status_code=503, detail="model not loaded yet")
        return found

    @app.get("/recommend/{user_id}", response_model=RecommendResponse)
    async def recommend(request: Request, user_id: UserId, k: TopK = 10) -> RecommendResponse:
        served = loaded(request)
        result = served.recommend(user_id, k)
        return RecommendResponse(
            user_id=user_id,
            items=result.items,
            scores=result.scores,
            model=settings.name,
            version=served.metadata.get("version", "unknown"),
            cold_start=result.cold_start,
        )

    @app.get("/health", response_model=HealthResponse)
    async def health(request: Request) -> HealthResponse:
        served = loaded(request)
        return HealthResponse(status="ok", model=settings.name, version=served.metadata.get("version", "unknown"))

    @app.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        return loaded(request).metadata

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app


def run(trainer: Trainer, argv: Sequence[str] | None = None, signals: ProcessSignals | None = None) -> None:
    """Command line of `python -m model_a|model_b`: serve the model on one port with uvicorn.

    `signals`: the process's handlers, installed by the entry point before its heavy imports (recsys.signals);
    SIGHUP is ignored and logged (nothing to reload), SIGTERM and SIGINT stop it gracefully, at any moment.
    """
    name = trainer.NAME
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=f"Serve {name} over HTTP.")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in a container)")
    parser.add_argument("--models-dir", type=Path, help="artefact folder (default $MODELS_DIR or ./models)")
    parser.add_argument("--data", help="data spec if a model must be trained (default $ABTEST_DATA or synthetic)")
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"name": name}
    if args.models_dir is not None:
        overrides["models_dir"] = args.models_dir
    if args.data is not None:
        overrides["data_spec"] = args.data
    settings = ModelServerSettings(**overrides)
    try:
        configure_logging("info", service=name)
    except LogFormatError as exc:
        raise SystemExit(f"python -m {name}: {exc}") from exc
    if signals is None:
        signals = ProcessSignals.install(name)
    signals.on_hup(None, state="a model server has nothing to reload")
    if signals.stop_requested is not None:
        log.warning("%s not started: asked to stop while starting", name)
        return
    config = uvicorn.Config(
        create_app(settings, trainer=trainer),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=args.access_log,
        log_level="info",
        log_config=None,  # uvicorn's records go through configure_logging's handler, in the same format
        timeout_graceful_shutdown=5,
    )
    try:
        signals.server(config).run()
    finally:
        signals.release()


def main(argv: Sequence[str] | None = None, signals: ProcessSignals | None = None) -> None:
    """`python -m recsys.server [--model NAME] ...`: serve the model package registered as NAME ($MODEL_NAME)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME"))
    known, rest = parser.parse_known_args(argv)
    if not known.model:
        raise SystemExit("python -m recsys.server: name the model with --model NAME or MODEL_NAME")
    try:
        found = trainer(known.model)
    except ValueError as exc:
        raise SystemExit(f"python -m recsys.server: {exc}") from exc
    run(found, rest, signals)


if __name__ == "__main__":
    main(signals=SIGNALS)
