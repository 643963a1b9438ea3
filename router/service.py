"""The router's core: the live experiment, and what happens to a recommendation request and a feedback event.

    service = RouterService(settings)
    await service.start()                                   # config, outcome store, phase, backend client
    answer = await service.recommend("42", 10, forced=None) # assign -> forward -> record the exposure
    accepted = await service.feedback(FeedbackIn(request_id=answer.request_id, user_id="42", item_id=50, event="click"))
    await service.reload()                                  # re-read the YAML; a new phase if users can move
    await service.stop()                                    # closes the shadows, flushes the outcome store

A served answer carries its shadow jobs (`Answer.shadow_jobs`, docs/shadow.md): the web layer submits them with
`submit_shadows` once the live body is sent, so a shadow call never delays a user.

A recommendation goes through three steps, each its own method: `_assign` (override or strategy: the variant
and its propensity), `_forward` (the backend call, with the fallback; or, when the strategy's spec has a fan-out
such as interleave, every backend at once and one merged list), `_record` (the exposure, metrics, log). Errors
are router.errors' tree; the web layer turns them into answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from recsys.contract import USER_ID_PATTERN
from router.config import (
    ExperimentConfig,
    RouterSettings,
    Variant,
    effective_weights,
    load_config,
    phase_design,
    phase_key,
    recorded_stops,
)
from router.configfile import ConfigFileReader
from router.epochs import EpochKeeper
from router.errors import (
    AttributionError,
    BackendError,
    ConfigError,
    ErrorExposureError,
    ExposurePendingError,
    NoDataError,
    NotStoppedError,
    RecommendationFailedError,
    StoreError,
    StoreOverloadedError,
    UnknownOverrideError,
)
from router.guardrails import GuardrailWatcher, Harm
from router.interleaving import NoListError
from router.metrics import Metrics, ShadowCollector
from router.monitor import BackendMonitor
from router.proxy import BackendClient, Recommendation, open_client
from router.request_ids import REQUEST_ID_PATTERN, SECRET_NAME, RequestIds, new_secret
from router.shadow import ShadowJob, ShadowPool, ShadowResult, ShadowStats, backend_call
from router.store import Exposure, Feedback, OutcomeStore, ShadowCall, backend_for
from router.strategies import EpochSource, FanOut, Outcome, SplitInputs, Strategy, build_strategy, fan_out_of

log = logging.getLogger(__name__)

#: Feedback event names: short lowercase identifiers ("click", "watch", "rating", ...).
EVENT_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

#: Seconds `stop` gives shadow calls still running to finish before they are abandoned (and counted).
SHADOW_CLOSE_GRACE = 1.0


class FeedbackIn(BaseModel):
    """The body of POST /feedback."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(
        default=None, pattern=REQUEST_ID_PATTERN, description="The `request_id` of the recommendation acted on."
    )
    user_id: str = Field(pattern=USER_ID_PATTERN, examples=["42"])
    item_id: StrictInt = Field(
        ge=0, le=2**63 - 1, description="The item acted on (an id from the recommendation's `items`)."
    )
    event: str = Field(pattern=EVENT_PATTERN, examples=["click"], description="click, watch, rating, ...")
    value: float | None = Field(default=None, allow_inf_nan=False, description="e.g. the rating, or seconds watched")


@dataclass(frozen=True, slots=True)
class Live:
    """One consistent view of the running experiment; replaced whole on reload, read once per request."""

    config: ExperimentConfig
    strategy: Strategy
    phase: int
    key: str
    variants: dict[str, Variant]
    stops: dict[str, dict[str, Any]]
    """Variants stopped by a guardrail -> the stop's record; their units are served by the control."""
    fan_out: FanOut | None = None  # set when the strategy asks every backend and merges (interleave)


@dataclass(frozen=True, slots=True)
class Choice:
    """The assign step's result: who should serve, how that was decided, with what probability."""

    variant: str
    assignment: str  # 'strategy' | 'override'
    propensity: float | None  # None for an override: it was not randomised
    epoch: int | None = None  # adaptive strategies: the weight epoch whose weights decided


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The forward step's result: who served which answer, or why nobody could."""

    variant: str
    assignment: str  # 'strategy' | 'override' | 'fallback'
    recommendation: Recommendation | None
    failure: BackendError | None = None  # the assigned variant's failure (also set after a fallback)
    fallback_failure: BackendError | None = None
    # A fan-out (interleave): who placed each item (() when nothing came back), the variant whose backend failed
    # in a degraded interleave, and the other backend's failure when both failed.
    teams: tuple[str, ...] | None = None
    failed_variant: str | None = None
    also_failed: BackendError | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """A served recommendation: the backend's body with `variant` and `request_id` added."""

    body: bytes
    variant: str
    request_id: str
    shadow_jobs: tuple[ShadowJob, ...] = ()  # for the web layer to submit once the body is sent (docs/shadow.md)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    phase: int
    new_phase: bool
    previous_phase: int
    config: ExperimentConfig


class RouterService:
    """Holds the live config, the backend client, the outcome store and the monitor of one router process."""

    def __init__(
        self, settings: RouterSettings, *, rng: random.Random | None = None, store: OutcomeStore | None = None
    ) -> None:
        self.settings = settings
        self.store = store or OutcomeStore(backend_for(settings.outcome_store_url))
        self.metrics = Metrics(self.store.stats)
        self.shadows: ShadowPool | None = None  # start() opens it over the backend client
        self.metrics.registry.register(ShadowCollector(self.shadow_stats))
        self._rng = rng
        self._live: Live | None = None
        self._client: BackendClient | None = None
        self._monitor: BackendMonitor | None = None
        self._watcher: GuardrailWatcher | None = None
        self.epochs = EpochKeeper(self.store, identity=f"{socket.gethostname()}:{os.getpid()}")
        self._reload_lock = asyncio.Lock()
        self._config_reader = ConfigFileReader()  # bounded reads; remembers one that hung (router.configfile)
        self._ids: RequestIds | None = None  # start() reads the secret (the setting, else the store's)
        self._last_error_log: dict[tuple[str, str], float] = {}
        self._suppressed_errors: dict[tuple[str, str], int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and validate the config, open the store, enter the phase, open the client, start the monitor.

        Raises ConfigError or StoreError: the router must not serve with a bad config or no store.
        """
        config = await asyncio.to_thread(load_config, self.settings, reader=self._config_reader)
        await asyncio.to_thread(self.store.open)
        try:
            self._ids = RequestIds(await asyncio.to_thread(self._request_id_secret))
            stops = _still_stoppable(config, await asyncio.to_thread(self._persisted_stops, config))
            phase, is_new, key = await self._enter(config, stops)
            source = await self._epoch_source(config, phase, stops)
        except BaseException:
            await asyncio.to_thread(self.store.close)
            raise
        self._set_live(self._make_live(config, phase, key, stops, source))
        self._client = open_client(config.backend_client, config.timeouts)
        self.shadows = ShadowPool(backend_call(self._client), self._record_shadow)
        await self.shadows.configure(config.shadow)
        self._monitor = BackendMonitor(
            self.client, self._current, self.store, self.metrics, interval=self.settings.health_interval
        )
        self._monitor.start()
        self._watcher = GuardrailWatcher(
            self.store,
            self._current,
            self.stop_variant,
            self.metrics,
            interval=self.settings.guardrail_interval,
            timeout=self.settings.guardrail_timeout,
        )
        self._watcher.start()
        log.info(
            "router started",
            extra={
                "experiment": config.experiment,
                "phase": phase,
                "new_phase": is_new,
                "strategy": config.strategy,
                "variants": {name: share for name, share in config.weights},
                "backend_client": config.backend_client,
                "store": self.store.description,
                "shadows": {shadow.name: shadow.fraction for shadow in config.shadow},
            },
        )

    async def stop(self) -> None:
        """Stop the watchers, close the shadows (within a grace), close the client, then write every queued event
        and close the store."""
        if self._watcher is not None:
            await self._watcher.stop()
        await self.epochs.stop()
        if self._monitor is not None:
            await self._monitor.stop()
        if self.shadows is not None:
            finals = await self.shadows.aclose(SHADOW_CLOSE_GRACE)
            _log_closed_shadows("router stopping", finals)
        if self._client is not None:
            await self._client.aclose()
        log.info("router stopping: writing the queued events", extra={"pending": self.store.pending})
        await asyncio.to_thread(self.store.close)

    @property
    def live(self) -> Live:
        if self._live is None:
            raise RuntimeError("RouterService.start() has not run")
        return self._live

    def client(self) -> BackendClient:
        if self._client is None:
            raise RuntimeError("RouterService.start() has not run")
        return self._client

    def _current(self) -> tuple[ExperimentConfig, int]:
        live = self.live
        return live.config, live.phase

    def _request_id_secret(self) -> bytes:
        """ROUTER_REQUEST_ID_SECRET, else the store's own (generated once, shared by its replicas). Blocking."""
        if self.settings.request_id_secret is not None:
            return self.settings.request_id_secret.get_secret_value().encode()
        return self.store.shared_secret(SECRET_NAME, new_secret()).encode()

    @property
    def request_ids(self) -> RequestIds:
        if self._ids is None:
            raise RuntimeError("RouterService.start() has not run")
        return self._ids

    def _make_live(
        self,
        config: ExperimentConfig,
        phase: int,
        key: str,
        stops: dict[str, dict[str, Any]] | None = None,
        epochs: EpochSource | None = None,
    ) -> Live:
        stops = stops or {}
        moved = dict.fromkeys(stops, config.control)
        strategy = build_strategy(config.strategy, SplitInputs(config.weights, config.salt, self._rng, moved, epochs))
        return Live(
            config, strategy, phase, key, {v.name: v for v in config.variants}, stops, fan_out_of(config.strategy)
        )

    def _set_live(self, live: Live) -> None:
        previous = self._live
        self._live = live
        self.metrics.phase.set(live.phase)
        for name in live.variants:
            self.metrics.variant_stopped(name, name in live.stops)
        if previous is not None:
            for name in set(previous.variants) - set(live.variants):
                self.metrics.variant_stopped(name, False)

    async def _enter(self, config: ExperimentConfig, stops: dict[str, dict[str, Any]]) -> tuple[int, bool, str]:
        """Continue or start the phase of `config` with `stops` in effect: (phase, is_new, key)."""
        key = phase_key(config, stops)
        design = phase_design(config, stops)
        current = None if self._live is None else self._live.phase
        phase, is_new = await asyncio.to_thread(
            lambda: self.store.start_phase(config.experiment, key, design, current=current)
        )
        return phase, is_new, key

    async def _epoch_source(
        self, config: ExperimentConfig, phase: int, stops: dict[str, dict[str, Any]]
    ) -> EpochSource | None:
        """An adaptive phase's current weight epoch, polled from the store from now on; None for other strategies.

        Raises StoreError when the store cannot give the phase's epoch (the router must not serve it blind).
        """
        if not config.adaptive:
            await self.epochs.leave()
            return None
        return await self.epochs.enter(config, phase, dict.fromkeys(stops, config.control))

    def _persisted_stops(self, config: ExperimentConfig) -> dict[str, dict[str, Any]]:
        """The stops recorded by the store's latest phase of this experiment: a restart keeps them (blocking)."""
        try:
            with self.store.snapshot() as snapshot:
                latest = snapshot.phase(None)
        except NoDataError:
            return {}
        if latest.experiment != config.experiment:
            return {}
        return {
            str(stop["variant"]): {k: v for k, v in stop.items() if k != "variant"}
            for stop in recorded_stops(latest.config)
        }

    # -- guardrails --------------------------------------------------------------------------------

    async def stop_variant(self, harm: Harm) -> int | None:
        """Move `harm.variant`'s weight to the control as a new phase (the watcher calls it); the new phase.

        None when there is nothing to do: the harm was judged on a phase that is no longer live, the variant
        is stopped already, or it is the control. Raises StoreError when the phase cannot be recorded.
        """
        async with self._reload_lock:
            live = self.live
            config = live.config
            if harm.phase != live.phase or harm.variant in live.stops or harm.variant not in live.variants:
                return None
            if harm.variant == config.control:
                return None
            stops = {**live.stops, harm.variant: harm.record(config.control)}
            phase, _, key = await self._enter(config, stops)
            source = await self._epoch_source(config, phase, stops)
            self._set_live(self._make_live(config, phase, key, stops, source))
            self.metrics.guardrail_stop(harm.variant, harm.guardrail)
        log.error(
            "variant stopped by guardrail",
            extra={
                "variant": harm.variant,
                "guardrail": harm.guardrail,
                "detail": harm.detail,
                "moved_to": config.control,
                "previous_phase": harm.phase,
                "phase": phase,
            },
        )
        return phase

    async def resume(self, variant: str) -> ReloadResult:
        """Give a stopped variant its configured weight back, as a new phase. Raises NotStoppedError."""
        async with self._reload_lock:
            live = self.live
            if variant not in live.stops:
                stopped = ", ".join(live.stops) or "none"
                raise NotStoppedError(f"variant {variant!r} is not stopped by a guardrail (stopped: {stopped})")
            stops = {name: record for name, record in live.stops.items() if name != variant}
            phase, is_new, key = await self._enter(live.config, stops)
            source = await self._epoch_source(live.config, phase, stops)
            self._set_live(self._make_live(live.config, phase, key, stops, source))
        log.warning(
            "variant resumed by an admin", extra={"variant": variant, "phase": phase, "previous_phase": live.phase}
        )
        return ReloadResult(phase, is_new, live.phase, live.config)

    # -- recommendation ----------------------------------------------------------------------------

    async def recommend(self, user_id: str, k: int, forced: str | None = None) -> Answer:
        """Assign `user_id`, forward to the variant's backend, record the exposure (errors included).

        `forced` is the QA override header's value; it is ignored unless the config enables the override.
        Raises UnknownOverrideError for a bad override, RecommendationFailedError (from the backend's error,
        with the exposure's request id) when no variant could answer.
        """
        started = time.perf_counter()
        ts = time.time()
        live = self.live
        choice = self._assign(live, user_id, forced)
        request_id = self.request_ids.issue(user_id)
        forwarded = await self._forward(live, choice, user_id, k, request_id)
        self._record(live, choice, forwarded, ts=ts, started=started, request_id=request_id, user_id=user_id, k=k)
        if forwarded.recommendation is None:
            assert forwarded.failure is not None  # no answer means the assigned variant failed
            raise RecommendationFailedError(
                forwarded.failure,
                request_id,
                fallback_failure=forwarded.fallback_failure,
                also_failed=forwarded.also_failed,
                served_as=forwarded.variant if forwarded.teams is not None else None,
            ) from forwarded.failure
        jobs = (
            self.shadows.jobs_for(
                request_id=request_id, phase=live.phase, user_id=user_id, k=k, variant=forwarded.variant
            )
            if self.shadows is not None and self.shadows.shadows
            else ()
        )
        return Answer(
            annotate(forwarded.recommendation.body, forwarded.variant, request_id), forwarded.variant, request_id, jobs
        )

    def _assign(self, live: Live, user_id: str, forced: str | None) -> Choice:
        """The override when enabled and given, else the strategy's choice with its propensity."""
        config = live.config
        if forced is not None and config.override.enabled:
            if forced not in live.variants:
                raise UnknownOverrideError(
                    f"{config.override.header}: {forced!r} is not a variant of {config.experiment} "
                    f"(variants: {', '.join(live.variants)})"
                )
            return Choice(forced, "override", None)
        assignment = live.strategy.assign(user_id)
        return Choice(assignment.variant, "strategy", assignment.propensity, assignment.epoch)

    async def _forward(self, live: Live, choice: Choice, user_id: str, k: int, request_id: str) -> Forwarded:
        """Ask the chosen variant's backend; on failure, the fallback variant when the config names one.

        A strategy with a fan-out (interleave) asks every backend instead (`_fan_out`); a QA override still asks
        the one variant it names. Never raises for a backend failure: the result says who failed, so the
        exposure is recorded either way.
        """
        if live.fan_out is not None and choice.assignment == "strategy":
            return await self._fan_out(live, live.fan_out, user_id, k, request_id)
        client = self.client()
        try:
            recommendation = await client.recommend(live.variants[choice.variant], user_id, k)
        except BackendError as failure:
            self.metrics.backend_error(choice.variant, failure.kind)
            config = live.config
            fallback = config.fallback_variant if config.on_error == "fallback" else None
            if fallback is None or fallback == choice.variant:
                return Forwarded(choice.variant, choice.assignment, None, failure)
            try:
                recommendation = await client.recommend(live.variants[fallback], user_id, k)
            except BackendError as second:
                self.metrics.backend_error(fallback, second.kind)
                return Forwarded(choice.variant, choice.assignment, None, failure, second)
            self.metrics.fallback(choice.variant, fallback)
            return Forwarded(fallback, "fallback", recommendation, failure)
        return Forwarded(choice.variant, choice.assignment, recommendation)

    async def _fan_out(self, live: Live, fan_out: FanOut, user_id: str, k: int, request_id: str) -> Forwarded:
        """Ask every variant's backend at once (each with the configured timeouts) and merge their lists.

        Latency is the slower backend's, not the sum. One backend failing gives a degraded list (the other's
        alone, `failed_variant` set); all failing gives no answer (the first failure, in config order, is the
        error's status). The merge is seeded by the request id, so the list can be rebuilt from the log.
        """
        client = self.client()
        variants = tuple(live.variants.values())
        answers = await asyncio.gather(*(_ask(client, variant, user_id, k) for variant in variants))
        failures = [answer for answer in answers if isinstance(answer, BackendError)]
        for failure in failures:
            self.metrics.backend_error(failure.variant, failure.kind)
        ranked = {
            variant.name: answer.items if isinstance(answer, Recommendation) else None
            for variant, answer in zip(variants, answers, strict=True)
        }
        try:
            merged = fan_out.merge(ranked, k, request_id)
        except NoListError:
            also = failures[1] if len(failures) > 1 else None
            return Forwarded(fan_out.label, "strategy", None, failures[0], teams=(), also_failed=also)
        if merged.failed is not None:
            self.metrics.fallback(merged.failed, _survivor(merged.variants, merged.failed))
        items = list(merged.items)
        return Forwarded(
            fan_out.label,
            "strategy",
            Recommendation(orjson.dumps({"items": items}), items),
            failures[0] if failures else None,
            teams=merged.teams,
            failed_variant=merged.failed,
        )

    def _record(
        self,
        live: Live,
        choice: Choice,
        forwarded: Forwarded,
        *,
        ts: float,
        started: float,
        request_id: str,
        user_id: str,
        k: int,
    ) -> None:
        """Write the exposure (errors included), count it, and log a failure (rate-limited)."""
        elapsed = time.perf_counter() - started
        failed = forwarded.recommendation is None
        failure = forwarded.failure
        status = failure.status_code if failed and failure is not None else 200
        self.store.record_exposure(
            Exposure(
                ts=ts,
                request_id=request_id,
                experiment=live.config.experiment,
                phase=live.phase,
                user_id=user_id,
                variant=forwarded.variant,
                assigned_variant=choice.variant,
                strategy=live.config.strategy,
                assignment=forwarded.assignment,
                propensity=choice.propensity,
                status=status,
                latency_ms=elapsed * 1000.0,
                k=k,
                items=() if forwarded.recommendation is None else tuple(forwarded.recommendation.items),
                error=failure.kind if failed and failure is not None else None,
                teams=forwarded.teams,
                failed_variant=forwarded.failed_variant,
                epoch=choice.epoch,
            )
        )
        self.metrics.observe_request(forwarded.variant, status, elapsed)
        if failure is not None:
            served_by = forwarded.variant
            if forwarded.failed_variant is not None:  # a degraded interleave: the other variant's list was served
                served_by = _survivor(tuple(live.variants), forwarded.failed_variant)
            self._log_backend_error(failure, request_id, fallback=None if failed else served_by)
        if forwarded.also_failed is not None:
            self._log_backend_error(forwarded.also_failed, request_id)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "recommend",
                extra={
                    "request_id": request_id,
                    "user_id": user_id,
                    "variant": forwarded.variant,
                    "assignment": forwarded.assignment,
                },
            )

    def _log_backend_error(self, exc: BackendError, request_id: str, *, fallback: str | None = None) -> None:
        """A warning per failure, at most one a second per (variant, kind); the rest are counted in the next."""
        key = (exc.variant, exc.kind)
        now = time.monotonic()
        if now - self._last_error_log.get(key, 0.0) < 1.0:
            self._suppressed_errors[key] = self._suppressed_errors.get(key, 0) + 1
            return
        self._last_error_log[key] = now
        suppressed = self._suppressed_errors.pop(key, 0)
        log.warning(
            "backend failed, served by the fallback" if fallback else "backend failed",
            extra={
                "request_id": request_id,
                "variant": exc.variant,
                "kind": exc.kind,
                "status": exc.status_code,
                "error": exc.detail,
                "fallback": fallback,
                "similar_errors_not_logged": suppressed,
            },
        )

    # -- shadow traffic ------------------------------------------------------------------------------

    def submit_shadows(self, jobs: tuple[ShadowJob, ...]) -> int:
        """Hand an answer's shadow jobs to their dispatchers; call it after the live body is sent. Never blocks."""
        return self.shadows.submit(jobs) if self.shadows is not None else 0

    async def submit_shadows_later(self, jobs: tuple[ShadowJob, ...]) -> int:
        """`submit_shadows` as a coroutine, for a starlette BackgroundTask (it runs plain functions in a thread)."""
        return self.submit_shadows(jobs)

    def shadow_stats(self) -> dict[str, ShadowStats]:
        """Each configured shadow's counters (none before start or after stop)."""
        return self.shadows.stats() if self.shadows is not None else {}

    def _record_shadow(self, result: ShadowResult) -> None:
        """The dispatchers' sink: one `shadow_calls` row per finished call (refused first when the queue is full)."""
        job = result.job
        self.store.record_shadow_call(
            ShadowCall(
                ts=result.ts,
                request_id=job.request_id,
                phase=job.phase,
                user_id=job.user_id,
                variant=job.variant,
                shadow=job.shadow.name,
                shadow_url=job.shadow.base_url,
                k=job.k,
                status=result.status,
                latency_ms=result.latency_ms,
                wait_ms=result.wait_ms,
                items=result.items,
                error=result.error,
            )
        )

    # -- feedback ----------------------------------------------------------------------------------

    async def feedback(self, event: FeedbackIn) -> Feedback:
        """Attribute a feedback event to its exposure (by request id, else the user's latest to arrive).

        A request id is verified first (router/request_ids.py): one that was not issued to this user, by any
        replica, is refused exactly like an unknown one, without a lookup. A genuine one is looked up in this
        process's index, then in the store, waiting up to `attribution_wait` seconds for the replica that
        served it to write it (feedback may reach any replica before the exposure's batch is flushed).

        Raises AttributionError (or a subclass) when it cannot, StoreOverloadedError when it cannot be queued,
        ExposurePendingError when a genuine exposure is still not in the store, StoreError when it cannot read.
        """
        live = self.live
        if not self.store.accepting:
            # Refuse before looking up: under overload the exposure itself may not have been recorded.
            raise StoreOverloadedError("outcome store overloaded, retry")
        if event.request_id is not None:
            unknown = AttributionError(f"unknown request_id {event.request_id!r} for user {event.user_id!r}")
            if not self.request_ids.verify(event.request_id, event.user_id):
                raise unknown
            exposure = await self.store.find_exposure(event.request_id, within=self.settings.attribution_wait)
            if exposure is None:
                raise ExposurePendingError(
                    f"request_id {event.request_id!r} is genuine but its exposure is not in the store yet "
                    f"(after {self.settings.attribution_wait:g}s): retry"
                )
            if exposure.user_id != event.user_id:  # only with a leaked secret: still the unknown answer
                raise unknown
            if exposure.status != 200:
                raise ErrorExposureError(
                    f"request_id {event.request_id!r} was answered with an error ({exposure.error}): "
                    "no items were shown, so there is nothing to give feedback on"
                )
            attributed_by = "request_id"
        else:
            found = await self.store.latest_exposure(event.user_id)
            if found is None:
                raise AttributionError(
                    f"no exposure for user {event.user_id!r}: send the request_id of the recommendation, "
                    "or request /recommend first"
                )
            exposure = found
            attributed_by = "user"
        try:
            position: int | None = list(exposure.items).index(event.item_id)
        except ValueError:
            position = None
        # Credit: the serving variant, or on an interleaved exposure the team that placed the item there.
        credited = exposure.team_of(position)
        accepted = Feedback(
            ts=time.time(),
            request_id=exposure.request_id,
            experiment=exposure.experiment,
            phase=exposure.phase,
            user_id=event.user_id,
            variant=credited,
            assignment=exposure.assignment,
            item_id=event.item_id,
            position=position,
            event=event.event,
            value=event.value,
            attributed_by=attributed_by,
        )
        self.store.record_feedback(accepted)
        self.metrics.feedback(credited, event.event)
        if exposure.phase == live.phase and exposure.assignment == "strategy":
            live.strategy.observe(Outcome(credited, event.user_id, event.event, event.value))
        return accepted

    # -- operations --------------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Re-read and validate the YAML; apply it, starting a new phase if it can move users.

        Raises ConfigError (the old config keeps serving) or StoreError (the phase could not be recorded).
        """
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.settings, reader=self._config_reader)
                previous = self.live
                if config.backend_client != previous.config.backend_client:
                    raise ConfigError(
                        f"backend_client: cannot change from {previous.config.backend_client!r} to "
                        f"{config.backend_client!r} while running (got {config.backend_client!r}); restart the router"
                    )
                stops = _still_stoppable(config, previous.stops)  # a stop stays until an admin resumes it
                phase, is_new, key = await self._enter(config, stops)
                source = await self._epoch_source(config, phase, stops)
            except (ConfigError, StoreError) as exc:
                self.metrics.reload("refused")
                log.error("config reload refused; the previous config keeps serving", extra={"error": str(exc)})
                raise
            self._set_live(self._make_live(config, phase, key, stops, source))
            self.client().configure(config.timeouts)
            if self.shadows is not None:
                _log_closed_shadows("shadow removed by a reload", await self.shadows.configure(config.shadow))
            self.metrics.phase.set(phase)
            self.metrics.reload("applied")
            if self._monitor is not None:
                self._monitor.poke()
            log.info(
                "config reloaded",
                extra={
                    "phase": phase,
                    "new_phase": is_new,
                    "previous_phase": previous.phase,
                    "strategy": config.strategy,
                    "shadows": {shadow.name: shadow.fraction for shadow in config.shadow},
                },
            )
            return ReloadResult(phase, is_new, previous.phase, config)

    def health(self) -> dict[str, Any]:
        """Router state for GET /health: 'ok' when every backend answered its last check, else 'degraded'."""
        live = self.live
        states = self._monitor.states() if self._monitor is not None else {}
        stats = self.store.stats()
        bandit = self.epochs.health()
        stale = bandit is not None and bandit["status"] == "stale"
        healthy = all(s.status == "up" for s in states.values()) and not stale
        return {
            "status": "ok" if healthy else "degraded",
            "experiment": live.config.experiment,
            "phase": live.phase,
            "strategy": live.config.strategy,
            "backends": {name: state.as_dict() for name, state in states.items()},
            "store": {
                "written": stats["written"],
                "pending": stats["pending"],
                "max_pending": stats["max_pending"],
                "lost": stats["lost"],
                "duplicates": stats["duplicates"],
                "errors": stats["errors"],
                "failing": stats["failing"],  # {"kind", "error"} of the last write while it keeps failing, else None
            },
            "shadows": {name: _shadow_health(shadow) for name, shadow in self.shadow_stats().items()},
            "bandit": bandit,  # adaptive strategies: the epoch served, its weights, "current" or "stale"
        }

    def describe(self) -> dict[str, Any]:
        """The live config for GET /config (no secrets: the admin token is not part of it)."""
        live = self.live
        return {
            **live.config.model_dump(mode="json"),
            "weights": dict(live.config.weights),
            "weights_in_effect": {name: share for name, share in effective_weights(live.config, live.stops)},
            "stopped": {name: dict(record) for name, record in live.stops.items()},
            "phase": live.phase,
            "phase_key": live.key,
            "config_path": str(self.settings.config_path),
        }


async def _ask(client: BackendClient, variant: Variant, user_id: str, k: int) -> Recommendation | BackendError:
    """One backend's answer, or its failure as a value (so a fan-out's other call is never cancelled by it)."""
    try:
        return await client.recommend(variant, user_id, k)
    except BackendError as failure:
        return failure


def _survivor(variants: tuple[str, ...], failed: str) -> str:
    """The variant whose list a degraded interleave served: the one that did not fail."""
    return next(name for name in variants if name != failed)


def _still_stoppable(config: ExperimentConfig, stops: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stops that still apply to `config`: a variant removed from it, or now its control, is no longer stopped."""
    names = {v.name for v in config.variants}
    return {name: record for name, record in stops.items() if name in names and name != config.control}


def _shadow_health(stats: ShadowStats) -> dict[str, Any]:
    """A shadow's counters for GET /health (`submitted` = the sum of every other count)."""
    return {
        "submitted": stats.submitted,
        "completed": stats.completed,
        "failed": dict(stats.failed),
        "dropped": stats.dropped,
        "abandoned": stats.abandoned,
        "in_flight": stats.in_flight,
        "queued": stats.queued,
        "record_errors": stats.callback_errors,
        "concurrency": stats.concurrency,
        "queue_size": stats.queue_size,
    }


def _log_closed_shadows(why: str, finals: dict[str, ShadowStats]) -> None:
    """One line per closed shadow with its final counters (a removed shadow's counters leave /metrics with it)."""
    for name, final in finals.items():
        log.info(
            why,
            extra={"shadow": name, **{key: value for key, value in _shadow_health(final).items() if key != "queued"}},
        )


def annotate(body: bytes, variant: str, request_id: str) -> bytes:
    """Add `variant` and `request_id` to a backend's JSON object, splicing bytes instead of re-encoding.

    >>> annotate(b'{"items": [1]}', "model_a", "abc")
    b'{"items": [1],"variant":"model_a","request_id":"abc"}'

    Variant names and request ids never need JSON escaping (their patterns exclude quotes and backslashes).
    """
    trimmed = body.rstrip()
    if trimmed.endswith(b"}") and b'"variant"' not in trimmed and b'"request_id"' not in trimmed:
        return b'%s,"variant":"%s","request_id":"%s"}' % (trimmed[:-1], variant.encode(), request_id.encode())
    parsed = orjson.loads(body)
    parsed["variant"] = variant
    parsed["request_id"] = request_id
    return orjson.dumps(parsed)
