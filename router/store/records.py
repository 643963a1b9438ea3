"""What the router writes to the outcome store: one frozen record per row, built by keyword, read by column name.

    exposure = Exposure(ts=time.time(), request_id=rid, experiment="rec-ab", phase=1, user_id="42",
                        variant="model_a", assigned_variant="model_a", strategy="hash", assignment="strategy",
                        propensity=0.5, status=200, latency_ms=3.1, k=10, items=(50, 172), error=None)
    exposure.columns()          # {"ts": ..., "request_id": ..., ..., "items": "[50,172]", "error": None}
    Exposure.from_columns(row)  # the same record back from a row mapping

Each record's `columns()` names exactly the insertable columns of its table in `router.store.schema` (a test
holds them equal), so the column order is written once, in the schema, and never repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from router.store.schema import EXPOSURES, FEEDBACK, SHADOW_CALLS, VARIANT_INFO, Table


@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """One answered /recommend request (errors included): a row of `exposures`."""

    table: ClassVar[Table] = EXPOSURES
    kind: ClassVar[str] = "exposure"

    ts: float
    request_id: str
    experiment: str
    phase: int
    user_id: str
    variant: str
    assigned_variant: str
    strategy: str
    assignment: str
    propensity: float | None
    status: int
    latency_ms: float
    k: int
    items: tuple[int, ...]
    error: str | None
    # Interleaved exposures only (schema version 3); the defaults are every other exposure's.
    teams: tuple[str, ...] | None = None
    """The variant that placed each item of `items`; () when every backend failed; None: not interleaved."""
    failed_variant: str | None = None
    """A degraded interleave: the variant whose backend failed (the other's list was served alone)."""
    epoch: int | None = None
    """Adaptive strategies (schema version 6): the weight epoch whose weights assigned it; None otherwise."""

    def team_of(self, position: int | None) -> str:
        """Who gets the credit for feedback on `position`: its team when interleaved, else the serving variant."""
        if self.teams is not None and position is not None and 0 <= position < len(self.teams):
            return self.teams[position]
        return self.variant

    def columns(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "request_id": self.request_id,
            "experiment": self.experiment,
            "phase": self.phase,
            "user_id": self.user_id,
            "variant": self.variant,
            "assigned_variant": self.assigned_variant,
            "strategy": self.strategy,
            "assignment": self.assignment,
            "propensity": self.propensity,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "k": self.k,
            "items": orjson.dumps(list(self.items)).decode(),
            "error": self.error,
            "teams": None if self.teams is None else orjson.dumps(list(self.teams)).decode(),
            "failed_variant": self.failed_variant,
            "epoch": self.epoch,
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> Exposure:
        return cls(
            ts=float(row["ts"]),
            request_id=str(row["request_id"]),
            experiment=str(row["experiment"]),
            phase=int(row["phase"]),
            user_id=str(row["user_id"]),
            variant=str(row["variant"]),
            assigned_variant=str(row["assigned_variant"]),
            strategy=str(row["strategy"]),
            assignment=str(row["assignment"]),
            propensity=None if row["propensity"] is None else float(row["propensity"]),
            status=int(row["status"]),
            latency_ms=float(row["latency_ms"]),
            k=int(row["k"]),
            items=tuple(orjson.loads(row["items"])),
            error=None if row["error"] is None else str(row["error"]),
            teams=None if row["teams"] is None else tuple(str(team) for team in orjson.loads(row["teams"])),
            failed_variant=None if row["failed_variant"] is None else str(row["failed_variant"]),
            epoch=None if row["epoch"] is None else int(row["epoch"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Feedback:
    """One accepted POST /feedback, attributed to an exposure: a row of `feedback`."""

    table: ClassVar[Table] = FEEDBACK
    kind: ClassVar[str] = "feedback"

    ts: float
    request_id: str
    experiment: str
    phase: int
    user_id: str
    variant: str
    assignment: str
    item_id: int
    position: int | None
    event: str
    value: float | None
    attributed_by: str

    def columns(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "request_id": self.request_id,
            "experiment": self.experiment,
            "phase": self.phase,
            "user_id": self.user_id,
            "variant": self.variant,
            "assignment": self.assignment,
            "item_id": self.item_id,
            "position": self.position,
            "event": self.event,
            "value": self.value,
            "attributed_by": self.attributed_by,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class VariantInfo:
    """A backend's GET /info for one phase: a row of `variant_info`."""

    table: ClassVar[Table] = VARIANT_INFO
    kind: ClassVar[str] = "variant_info"

    phase: int
    variant: str
    info: dict[str, Any]
    fetched_at: float

    def columns(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "variant": self.variant,
            "info_json": orjson.dumps(self.info).decode(),
            "fetched_at": self.fetched_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowCall:
    """One finished shadow call (success or failure) copying a served live request: a row of `shadow_calls`."""

    table: ClassVar[Table] = SHADOW_CALLS
    kind: ClassVar[str] = "shadow_call"

    ts: float
    request_id: str
    phase: int
    user_id: str
    variant: str
    shadow: str
    shadow_url: str
    k: int
    status: int
    latency_ms: float
    wait_ms: float
    items: tuple[int, ...]
    error: str | None

    def columns(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "request_id": self.request_id,
            "phase": self.phase,
            "user_id": self.user_id,
            "variant": self.variant,
            "shadow": self.shadow,
            "shadow_url": self.shadow_url,
            "k": self.k,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "wait_ms": self.wait_ms,
            "items": orjson.dumps(list(self.items)).decode(),
            "error": self.error,
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> ShadowCall:
        return cls(
            ts=float(row["ts"]),
            request_id=str(row["request_id"]),
            phase=int(row["phase"]),
            user_id=str(row["user_id"]),
            variant=str(row["variant"]),
            shadow=str(row["shadow"]),
            shadow_url=str(row["shadow_url"]),
            k=int(row["k"]),
            status=int(row["status"]),
            latency_ms=float(row["latency_ms"]),
            wait_ms=float(row["wait_ms"]),
            items=tuple(orjson.loads(row["items"])),
            error=None if row["error"] is None else str(row["error"]),
        )


Record = Exposure | Feedback | VariantInfo | ShadowCall

#: Every kind of record, for counters that must exist (as 0) before anything is written.
RECORD_KINDS = (Exposure.kind, Feedback.kind, VariantInfo.kind, ShadowCall.kind)
