"""docs/config.md's reference is what the pydantic models say, and every field says something."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from router import configdoc, docblocks
from router.config import RouterSettings

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("abtest", "recsys", "router", "model_a", "model_b")


@pytest.mark.parametrize("name", list(configdoc.BLOCKS))
def test_config_doc_block_is_what_the_models_render(name: str) -> None:
    text = configdoc.DOC.read_text(encoding="utf-8")
    assert docblocks.block(text, name) == configdoc.BLOCKS[name](), (
        f"docs/config.md's block {name!r} differs from router/config.py: run `{configdoc.COMMAND}` and commit"
    )


def test_every_experiment_field_has_a_description_and_a_reload_effect() -> None:
    fields = list(configdoc.experiment_fields())
    assert {"strategy", "variants[].weight", "timeouts.read", "override.header"} <= {path for path, _ in fields}
    for path, info in fields:
        assert info.description and info.description.strip(), f"{path}: add Field(description=...)"
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and isinstance(extra.get("x-on-reload"), str), f"{path}: add x-on-reload"


def test_every_router_setting_has_a_description() -> None:
    for name, info in RouterSettings.model_fields.items():
        assert info.description and info.description.strip(), f"RouterSettings.{name}: add Field(description=...)"


def test_renderer_refuses_an_undocumented_field() -> None:
    class Sloppy(BaseModel):
        documented: int = Field(default=1, description="it says", json_schema_extra={"x-on-reload": "same phase"})
        silent: int = Field(default=2, json_schema_extra={"x-on-reload": "same phase"})

    with pytest.raises(configdoc.UndocumentedFieldError, match="'silent'"):
        configdoc.render_experiment(Sloppy)


def test_environment_variable_names_follow_the_settings() -> None:
    fields = RouterSettings.model_fields
    assert configdoc.environment_variable("store_url", fields["store_url"]) == "STORE_URL"
    assert configdoc.environment_variable("admin_token", fields["admin_token"]) == "ROUTER_ADMIN_TOKEN"
    assert configdoc.environment_variable("timeouts", fields["timeouts"]) == "ROUTER_TIMEOUTS__<SUB>"


def test_every_environment_variable_the_code_reads_is_in_the_config_doc() -> None:
    """Variables read outside RouterSettings (the model servers, abtest) are in docs/config.md's own table."""
    read = re.compile(
        r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]*)["']|validation_alias=["']([A-Z][A-Z0-9_]*)["']"""
    )
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found |= {a or b for a, b in read.findall(path.read_text(encoding="utf-8"))}
    assert {"RESULTS_DIR", "MODELS_DIR", "ABTEST_DATA", "MODEL_NAME", "STORE_URL"} <= found  # the scan works
    doc = configdoc.DOC.read_text(encoding="utf-8")
    missing = sorted(name for name in found if f"`{name}`" not in doc)
    assert not missing, f"environment variables read by the code but not in docs/config.md: {missing}"


def test_config_doc_example_is_the_shipped_experiment_file() -> None:
    """The YAML example on the page is router/experiment.yaml's content (comments aside)."""
    doc = configdoc.DOC.read_text(encoding="utf-8")
    example = re.search(r"^```yaml\n(.*?)^```", doc, re.MULTILINE | re.DOTALL)
    assert example is not None, "docs/config.md has no yaml example"
    shipped = yaml.safe_load((REPO / "router" / "experiment.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load(example.group(1)) == shipped
