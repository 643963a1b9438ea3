"""Promotion: a shadow becomes a variant in one config rewrite, everything else kept, the result validated."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config import build_config, phase_key
from router.promotion import PromotionError, dump_config, promote_shadow

EXPERIMENT_YAML = Path(__file__).resolve().parents[2] / "router" / "experiment.yaml"

SHADOWS = """
shadow:
  - name: model_c
    url: http://model_c:8000
    fraction: 0.2
  - name: model_d
    url: http://model_d:8000/
    fraction: 1.0
"""


def config(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "experiment": "rec-ab",
        "strategy": "hash",
        "salt": "rec-ab-1",
        "variants": [
            {"name": "model_a", "url": "http://model_a:8000", "weight": 50},
            {"name": "model_b", "url": "http://model_b:8000", "weight": 50},
        ],
        "timeouts": {"connect": 1.0, "read": 2.0, "pool": 1.0},
        "shadow": [{"name": "model_c", "url": "http://model_c:8000", "fraction": 0.2}],
    }
    raw.update(changes)
    return raw


def test_promotion_appends_the_shadow_as_a_variant_with_an_equal_share_and_keeps_the_rest() -> None:
    raw = config()
    before = copy.deepcopy(raw)
    promoted = promote_shadow(raw, "model_c")
    assert raw == before  # the input is not modified
    assert promoted["variants"][-1] == {"name": "model_c", "url": "http://model_c:8000", "weight": 50}
    assert "shadow" not in promoted  # the last shadow left: the key goes too
    assert {k: v for k, v in promoted.items() if k != "variants"} == {
        k: v for k, v in raw.items() if k not in ("variants", "shadow")
    }
    assert list(promoted) == [k for k in raw if k != "shadow"]  # keys keep their order
    assert dict(build_config(promoted).weights) == pytest.approx({"model_a": 1 / 3, "model_b": 1 / 3, "model_c": 1 / 3})


def test_an_equal_share_keeps_the_other_variants_proportions() -> None:
    raw = config(
        variants=[
            {"name": "model_a", "url": "http://model_a:8000", "weight": 30},
            {"name": "model_b", "url": "http://model_b:8000", "weight": 70},
        ]
    )
    weights = dict(build_config(promote_shadow(raw, "model_c")).weights)
    assert weights["model_c"] == pytest.approx(1 / 3)
    assert weights["model_a"] / weights["model_b"] == pytest.approx(30 / 70)


def test_an_explicit_weight_is_used_as_given() -> None:
    promoted = promote_shadow(config(), "model_c", weight=12.5)
    assert promoted["variants"][-1]["weight"] == 12.5
    assert promote_shadow(config(), "model_c", weight=0)["variants"][-1]["weight"] == 0


def test_promoting_from_the_shipped_yaml_text_starts_a_new_phase_and_keeps_the_other_shadows() -> None:
    text = EXPERIMENT_YAML.read_text(encoding="utf-8") + SHADOWS
    before = yaml.safe_load(text)
    promoted = promote_shadow(text, "model_d")
    assert promoted["shadow"] == before["shadow"][:1]  # model_c stays a shadow
    assert promoted["variants"][-1] == {"name": "model_d", "url": "http://model_d:8000/", "weight": 50}
    without_shadows = {k: v for k, v in before.items() if k != "shadow"}
    after = {k: v for k, v in promoted.items() if k != "shadow"}
    assert phase_key(build_config(after)) != phase_key(build_config(without_shadows))  # a new phase
    assert yaml.safe_load(dump_config(promoted)) == promoted


@pytest.mark.parametrize(
    ("raw", "name", "weight", "message"),
    [
        (config(), "model_x", None, "no shadow named 'model_x' to promote (shadows: model_c)"),
        (config(shadow=None), "model_c", None, "no shadow named 'model_c' to promote (shadows: none)"),
        (
            config(shadow=[{"name": "model_a", "url": "http://x", "fraction": 1}]),
            "model_a",
            None,
            "a variant named 'model_a' exists already",
        ),
        (config(), "model_c", -1.0, "weight: must be a finite number >= 0"),
        (config(), "model_c", float("inf"), "weight: must be a finite number >= 0"),
        (config(variants="nope"), "model_c", None, "no list of variants"),
        (
            config(shadow=[{"name": "model_c", "url": "http://c?q=1", "fraction": 1}]),
            "model_c",
            None,
            "variants.2.url",
        ),
        ("- not a mapping", "model_c", None, "must be a mapping"),
        ("key: [unclosed", "model_c", None, "not valid YAML"),
    ],
)
def test_promotion_refuses_what_cannot_be_promoted(raw: Any, name: str, weight: float | None, message: str) -> None:
    with pytest.raises(PromotionError, match=re.escape(message)):
        promote_shadow(raw, name, weight=weight)


def test_a_promotion_whose_remaining_shadows_are_invalid_is_refused() -> None:
    raw = config(
        shadow=[
            {"name": "model_c", "url": "http://model_c:8000", "fraction": 0.2},
            {"name": "model_d", "url": "http://model_d:8000", "fraction": 7},
        ]
    )
    with pytest.raises(PromotionError, match=re.escape("shadow.0.fraction (shadow 'model_d'): Input should be less")):
        promote_shadow(raw, "model_c")
