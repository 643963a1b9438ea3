"""Prometheus metrics for one router app, in its own registry (tests can build many apps in one process).

    metrics = Metrics(store.stats)
    metrics.observe_request("model_a", 200, 0.004)
    generate_latest(metrics.registry)        # the text GET /metrics serves

Store counters (written, lost, pending, errors) are read from the store at scrape time, so its writer
thread never touches Prometheus objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from router.shadow import ShadowStats

#: Feedback events with their own label value; any other event name is counted as "other".
KNOWN_EVENTS = frozenset({"click", "watch", "rating", "purchase", "like", "dislike", "skip", "add_to_list"})

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StoreCollector(Collector):
    """Reads the outcome store's counters when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        written = CounterMetricFamily(
            "router_events_written", "Events committed to the outcome store.", labels=["kind"]
        )
        lost = CounterMetricFamily(
            "router_events_lost", "Events that could not be stored (queue full or store failing).", labels=["kind"]
        )
        for kind, count in stats["written"].items():
            written.add_metric([kind], count)
        for kind, count in stats["lost"].items():
            lost.add_metric([kind], count)
        duplicates = CounterMetricFamily(
            "router_events_duplicate",
            "Acknowledged events the store skipped as repeats (feedback sent twice is stored once).",
            labels=["kind"],
        )
        for kind, count in stats["duplicates"].items():
            duplicates.add_metric([kind], count)
        yield duplicates
        errors = CounterMetricFamily(
            "router_store_errors", "Outcome store failures, by kind (locked, readonly, full, io, ...).", labels=["kind"]
        )
        for kind, count in stats["errors"].items():
            errors.add_metric([kind], count)
        yield written
        yield lost
        yield errors
        yield GaugeMetricFamily("router_events_pending", "Events queued for the outcome store.", value=stats["pending"])
        yield GaugeMetricFamily(
            "router_events_pending_limit", "Queue size at which feedback is refused.", value=stats["max_pending"]
        )


class ShadowCollector(Collector):
    """Reads each shadow dispatcher's counters when Prometheus scrapes (`ShadowPool.stats`, by shadow name).

    metrics.registry.register(ShadowCollector(pool.stats))
    """

    def __init__(self, stats: Callable[[], Mapping[str, ShadowStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        calls = CounterMetricFamily(
            "router_shadow_calls",
            "Shadow calls by shadow and outcome: completed, an error kind (timeout, unavailable, bad_response, "
            "internal), dropped (queue full or closed) or abandoned (at shutdown).",
            labels=["shadow", "outcome"],
        )
        submitted = CounterMetricFamily(
            "router_shadow_submitted", "Shadow calls submitted (accepted or dropped).", labels=["shadow"]
        )
        sink_errors = CounterMetricFamily(
            "router_shadow_record_errors", "Finished shadow calls the recorder failed on.", labels=["shadow"]
        )
        in_flight = GaugeMetricFamily("router_shadow_in_flight", "Shadow calls running now.", labels=["shadow"])
        queued = GaugeMetricFamily("router_shadow_queued", "Shadow calls waiting for a free slot.", labels=["shadow"])
        for name, shadow in stats.items():
            submitted.add_metric([name], shadow.submitted)
            calls.add_metric([name, "completed"], shadow.completed)
            for kind, count in shadow.failed.items():
                calls.add_metric([name, kind], count)
            calls.add_metric([name, "dropped"], shadow.dropped)
            calls.add_metric([name, "abandoned"], shadow.abandoned)
            sink_errors.add_metric([name], shadow.callback_errors)
            in_flight.add_metric([name], shadow.in_flight)
            queued.add_metric([name], shadow.queued)
        yield submitted
        yield calls
        yield sink_errors
        yield in_flight
        yield queued


class Metrics:
    """The router's metrics; label children are cached so the hot path does one dict lookup per metric."""

    def __init__(self, store_stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "router_requests",
            "Answered /recommend requests by serving variant and HTTP status.",
            ["variant", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "router_request_seconds",
            "Router-side time to answer /recommend, by serving variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._errors = Counter(
            "router_backend_errors",
            "Backend failures by variant and kind (timeout, unavailable, bad_response).",
            ["variant", "kind"],
            registry=self.registry,
        )
        self._fallbacks = Counter(
            "router_fallbacks",
            "Requests served by the fallback variant because the assigned one failed.",
            ["variant", "fallback"],
            registry=self.registry,
        )
        self._feedback = Counter(
            "router_feedback", "Accepted feedback by variant and event.", ["variant", "event"], registry=self.registry
        )
        self._rejected = Counter(
            "router_rejected",
            "Requests refused before routing (validation, auth, size, overload), by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self._reloads = Counter(
            "router_reloads", "Config reloads by result (applied, refused).", ["result"], registry=self.registry
        )
        self.phase = Gauge("router_phase", "The current phase number.", registry=self.registry)
        self._backend_up = Gauge(
            "router_backend_up",
            "1 if the variant's backend answered its last health check.",
            ["variant"],
            registry=self.registry,
        )
        self._guardrail_checks = Counter(
            "router_guardrail_checks",
            "Guardrail rounds by result (ok, no_data, failed, timeout, busy).",
            ["result"],
            registry=self.registry,
        )
        self._guardrail_state = Gauge(
            "router_guardrail_state",
            "Latest state of a treatment's guardrail: -1 healthy, 0 inconclusive, 1 harmful.",
            ["variant", "guardrail"],
            registry=self.registry,
        )
        self._guardrail_alerts = Counter(
            "router_guardrail_alerts",
            "Times an alert guardrail became harmful.",
            ["variant", "guardrail"],
            registry=self.registry,
        )
        self._guardrail_stops = Counter(
            "router_guardrail_stops",
            "Variants stopped by a guardrail (weight moved to the control).",
            ["variant", "guardrail"],
            registry=self.registry,
        )
        self._stopped = Gauge(
            "router_variant_stopped",
            "1 while the variant is stopped by a guardrail (until an admin resumes it).",
            ["variant"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store_stats))
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def observe_request(self, variant: str, status: int, seconds: float) -> None:
        """Count one answered /recommend and its latency."""
        key = (variant, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(variant, str(status))
        counter.inc()
        histogram = self._latency_children.get(variant)
        if histogram is None:
            histogram = self._latency_children[variant] = self._latency.labels(variant)
        histogram.observe(seconds)

    def backend_error(self, variant: str, kind: str) -> None:
        self._errors.labels(variant, kind).inc()

    def fallback(self, variant: str, fallback: str) -> None:
        self._fallbacks.labels(variant, fallback).inc()

    def feedback(self, variant: str, event: str) -> None:
        self._feedback.labels(variant, event if event in KNOWN_EVENTS else "other").inc()

    def rejected(self, endpoint: str, status: int) -> None:
        self._rejected.labels(endpoint, str(status)).inc()

    def reload(self, result: str) -> None:
        self._reloads.labels(result).inc()

    def backend_up(self, variant: str, up: bool) -> None:
        self._backend_up.labels(variant).set(1 if up else 0)

    def guardrail_check(self, result: str) -> None:
        self._guardrail_checks.labels(result).inc()

    def guardrail_state(self, variant: str, guardrail: str, code: int) -> None:
        self._guardrail_state.labels(variant, guardrail).set(code)

    def guardrail_alert(self, variant: str, guardrail: str) -> None:
        self._guardrail_alerts.labels(variant, guardrail).inc()

    def guardrail_stop(self, variant: str, guardrail: str) -> None:
        self._guardrail_stops.labels(variant, guardrail).inc()

    def variant_stopped(self, variant: str, stopped: bool) -> None:
        self._stopped.labels(variant).set(1 if stopped else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)
