"""Promotion: turn a shadow into a variant of the experiment in one step (the config change that starts a phase).

    raw = read_yaml(Path("router/experiment.yaml"))
    promoted = promote_shadow(raw, "model_c")            # model_c joins `variants`, leaves `shadow`
    promote_file(Path("router/experiment.yaml"), "model_c")   # the same, written atomically, old file as .bak
    # then POST /admin/reload (or SIGHUP): the weights changed, so a new phase starts (`abtest promote` says so)

Everything else in the config is kept as it was, in its order. With no `weight`, the shadow gets an equal
share: the mean of the variants' weights, so with n variants it serves 1/(n+1) of the users and the others
keep their proportions (50/50 becomes 50/50/50, 30/70 becomes 30/70/50). The result is validated like a
config at start-up, so a promotion that would stop the router is refused before anything is written.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router.config import build_config
from router.errors import ConfigError, ConfigFileError
from router.shadow import parse_shadows

#: The config key that lists the shadows.
SHADOW_KEY = "shadow"


class PromotionError(ConfigError):
    """The shadow cannot be promoted: no shadow by that name, a variant has it already, or a bad result."""


def promote_shadow(config: str | Mapping[str, Any], name: str, *, weight: float | None = None) -> dict[str, Any]:
    """A new config mapping in which shadow `name` is a variant (appended last) with `weight`.

    `config` is the experiment YAML's text or its mapping (not modified). Raises PromotionError.

        >>> raw = {"experiment": "x", "strategy": "hash", "salt": "s",
        ...        "variants": [{"name": "a", "url": "http://a", "weight": 1},
        ...                     {"name": "b", "url": "http://b", "weight": 1}],
        ...        "shadow": [{"name": "c", "url": "http://c", "fraction": 0.5}]}
        >>> promote_shadow(raw, "c")["variants"][-1]
        {'name': 'c', 'url': 'http://c', 'weight': 1}
    """
    raw = _as_mapping(config)
    variants = raw.get("variants")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise PromotionError("variants: the config has no list of variants to add the shadow to")
    shadows = raw.get(SHADOW_KEY)
    entries = shadows if isinstance(shadows, list) else []
    names = [entry.get("name") for entry in entries if isinstance(entry, dict)]
    if name not in names:
        listed = ", ".join(str(n) for n in names) or "none"
        raise PromotionError(f"{SHADOW_KEY}: no shadow named {name!r} to promote (shadows: {listed})")
    if any(v.get("name") == name for v in variants):
        raise PromotionError(f"variants: a variant named {name!r} exists already")
    entry = entries[names.index(name)]
    share = _equal_share(variants) if weight is None else weight
    if not math.isfinite(share) or share < 0:
        raise PromotionError(f"weight: must be a finite number >= 0 (got {share!r})")
    promoted = copy.deepcopy(raw)
    promoted["variants"] = [*copy.deepcopy(variants), {"name": name, "url": entry.get("url"), "weight": _tidy(share)}]
    remaining = [copy.deepcopy(e) for e in entries if not (isinstance(e, dict) and e.get("name") == name)]
    if remaining:
        promoted[SHADOW_KEY] = remaining
    else:
        del promoted[SHADOW_KEY]  # a config without shadows reads as it did before shadows existed
    _validate(promoted)
    return promoted


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML, keys in their order. Comments of the original file are not kept (PyYAML drops them)."""
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


def _as_mapping(config: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, str):
        try:
            loaded = yaml.safe_load(config)
        except yaml.YAMLError as exc:
            raise PromotionError(f"the config is not valid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise PromotionError(f"the config must be a mapping, got {type(loaded).__name__}")
        return loaded
    return dict(config)


def _equal_share(variants: list[dict[str, Any]]) -> float:
    weights = [v.get("weight") for v in variants]
    if not weights or not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights):
        raise PromotionError("variants: every variant needs a numeric weight to compute an equal share")
    return math.fsum(float(w) for w in weights if w is not None) / len(weights)


def _tidy(weight: float) -> int | float:
    """50.0 -> 50, so the rewritten YAML reads like a hand-written one."""
    return int(weight) if float(weight).is_integer() else float(weight)


def _validate(promoted: dict[str, Any]) -> None:
    """The promoted config must load: the experiment as router.config validates it, the shadows as router.shadow."""
    design = {key: value for key, value in promoted.items() if key != SHADOW_KEY}
    try:
        config = build_config(design, source="promoted config")
        parse_shadows(promoted.get(SHADOW_KEY), [v.name for v in config.variants])
    except ConfigError as exc:
        raise PromotionError(str(exc)) from exc
    except ValidationError as exc:
        raise PromotionError(_describe_shadow_errors(exc, promoted.get(SHADOW_KEY))) from exc
    except ValueError as exc:  # a name clash (check_shadow_names)
        raise PromotionError(f"invalid promoted config: {SHADOW_KEY}: {exc}") from exc


def _describe_shadow_errors(exc: ValidationError, shadows: object) -> str:
    """`shadow.1.fraction (shadow 'model_d'): Input should be ... (got 7)`, one line per problem."""
    lines = ["invalid promoted config:"]
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        where = ".".join(str(part) for part in (SHADOW_KEY, *loc))
        index = loc[0] if loc else None
        if isinstance(shadows, list) and isinstance(index, int) and index < len(shadows):
            entry = shadows[index]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                where += f" (shadow {entry['name']!r})"
        lines.append(f"  {where}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


@dataclass(frozen=True)
class PromotedFile:
    """What `promote_file` did: the shadow is a variant with `weight` in `path`; the old file is `backup`."""

    path: Path
    backup: Path
    shadow: str
    weight: float
    remaining_shadows: tuple[str, ...]


def promote_file(path: Path, name: str, *, weight: float | None = None) -> PromotedFile:
    """Promote shadow `name` in the experiment file at `path`: validated first, then written atomically.

    The previous file is kept as `<path>.bak` (PyYAML drops comments: the backup keeps them). Nothing is written
    when the promotion is refused (PromotionError) or the file cannot be read (ConfigError). The router applies
    it on its next reload (SIGHUP or POST /admin/reload); the weights change, so that starts a new phase.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the experiment config ({exc.strerror or exc})") from exc
    promoted = promote_shadow(text, name, weight=weight)
    variant = promoted["variants"][-1]
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(dump_config(promoted))
        shutil.copymode(backup, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    remaining = tuple(str(e.get("name")) for e in promoted.get(SHADOW_KEY, []) if isinstance(e, dict))
    return PromotedFile(path, backup, name, float(variant["weight"]), remaining)
