"""The traffic simulator: simulated users ask the router for recommendations and click what they truly like.

Whether a user clicks comes from the data set's ground truth (`recsys.clicks.ClickModel` over true
affinity), never from the models, so the better model really earns more clicks. Each request's
randomness is seeded by (seed, request number), so under the hash strategy a run is reproducible
whatever the concurrency.

    summary = run_simulation(SimulationConfig(url="http://127.0.0.1:8080", requests=500))
    summary.exposures
    500

It talks only to the URL it is given: `GET {url}/health` first (an unreachable router fails at once with
RouterUnreachableError, instead of every request failing), then `GET {url}/recommend/{user_id}?k=K` and
`POST {url}/feedback`.

Its numbers are named as the report names them: CTR is the share of exposures with at least one click;
clicks per exposure is shown beside it. Because clicks come from the ground truth, it also knows what each
variant's lists were truly worth (the expected CTR of every list served, from the users' true affinities):
the answer a sound experiment should find.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from httpx_aiohttp import AiohttpTransport
from numpy.typing import NDArray
from tqdm import tqdm

from abtest.ground_truth import ExpectedCtr, expected_ctr, truly_better
from recsys.clicks import ClickModel
from recsys.data import Dataset, FittedTruth, GroundTruth, load_dataset
from recsys.logs import round_floats


class RouterUnreachableError(RuntimeError):
    """The router did not answer GET /health: nothing was sent. `reason` says why, in words."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"router unreachable at {url} ({reason})")
        self.url = url
        self.reason = reason


def check_url(url: str) -> str:
    """`url` without a trailing slash; ValueError unless it is an absolute http:// or https:// URL with a host.

    >>> check_url("http://localhost:8080/")
    'http://localhost:8080'
    >>> check_url("localhost:8080")
    Traceback (most recent call last):
    ...
    ValueError: 'localhost:8080' is not an http:// or https:// URL (try http://localhost:8080)
    """
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        hint = f" (try http://{url})" if "://" not in url else ""
        raise ValueError(f"{url!r} is not an http:// or https:// URL{hint}")
    return url.rstrip("/")


def transport_error_kind(exc: BaseException) -> str:
    """What went wrong on the wire, in words: connection refused, name not resolved, timed out, ...

    Looks through the chain of causes, because a transport may wrap the cause in a misleading class
    (httpx-aiohttp reports a refused connection as `ConnectTimeout`).
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(error, socket.gaierror) for error in chain):
        return "name not resolved"
    if any(isinstance(error, ConnectionRefusedError) for error in chain):
        return "connection refused"
    if any(isinstance(error, ConnectionResetError | BrokenPipeError) for error in chain):
        return "connection reset"
    if any(isinstance(error, httpx.TimeoutException | TimeoutError) for error in chain):
        return "timed out"
    if any(isinstance(error, httpx.RemoteProtocolError) for error in chain):
        return "connection closed"
    return type(exc).__name__


@dataclass(frozen=True)
class SimulationConfig:
    """What to send: how many users and requests, how fast, for how long at most."""

    url: str
    users: int = 1000
    requests: int = 20_000
    concurrency: int = 20
    seed: int = 7
    k: int = 10
    max_seconds: float = 600.0
    data_spec: str | None = None
    click_model: ClickModel = field(default_factory=ClickModel)
    timeout: float = 10.0
    progress: bool = False


@dataclass
class SimulationSummary:
    """What was sent and what came back, counted by the simulator itself (to check the store against)."""

    requests_sent: int = 0
    exposures: int = 0  # answered /recommend requests, errors included (the router logs each one)
    statuses: Counter[int] = field(default_factory=Counter)
    exposures_by_variant: Counter[str] = field(default_factory=Counter)
    clicks_sent: int = 0
    clicks_accepted: int = 0
    clicks_by_variant: Counter[str] = field(default_factory=Counter)
    feedback_rejected: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)  # by kind: "connection refused", ...
    users: set[str] = field(default_factory=set)  # who visited: a subset of the population
    population: int = 0  # simulated users who could visit: --users, at most the data set's users
    requested_users: int = 0  # --users
    clicked_exposures_by_variant: Counter[str] = field(default_factory=Counter)  # exposures with >= 1 accepted click
    # variant -> user -> [exposures, sum of P(at least one click)] under the ground truth (abtest.ground_truth)
    expected_by_user: defaultdict[str, defaultdict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    )
    #: Hook: each model's ground-truth CTR on the population, computed from the models (see ModelTruth).
    model_truth: dict[str, float] | None = None
    elapsed_seconds: float = 0.0
    stopped_by: str = "requests"
    #: answered exposures per variant in each tenth of the run (by request number): how a bandit moves traffic
    exposures_by_tenth: list[Counter[str]] = field(default_factory=lambda: [Counter() for _ in range(10)])

    def shares_by_tenth(self, variant: str) -> list[float | None]:
        """The variant's share of the answered exposures in each tenth of the run (None for an empty tenth)."""
        return [c[variant] / total if (total := sum(c.values())) else None for c in self.exposures_by_tenth]

    def ctr(self, variant: str) -> float | None:
        """The report's CTR: share of the variant's exposures with at least one click (None before any)."""
        shown = self.exposures_by_variant[variant]
        return self.clicked_exposures_by_variant[variant] / shown if shown else None

    def clicks_per_exposure(self, variant: str) -> float | None:
        shown = self.exposures_by_variant[variant]
        return self.clicks_by_variant[variant] / shown if shown else None

    def expected(self, variant: str) -> ExpectedCtr | None:
        """The expected CTR of the lists the variant served, from the users' true affinities (None before any)."""
        per_user = self.expected_by_user.get(variant)
        if not per_user:
            return None
        counts = np.array(list(per_user.values()))
        return expected_ctr(counts[:, 0], counts[:, 1])

    def expected_ctr(self, variant: str) -> float | None:
        found = self.expected(variant)
        return found.ctr if found else None

    def ground_truth_prefers(self) -> str | None:
        """The variant whose served lists are truly better beyond who-got-which noise (99%); None if none is."""
        judged = {v: found for v in self.exposures_by_variant if (found := self.expected(v)) is not None}
        return truly_better(judged)

    def as_dict(self) -> dict[str, Any]:
        variants = sorted(self.exposures_by_variant)
        summary = {
            "requests_sent": self.requests_sent,
            "exposures": self.exposures,
            "statuses": dict(self.statuses),
            "exposures_by_variant": dict(self.exposures_by_variant),
            "clicks_sent": self.clicks_sent,
            "clicks_accepted": self.clicks_accepted,
            "clicks_by_variant": dict(self.clicks_by_variant),
            "clicked_exposures_by_variant": dict(self.clicked_exposures_by_variant),
            "ctr_by_variant": {v: self.ctr(v) for v in variants},
            "clicks_per_exposure_by_variant": {v: self.clicks_per_exposure(v) for v in variants},
            "expected_ctr_by_variant": {v: self.expected_ctr(v) for v in variants},
            "ground_truth_prefers": self.ground_truth_prefers(),
            "model_truth": self.model_truth,
            "feedback_rejected": dict(self.feedback_rejected),
            "transport_errors": dict(self.transport_errors),
            "unique_users": len(self.users),
            "population": self.population,
            "shares_by_tenth": {v: self.shares_by_tenth(v) for v in variants},
            "elapsed_seconds": round(self.elapsed_seconds, 2),
            "stopped_by": self.stopped_by,
        }
        rounded: dict[str, Any] = round_floats(summary)
        return rounded

    def text(self) -> str:
        """A few lines for the terminal, with the report's names for the numbers."""
        rate = self.requests_sent / self.elapsed_seconds if self.elapsed_seconds else 0.0
        capped = (
            f" (--users {self.requested_users}: the data set has only these)"
            if self.requested_users > self.population
            else ""
        )
        lines = [
            f"sent {self.requests_sent} requests in {self.elapsed_seconds:.1f}s ({rate:.0f} req/s, "
            f"stopped by {self.stopped_by}): {len(self.users)} of the {self.population} simulated users{capped} "
            "visited (each visit picks a user by activity, so a few never come)",
            f"statuses: {dict(sorted(self.statuses.items()))}",
        ]
        for variant in sorted(self.exposures_by_variant):
            shown, clicks = self.exposures_by_variant[variant], self.clicks_by_variant[variant]
            lines.append(
                f"  {variant}: {shown} exposures, CTR {_percent(self.ctr(variant))} (exposures with at least one "
                f"click), {_plain(self.clicks_per_exposure(variant))} clicks per exposure ({clicks} clicks)"
            )
        tenths = {v: self.shares_by_tenth(v) for v in sorted(self.exposures_by_variant)}
        if tenths:
            lines.append(
                "share of exposures by tenth of the run (a bandit moves it): "
                + "; ".join(
                    f"{v} " + " ".join("-" if s is None else f"{s:.0%}" for s in shares) for v, shares in tenths.items()
                )
            )
        preferred = self.ground_truth_prefers()
        expected = ", ".join(f"{v} {_percent(self.expected_ctr(v))}" for v in sorted(self.exposures_by_variant))
        if expected:
            verdict = (
                f"{preferred}'s lists were truly better"
                if preferred
                else "the lists served were not truly different beyond chance (99%)"
            )
            lines.append(f"ground truth: {verdict}; expected CTR of the lists served: {expected}")
        if self.model_truth:
            best = max(self.model_truth, key=lambda v: self.model_truth[v] if self.model_truth else 0.0)
            truths = ", ".join(f"{v} {_percent(ctr)}" for v, ctr in sorted(self.model_truth.items()))
            lines.append(f"ground truth of the models on every user: {best} is better ({truths})")
        lines.append(f"clicks sent {self.clicks_sent}, accepted {self.clicks_accepted}")
        if self.feedback_rejected or self.transport_errors:
            lines.append(
                f"feedback rejected: {dict(self.feedback_rejected)}; transport errors: {dict(self.transport_errors)}"
            )
        return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class _Population:
    """The simulated users: who they are, how often they come, how click-happy they are."""

    user_ids: list[str]
    user_rows: NDArray[np.intp]
    visit_probability: NDArray[np.float64]
    propensity: NDArray[np.float64]
    item_rows: dict[int, int]
    truth: GroundTruth


def _population(data: Dataset, config: SimulationConfig) -> _Population:
    if data.truth is None:
        raise ValueError(f"data set {data.name} has no ground truth to decide clicks")
    rng = np.random.default_rng(config.seed)
    count = min(config.users, data.n_users)
    rows = np.sort(rng.choice(data.n_users, size=count, replace=False))
    activity = rng.lognormal(0.0, 1.0, count)  # some users come back far more often than others
    return _Population(
        user_ids=[str(user) for user in data.user_ids[rows]],
        user_rows=rows,
        visit_probability=activity / activity.sum(),
        propensity=config.click_model.draw_propensities(rng, count),
        item_rows={int(item): row for row, item in enumerate(data.item_ids)},
        truth=data.truth,
    )


async def probe(client: httpx.AsyncClient, url: str, seconds: float) -> None:
    """GET /health once; RouterUnreachableError (naming why) unless it answers 200."""
    try:
        response = await client.get("/health", timeout=seconds)
    except httpx.TransportError as exc:
        raise RouterUnreachableError(url, transport_error_kind(exc)) from exc
    if response.status_code != 200:
        raise RouterUnreachableError(url, f"GET /health answered HTTP {response.status_code}: is it the router?")


async def simulate(config: SimulationConfig, data: Dataset | None = None) -> SimulationSummary:
    """Send the traffic; returns when `requests` were sent or `max_seconds` passed, whichever is first.

    Raises RouterUnreachableError, before sending anything, if the router does not answer GET /health.
    """
    next_request = iter(range(config.requests))
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    transport = AiohttpTransport(limits=limits, trust_env=False)  # ~3x less CPU per request than httpcore's pool
    async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout, transport=transport) as client:
        await probe(client, config.url, seconds=min(config.timeout, 5.0))  # before the data: fail in a moment
        dataset = data or load_dataset(config.data_spec)
        population = _population(dataset, config)
        if config.progress and isinstance(population.truth, FittedTruth):
            tqdm.write("simulate: fitting the semi-synthetic ground truth of the real ratings (seconds) ...")
        # Before any request: fitting inside the event loop would stall the requests already in flight.
        await asyncio.to_thread(population.truth.prepare)
        summary = SimulationSummary(population=len(population.user_ids), requested_users=config.users)
        started = time.monotonic()
        deadline = started + config.max_seconds
        bar = tqdm(total=config.requests, desc="simulate", unit="req", disable=not config.progress)

        async def worker() -> None:
            for number in next_request:
                if time.monotonic() >= deadline:
                    summary.stopped_by = "deadline"
                    return
                await _one_visit(client, config, population, number, summary)
                bar.update()

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    bar.close()
    summary.elapsed_seconds = time.monotonic() - started
    return summary


def run_simulation(config: SimulationConfig, data: Dataset | None = None) -> SimulationSummary:
    """Blocking wrapper of `simulate` for the CLI and for tests."""
    return asyncio.run(simulate(config, data))


async def _one_visit(
    client: httpx.AsyncClient,
    config: SimulationConfig,
    population: _Population,
    number: int,
    summary: SimulationSummary,
) -> None:
    """One user visit: ask for a list, look at it, click what they like, report each click."""
    rng = np.random.default_rng((config.seed, number))
    who = int(rng.choice(len(population.user_ids), p=population.visit_probability))
    user_id = population.user_ids[who]
    summary.requests_sent += 1
    summary.users.add(user_id)
    try:
        response = await client.get(f"/recommend/{user_id}", params={"k": config.k})
    except httpx.TransportError as exc:
        summary.transport_errors[transport_error_kind(exc)] += 1
        return
    summary.exposures += 1
    summary.statuses[response.status_code] += 1
    if response.status_code != 200:
        return
    body = response.json()
    variant, request_id, items = body["variant"], body["request_id"], body["items"]
    summary.exposures_by_variant[variant] += 1
    summary.exposures_by_tenth[min(9, number * 10 // max(config.requests, 1))][variant] += 1
    rows = np.array([population.item_rows.get(int(item), -1) for item in items], dtype=np.intp)
    known = rows >= 0
    affinities = np.full(len(rows), -np.inf)
    affinities[known] = population.truth.affinity(int(population.user_rows[who]), rows[known])
    propensity = float(population.propensity[who])
    clicked = config.click_model.sample_clicks(rng, affinities, propensity)
    click_probability = config.click_model.click_probabilities(affinities, propensity)
    served = summary.expected_by_user[variant][user_id]
    served[0] += 1
    served[1] += float(1.0 - np.prod(1.0 - click_probability))
    accepted = 0
    for position in np.flatnonzero(clicked):
        summary.clicks_sent += 1
        payload = {
            "request_id": request_id,
            "user_id": user_id,
            "item_id": int(items[position]),
            "event": "click",
        }
        try:
            feedback = await client.post("/feedback", json=payload)
        except httpx.TransportError as exc:
            summary.transport_errors[transport_error_kind(exc)] += 1
            continue
        if feedback.status_code < 300:
            accepted += 1
            summary.clicks_accepted += 1
            summary.clicks_by_variant[variant] += 1
        else:
            summary.feedback_rejected[feedback.status_code] += 1
    if accepted:
        summary.clicked_exposures_by_variant[variant] += 1
