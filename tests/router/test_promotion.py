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


# -- the one step: `abtest promote`, then a reload --------------------------------------------------------


def test_abtest_promote_rewrites_the_file_atomically_keeps_a_backup_and_says_how_to_apply_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from abtest.cli import main

    path = tmp_path / "experiment.yaml"
    original = "# our experiment\n" + yaml.safe_dump(config(), sort_keys=False)
    path.write_text(original)
    path.chmod(0o640)
    assert main(["promote", "model_c", "--weight", "20", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model_c is now a variant with weight 20" in out and "/admin/reload" in out and "kill -HUP" in out
    assert "new phase" in out
    assert (tmp_path / "experiment.yaml.bak").read_text() == original  # comments and all
    promoted = build_config(yaml.safe_load(path.read_text()))
    assert [(v.name, v.weight) for v in promoted.variants] == [("model_a", 50), ("model_b", 50), ("model_c", 20)]
    assert promoted.shadow == ()
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_abtest_promote_refuses_what_it_cannot_promote_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from abtest.cli import main

    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config(), sort_keys=False))
    before = path.read_text()
    assert main(["promote", "model_x", "--config", str(path)]) == 2
    assert "no shadow named 'model_x'" in capsys.readouterr().err
    assert main(["promote", "model_c", "--weight", "-1", "--config", str(path)]) == 2
    assert main(["promote", "model_c", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert path.read_text() == before and not (tmp_path / "experiment.yaml.bak").exists()


def test_a_promoted_shadow_serves_users_after_a_reload_in_a_new_phase(tmp_path: Path, backends: dict[str, Any]) -> None:
    from router.promotion import promote_file
    from tests.router.conftest import experiment, running_router, settings_for
    from tests.support.fake_model import FakeModelControl, serve_fake_model

    token = "promotion-token"
    with serve_fake_model("model_c", FakeModelControl()) as url_c:
        raw = experiment(backends, shadow=[{"name": "model_c", "url": url_c, "fraction": 1.0}])
        settings = settings_for(tmp_path, raw, admin_token=token)
        with running_router(settings) as router:
            before = {router.client.get(f"/recommend/u{n}").headers["X-Variant"] for n in range(60)}
            promote_file(settings.config_path, "model_c")
            reloaded = router.client.post("/admin/reload", headers={"Authorization": f"Bearer {token}"}).json()
            after = {router.client.get(f"/recommend/u{n}").headers["X-Variant"] for n in range(60)}
            health = router.client.get("/health").json()
    assert before == {"model_a", "model_b"}
    assert (reloaded["phase"], reloaded["new_phase"]) == (2, True)
    assert after == {"model_a", "model_b", "model_c"}  # a third of the users now
    assert health["shadows"] == {}  # it is a variant now, no longer a shadow
