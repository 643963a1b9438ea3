"""The traffic simulator: simulated users ask the router for recommendations and click what they truly like.

Whether a user clicks comes from the data set's ground truth (`recsys.clicks.ClickModel` over true
affinity), never from the models, so the better model really earns more clicks. Each request's
randomness is seeded by (seed, request number), so under the hash strategy a run is reproducible
whatever the concurrency.

    summary = run_simulation(SimulationConfig(url="http://127.0.0.1:8080", requests=500))
    summary.exposures
    500

It talks only to the URL it is given: `GET {url}/recommend/{user_id}?k=K` and `POST {url}/feedback`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from httpx_aiohttp import AiohttpTransport
from numpy.typing import NDArray
from tqdm import tqdm

from recsys.clicks import ClickModel
from recsys.data import Dataset, GroundTruth, load_dataset


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
    transport_errors: Counter[str] = field(default_factory=Counter)
    users: set[str] = field(default_factory=set)
    elapsed_seconds: float = 0.0
    stopped_by: str = "requests"

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_sent": self.requests_sent,
            "exposures": self.exposures,
            "statuses": dict(self.statuses),
            "exposures_by_variant": dict(self.exposures_by_variant),
            "clicks_sent": self.clicks_sent,
            "clicks_accepted": self.clicks_accepted,
            "clicks_by_variant": dict(self.clicks_by_variant),
            "feedback_rejected": dict(self.feedback_rejected),
            "transport_errors": dict(self.transport_errors),
            "unique_users": len(self.users),
            "elapsed_seconds": round(self.elapsed_seconds, 2),
            "stopped_by": self.stopped_by,
        }

    def text(self) -> str:
        """A few lines for the terminal."""
        rate = self.requests_sent / self.elapsed_seconds if self.elapsed_seconds else 0.0
        lines = [
            f"sent {self.requests_sent} requests for {len(self.users)} users in {self.elapsed_seconds:.1f}s "
            f"({rate:.0f} req/s, stopped by {self.stopped_by})",
            f"statuses: {dict(sorted(self.statuses.items()))}",
        ]
        for variant in sorted(self.exposures_by_variant):
            shown, clicks = self.exposures_by_variant[variant], self.clicks_by_variant[variant]
            lines.append(f"  {variant}: {shown} exposures, {clicks} clicks ({clicks / shown:.3f} per exposure)")
        lines.append(f"clicks sent {self.clicks_sent}, accepted {self.clicks_accepted}")
        if self.feedback_rejected or self.transport_errors:
            lines.append(
                f"feedback rejected: {dict(self.feedback_rejected)}; transport errors: {dict(self.transport_errors)}"
            )
        return "\n".join(lines)


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


async def simulate(config: SimulationConfig, data: Dataset | None = None) -> SimulationSummary:
    """Send the traffic; returns when `requests` were sent or `max_seconds` passed, whichever is first."""
    population = _population(data or load_dataset(config.data_spec), config)
    summary = SimulationSummary()
    next_request = iter(range(config.requests))
    deadline = time.monotonic() + config.max_seconds
    started = time.monotonic()
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    bar = tqdm(total=config.requests, desc="simulate", unit="req", disable=not config.progress)
    transport = AiohttpTransport(limits=limits, trust_env=False)  # ~3x less CPU per request than httpcore's pool
    async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout, transport=transport) as client:

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
        summary.transport_errors[type(exc).__name__] += 1
        return
    summary.exposures += 1
    summary.statuses[response.status_code] += 1
    if response.status_code != 200:
        return
    body = response.json()
    variant, request_id, items = body["variant"], body["request_id"], body["items"]
    summary.exposures_by_variant[variant] += 1
    rows = np.array([population.item_rows.get(int(item), -1) for item in items], dtype=np.intp)
    known = rows >= 0
    affinities = np.full(len(rows), -np.inf)
    affinities[known] = population.truth.affinity(int(population.user_rows[who]), rows[known])
    clicked = config.click_model.sample_clicks(rng, affinities, float(population.propensity[who]))
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
            summary.transport_errors[type(exc).__name__] += 1
            continue
        if feedback.status_code < 300:
            summary.clicks_accepted += 1
            summary.clicks_by_variant[variant] += 1
        else:
            summary.feedback_rejected[feedback.status_code] += 1
