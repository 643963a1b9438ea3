"""Which phase a configuration continues, decided once for every backend (pure).

    continued = phase_to_continue(recent_phases, "rec-ab", key, now=time.time())   # a phase number, or None

Replicas share one store but reload one after another (a Kubernetes ConfigMap reaches pods tens of seconds
apart) or restart on an older file. A phase is keyed by the configuration's content: a replica continues the
newest phase recorded with its experiment and key, so replicas on the same configuration share one phase,
and each exposure is tagged with the phase of the configuration that served it.

How far back: the newest phase always; past newer phases only while they are a rollout in progress that the
caller has not taken part in. A newer phase is bridged when it is newer than the caller's `current` phase (a
restart has none), started less than `ROLLOUT_WINDOW` seconds ago, and records no guardrail stop (a stop, and
the resume that undoes it, are deliberate breaks). So replica B restarting on the old file while A already
serves the new one rejoins the old phase, and B reloading the new file then joins A's; but a replica that
itself moved on and comes back (an operator reverting a change) starts a new stretch, as one router does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

#: Seconds a newer phase counts as a rollout still reaching other replicas (ConfigMap propagation plus a
#: rolling restart).
ROLLOUT_WINDOW = 600.0

#: How many of the latest phases a backend hands `phase_to_continue` (a rollout never spans more).
RECENT_PHASES = 32


@dataclass(frozen=True)
class PhaseRow:
    """What the decision reads of one `phases` row."""

    phase: int
    experiment: str
    config_key: str
    started_at: float
    stopped: bool
    """The phase's design records a guardrail stop (`stopped` is a non-empty list)."""


def phase_to_continue(
    newest_first: Sequence[PhaseRow],
    experiment: str,
    config_key: str,
    *,
    current: int | None,
    now: float,
    window: float = ROLLOUT_WINDOW,
) -> int | None:
    """The phase `(experiment, config_key)` continues, or None for a new one (see the module docstring).

    `newest_first` holds the store's latest phases (`RECENT_PHASES`), newest first; `current` is the phase the
    caller serves now (None at start-up).

    >>> rows = [PhaseRow(2, "ab", "k2", 990.0, False), PhaseRow(1, "ab", "k1", 0.0, False)]
    >>> phase_to_continue(rows, "ab", "k1", current=None, now=1000.0)   # restarting on the old file
    1
    >>> phase_to_continue(rows, "ab", "k1", current=2, now=1000.0) is None   # coming back: a new stretch
    True
    """
    for row in newest_first:
        if row.experiment == experiment and row.config_key == config_key:
            return row.phase
        bridgeable = (current is None or row.phase > current) and not row.stopped and now - row.started_at < window
        if not bridgeable:
            return None
    return None


def stops_recorded(design_json: str) -> bool:
    """Whether a phase's recorded design (`phases.config_json`) has a guardrail stop in effect."""
    try:
        design = orjson.loads(design_json)
    except orjson.JSONDecodeError:
        return False
    stopped = design.get("stopped") if isinstance(design, dict) else None
    return isinstance(stopped, list) and len(stopped) > 0
