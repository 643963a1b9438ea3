"""docs/config.md's reference tables, generated from the pydantic models so that the reference cannot drift.

    python -m router.configdoc            # print the tables
    python -m router.configdoc --write    # rewrite them in docs/config.md, between their marker comments

A field's meaning is its `Field(description=...)` in router.config, and what changing it on a reload does is its
`x-on-reload` (both also in the JSON schema); types, limits and defaults come from the field itself. A field
without a description cannot be rendered, and tests/router/test_configdoc.py fails when docs/config.md's tables
differ from `render()`: a new field is documented in the commit that adds it.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AnyHttpUrl, BaseModel, SecretStr
from pydantic.fields import FieldInfo

from router import docblocks
from router.config import OVERRIDABLE_FIELDS, ExperimentConfig, RouterSettings
from router.docblocks import cell, code, table

DOC = docblocks.DOCS / "config.md"
COMMAND = "python -m router.configdoc --write"


class UndocumentedFieldError(ValueError):
    """A config field has no description (or, in the experiment file, no `x-on-reload`)."""


def experiment_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field of the experiment file, nested ones after their parent: ('variants[].name', FieldInfo), ..."""
    for name, info in model.model_fields.items():
        path = prefix + name
        yield path, info
        nested, many = _nested_model(info.annotation)
        if nested is not None:
            yield from experiment_fields(nested, path + ("[]." if many else "."))


def environment_variable(name: str, info: FieldInfo) -> str:
    """The variable a RouterSettings field is read from: its alias, else ROUTER_<NAME> (plus __<SUB> for a mapping)."""
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    prefix = str(RouterSettings.model_config.get("env_prefix", ""))
    variable = (prefix + name).upper()
    return variable + "__<SUB>" if _is_mapping(info.annotation) else variable


def render_experiment(model: type[BaseModel] = ExperimentConfig) -> str:
    """The table of the experiment file's fields: type and limits, default, what a reload does, meaning."""
    rows = []
    for path, info in experiment_fields(model):
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        reload_effect = extra.get("x-on-reload")
        if not isinstance(reload_effect, str):
            raise UndocumentedFieldError(f"{model.__name__} field {path!r}: add json_schema_extra x-on-reload")
        rows.append([code(path), _type(info), _default(info, none="none"), cell(reload_effect), _meaning(path, info)])
    return table(["field", "type and limits", "default", "on reload", "meaning"], rows)


def render_environment(settings: type[RouterSettings] = RouterSettings) -> str:
    """The table of the router's environment variables, from RouterSettings."""
    rows = []
    for name, info in settings.model_fields.items():
        kind = "as in the file" if name in OVERRIDABLE_FIELDS else _type(info)
        rows.append([code(environment_variable(name, info)), kind, _default(info, none="unset"), _meaning(name, info)])
    return table(["variable", "type and limits", "default", "meaning"], rows)


#: The generated blocks of docs/config.md, by marker name.
BLOCKS = {"experiment-fields": render_experiment, "router-environment": render_environment}


def render() -> str:
    """Every generated block of docs/config.md, in order (what `python -m router.configdoc` prints)."""
    return "\n\n".join(render_block() for render_block in BLOCKS.values())


# -- one cell at a time -----------------------------------------------------------------------------------


def _meaning(path: str, info: FieldInfo) -> str:
    if not info.description or not info.description.strip():
        raise UndocumentedFieldError(f"config field {path!r} has no description: add Field(description=...)")
    return cell(info.description)


def _default(info: FieldInfo, *, none: str) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None or value == ():
        return none
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return code("true" if value else "false")
    if isinstance(value, Path):
        return code(value.as_posix())
    return code(str(value))


def _type(info: FieldInfo) -> str:
    words = [_type_name(_without_none(info.annotation))]
    lengths = {type(c): c for c in info.metadata if isinstance(c, annotated_types.MinLen | annotated_types.MaxLen)}
    shortest, longest = lengths.get(annotated_types.MinLen), lengths.get(annotated_types.MaxLen)
    if isinstance(shortest, annotated_types.MinLen) and isinstance(longest, annotated_types.MaxLen):
        words.append(f"{shortest.min_length}-{longest.max_length} characters")
    elif isinstance(shortest, annotated_types.MinLen):
        words.append(f"at least {shortest.min_length} characters")
    elif isinstance(longest, annotated_types.MaxLen):
        words.append(f"at most {longest.max_length} characters")
    for constraint in info.metadata:
        words += _limits(constraint)
    return ", ".join(words)


def _type_name(annotation: Any) -> str:
    nested, many = _nested_model(annotation)
    if nested is not None:
        return "list (each entry's fields below)" if many else "mapping (fields below)"
    if get_origin(annotation) is Literal:
        return " \\| ".join(code(str(choice)) for choice in get_args(annotation))
    if _is_mapping(annotation):
        return "mapping"
    names: dict[Any, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
        SecretStr: "secret string",
        AnyHttpUrl: "http(s) URL",
    }
    if annotation in names:
        return names[annotation]
    raise TypeError(f"router.configdoc cannot name the type {annotation!r}: add it to _type_name")


def _limits(constraint: object) -> list[str]:
    if isinstance(constraint, annotated_types.Ge):
        return [f"≥ {_number(constraint.ge)}"]
    if isinstance(constraint, annotated_types.Gt):
        return [f"> {_number(constraint.gt)}"]
    if isinstance(constraint, annotated_types.Le):
        return [f"≤ {_number(constraint.le)}"]
    if isinstance(constraint, annotated_types.Lt):
        return [f"< {_number(constraint.lt)}"]
    pattern = getattr(constraint, "pattern", None)
    if isinstance(pattern, str):
        return [f"matching {code(pattern)}"]
    return []  # lengths are done by _type; allow_inf_nan=False needs no words beyond "number"


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else f"{value}"


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model, True if a list of them) when a field holds a nested model, else (None, False)."""
    annotation = _without_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = get_args(annotation)
    if (
        get_origin(annotation) in (tuple, list)
        and args
        and isinstance(args[0], type)
        and issubclass(args[0], BaseModel)
    ):
        return args[0], True
    return None, False


def _is_mapping(annotation: Any) -> bool:
    return get_origin(_without_none(annotation)) is dict


def main(argv: Sequence[str] | None = None) -> int:
    return docblocks.main(DOC, BLOCKS, argv)


if __name__ == "__main__":
    sys.exit(main())
