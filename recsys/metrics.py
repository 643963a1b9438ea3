"""Prometheus metrics of a model server, in the app's own registry (so tests can build many apps).

The names are a contract (the Grafana dashboard and the alert rules query them):

| metric | type | labels | meaning |
|---|---|---|---|
| `model_requests_total` | counter | model, status | `/recommend` requests answered, by HTTP status ("200", "422") |
| `model_request_seconds` | histogram | model | time from request to the end of the answer, `/recommend` only |
| `model_info` | gauge (= 1) | model, version | the loaded artefact's version; absent until a model is loaded |

Only `/recommend` is counted: health checks and scrapes are not the model's traffic.

    >>> metrics = ModelMetrics("model_a")
    >>> metrics.set_version("model_a-7495265a0e89")
    >>> metrics.observe(200, 0.0004)
    >>> b'model_requests_total{model="model_a",status="200"} 1.0' in metrics.exposition()
    True
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: In-process top-k takes ~20 µs and an answer over loopback ~0.6 ms (README, Performance): buckets from 100 µs.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST
COUNTED_PREFIX = "/recommend/"


class ModelMetrics:
    """The three metrics of one model server."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "model_requests",
            "/recommend requests answered, by HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "model_request_seconds",
            "Time to answer a /recommend request, in seconds.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.info = Gauge(
            "model_info", "The loaded model's version (value 1).", ["model", "version"], registry=self.registry
        )

    def set_version(self, version: str) -> None:
        """Mark `version` as the loaded one (and no other)."""
        self.info.clear()
        self.info.labels(model=self.model, version=version).set(1)

    def observe(self, status: int, seconds: float) -> None:
        self.requests.labels(model=self.model, status=str(status)).inc()
        self.seconds.labels(model=self.model).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return bytes(generate_latest(self.registry))


class RecommendMetricsMiddleware:
    """Pure ASGI middleware: times every `/recommend/...` request and counts it by the status it answered."""

    def __init__(self, app: ASGIApp, metrics: ModelMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(COUNTED_PREFIX):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before it starts an answer

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.observe(status, time.perf_counter() - started)
