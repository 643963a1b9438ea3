"""Experiment config: bad values are refused with a message naming field and value; env overrides; phase key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config import (
    ExperimentConfig,
    RouterSettings,
    build_config,
    effective_weights,
    load_config,
    phase_design,
    phase_key,
)
from router.errors import ConfigError, ConfigFileError
from router.interleaving import team_count_message

BASE: dict[str, Any] = {
    "experiment": "rec-ab",
    "strategy": "hash",
    "salt": "rec-ab-1",
    "variants": [
        {"name": "model_a", "url": "http://model_a:8000", "weight": 50},
        {"name": "model_b", "url": "http://model_b:8000", "weight": 50},
    ],
}


def config_with(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def refusal(raw: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(raw, **kwargs)
    return str(caught.value)


def test_shipped_experiment_yaml_is_valid() -> None:
    config = load_config(RouterSettings(config_path=Path("router/experiment.yaml")))
    assert config.strategy == "hash"
    assert config.weights == (("model_a", 0.5), ("model_b", 0.5))
    assert [v.base_url for v in config.variants] == ["http://model_a:8000", "http://model_b:8000"]
    assert config.control == "model_a"


def test_unknown_strategy_is_refused_naming_field_and_value() -> None:
    message = refusal(config_with(strategy="round-robin"))
    assert "strategy" in message and "'round-robin'" in message


def test_negative_weight_is_refused_naming_the_variant() -> None:
    raw = config_with()
    raw["variants"][1]["weight"] = -5
    message = refusal(raw)
    assert "variants.1.weight" in message and "model_b" in message and "-5" in message


def test_all_zero_weights_are_refused() -> None:
    raw = config_with()
    for variant in raw["variants"]:
        variant["weight"] = 0
    message = refusal(raw)
    assert "variants" in message and "all weights are zero" in message and "model_a=0" in message


def test_duplicate_variant_names_are_refused() -> None:
    raw = config_with()
    raw["variants"][1]["name"] = "model_a"
    message = refusal(raw)
    assert "variants" in message and "duplicate variant name 'model_a'" in message


@pytest.mark.parametrize("url", ["not a url", "ftp://model_a:8000", "http://user:secret@model_a:8000", "http://a/?x=1"])
def test_bad_url_is_refused_naming_field(url: str) -> None:
    raw = config_with()
    raw["variants"][0]["url"] = url
    message = refusal(raw)
    assert "variants.0.url" in message and "model_a" in message


def test_unknown_field_is_refused() -> None:
    message = refusal(config_with(stratgy="hash"))
    assert "stratgy" in message


def test_fallback_must_name_a_variant() -> None:
    message = refusal(config_with(on_error="fallback", fallback_variant="model_z"))
    assert "fallback_variant" in message and "'model_z'" in message
    assert "fallback_variant is not set" in refusal(config_with(on_error="fallback"))


def test_a_single_variant_is_refused() -> None:
    message = refusal(config_with(variants=BASE["variants"][:1]))
    assert "variants" in message and "at least 2" in message


def test_weights_are_normalised_not_replaced() -> None:
    raw = config_with()
    raw["variants"][0]["weight"], raw["variants"][1]["weight"] = 3, 7
    config = build_config(raw)
    assert dict(config.weights) == pytest.approx({"model_a": 0.3, "model_b": 0.7})
    assert [v.weight for v in config.variants] == [3, 7]  # what the file said is kept


def test_n_variants_are_supported() -> None:
    raw = config_with(
        variants=[{"name": f"v{i}", "url": f"http://v{i}:8000", "weight": 1} for i in range(4)],
    )
    assert [name for name, _ in build_config(raw).weights] == ["v0", "v1", "v2", "v3"]


def test_env_overrides_replace_yaml_values_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_STRATEGY", "random")
    monkeypatch.setenv("ROUTER_SALT", "from-env")
    monkeypatch.setenv("ROUTER_TIMEOUTS__READ", "0.25")
    monkeypatch.setenv("ROUTER_OVERRIDE__ENABLED", "true")
    settings = RouterSettings()
    config = build_config(BASE, overrides=settings.yaml_overrides())
    assert (config.strategy, config.salt, config.timeouts.read, config.override.enabled) == (
        "random",
        "from-env",
        0.25,
        True,
    )
    assert config.timeouts.connect == 1.0  # nested override keeps the other timeouts

    monkeypatch.setenv("ROUTER_STRATEGY", "sticky")
    message = refusal(BASE, overrides=RouterSettings().yaml_overrides())
    assert "strategy" in message and "'sticky'" in message and "ROUTER_STRATEGY" in message


def test_variant_urls_env_overrides_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_VARIANT_URLS", "model_a=http://127.0.0.1:8001, model_b=http://127.0.0.1:8002")
    config = build_config(BASE, urls=RouterSettings().url_overrides())
    assert [v.base_url for v in config.variants] == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]


def test_variant_urls_naming_an_unknown_variant_is_an_error() -> None:
    message = refusal(BASE, urls={"model_c": "http://127.0.0.1:8003"})
    assert "ROUTER_VARIANT_URLS" in message and "'model_c'" in message


def test_malformed_variant_urls_is_an_error() -> None:
    with pytest.raises(ConfigError, match="ROUTER_VARIANT_URLS"):
        RouterSettings(variant_urls="model_a:http://x").url_overrides()


def test_results_dir_and_admin_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTS_DIR", "/tmp/somewhere")
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "s3cret")
    settings = RouterSettings()
    assert settings.results_dir == Path("/tmp/somewhere")
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "  ")
    assert RouterSettings().admin_token is None  # blank means admin disabled, not an empty password


def test_missing_and_broken_files_are_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(RouterSettings(config_path=tmp_path / "absent.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_config(RouterSettings(config_path=broken))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigFileError, match="must be a mapping"):
        load_config(RouterSettings(config_path=scalar))


def test_phase_key_ignores_what_moves_nobody() -> None:
    base = build_config(BASE)
    moved_urls = config_with(timeouts={"read": 9}, override={"enabled": True}, max_body_bytes=1024)
    moved_urls["variants"][0]["url"] = "http://elsewhere:9000"
    assert phase_key(build_config(moved_urls)) == phase_key(base)
    same_split = config_with()
    same_split["variants"][0]["weight"], same_split["variants"][1]["weight"] = 1, 1
    assert phase_key(build_config(same_split)) == phase_key(base)


@pytest.mark.parametrize(
    "change",
    [
        {"strategy": "random"},
        {"salt": "rec-ab-2"},
        {"variants": [BASE["variants"][1], BASE["variants"][0]]},  # order decides the ranges
        {"variants": [{**BASE["variants"][0], "weight": 30}, {**BASE["variants"][1], "weight": 70}]},
        {"variants": [BASE["variants"][0], {**BASE["variants"][1], "name": "model_c"}]},
    ],
)
def test_phase_key_changes_when_users_can_move(change: dict[str, Any]) -> None:
    assert phase_key(build_config(config_with(**change))) != phase_key(build_config(BASE))


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_config(RouterSettings(config_path=path)) == ExperimentConfig.model_validate(BASE)


def test_interleave_with_other_than_two_variants_is_refused_with_the_cores_message() -> None:
    raw = config_with(strategy="interleave")
    raw["variants"].append({"name": "model_c", "url": "http://model_c:8000", "weight": 50})
    assert team_count_message(["model_a", "model_b", "model_c"]) in refusal(raw)
    raw["variants"] = raw["variants"][:1]
    assert "at least 2 variants" in refusal(raw)


def test_interleave_refuses_a_variant_named_like_its_answers_and_the_fallback() -> None:
    raw = config_with(strategy="interleave")
    raw["variants"][1]["name"] = "interleaved"
    assert "'interleaved' is what strategy 'interleave' answers with" in refusal(raw)
    message = refusal(config_with(strategy="interleave", on_error="fallback", fallback_variant="model_a"))
    assert "on_error 'fallback' does not apply to strategy 'interleave'" in message


def test_interleave_is_a_per_user_strategy_and_its_phase_records_the_merge() -> None:
    config = build_config(config_with(strategy="interleave"))
    assert config.unit == "user"
    assert phase_design(config)["fan_out"] == {"label": "interleaved", "method": "team-draft"}
    assert "fan_out" not in phase_design(build_config(config_with()))
    assert phase_key(config) != phase_key(build_config(config_with()))  # switching to it starts a new phase


def test_phase_key_changes_with_the_analysis_plan_but_not_with_its_defaults_spelled_out() -> None:
    base = phase_key(build_config(BASE))
    spelled = config_with(analysis={"sequential": True, "alpha": 0.05, "tuning": 5000, "power": 0.8, "min_units": 20})
    assert phase_key(build_config(spelled)) == base  # the defaults are the plan of a config that omits them
    for plan in (
        {"analysis": {"alpha": 0.01}},
        {"analysis": {"minimum_detectable_effect": 0.05}},
        {"metrics": [{"name": "rating", "event": "rating", "per": "event"}]},
        {"guardrails": [{"metric": "error_rate", "tolerance": {"margin": 0.02}, "action": "stop"}]},
    ):
        assert phase_key(build_config(config_with(**plan))) != base, plan
    config = build_config(BASE)
    assert phase_key(config, {"model_b"}) != base  # a stop moves model_b's users


def test_effective_weights_give_a_stopped_variants_share_to_the_control() -> None:
    config = build_config(BASE)
    assert effective_weights(config, {"model_b"}) == (("model_a", 1.0), ("model_b", 0.0))
    design = phase_design(config, {"model_b": {"guardrail": "error_rate", "phase": 1}})
    assert [v["share"] for v in design["variants"]] == [1.0, 0.0]
    assert design["stopped"] == [{"variant": "model_b", "guardrail": "error_rate", "phase": 1}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"analysis": {"sequential": False}}, "needs minimum_detectable_effect"),
        ({"guardrails": [{"metric": "clicks"}]}, "unknown metric 'clicks'"),
        ({"guardrails": [{"metric": "error_rate"}, {"metric": "error_rate"}]}, "more than one guardrail"),
        ({"guardrails": [{"metric": "error_rate", "threshold_ms": 5}]}, "latency_p99 guardrail only"),
        ({"metrics": [{"name": "ctr", "event": "click", "per": "event"}]}, "built-in metric"),
        ({"analysis": {"alpha": 0.5}}, "analysis.alpha"),
    ],
)
def test_a_bad_analysis_plan_is_refused_with_its_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(config_with(**change))


def test_a_shadow_is_validated_like_a_variant_and_named_in_the_error() -> None:
    variants = [{"name": "a", "url": "http://a", "weight": 1}, {"name": "b", "url": "http://b", "weight": 1}]
    raw = {"experiment": "x", "strategy": "hash", "salt": "s", "variants": variants}
    config = build_config({**raw, "shadow": [{"name": "c", "url": "http://c:8000/", "fraction": 0.25}]})
    assert [(s.name, s.base_url, s.fraction) for s in config.shadow] == [("c", "http://c:8000", 0.25)]
    assert build_config(raw).shadow == ()
    with pytest.raises(ConfigError, match=r"shadow\.0\.fraction \(shadow 'c'\): Input should be less than"):
        build_config({**raw, "shadow": [{"name": "c", "url": "http://c", "fraction": 2}]})
    with pytest.raises(ConfigError, match="has the name of a variant"):
        build_config({**raw, "shadow": [{"name": "a", "url": "http://c", "fraction": 1}]})
    with pytest.raises(ConfigError, match="duplicate shadow name 'c'"):
        build_config({**raw, "shadow": [{"name": "c", "url": "http://c", "fraction": 1}] * 2})
