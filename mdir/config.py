"""Typed configuration: YAML in, pydantic models out, errors that name the field.

Every job config is a `StrictModel` (unknown keys are errors). `load_config` reads YAML
with `yaml.safe_load`, applies ``key.sub=value`` overrides from the command line and
validates; a failure raises `ConfigError` whose message lists each bad field as a dotted
path (``train.batch_size: Input should be greater than 0``).

Area-specific sections (data, model, method, train, tune, retrieval) are defined next to
the code that reads them and composed into job configs there; this module only holds the
machinery they share.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, values are validated on
    assignment, and the model is frozen so that nothing mutates a config during training
    (anything that changes lives in checkpointed state instead)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and every bad field."""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation can hold (unwrapping Optional / Union / Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _section_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section that holds the last element of `loc` ([] if unknown).
    A discriminated union (e.g. `method`) puts its tag into `loc`: it selects the member."""
    current: list[type[BaseModel]] = [model] if model is not None else []
    for part in loc[:-1]:
        if len(current) > 1:  # union: `part` is the tag value of one member
            current = [m for m in current if str(part) in _tag_values(m)]
            continue
        field = current[0].model_fields.get(str(part)) if current else None
        if field is None:
            return []
        current = _models_in(field.annotation)
    return sorted(current[0].model_fields) if len(current) == 1 else []


def _tag_values(model: type[BaseModel]) -> set[str]:
    f = model.model_fields.get("name")
    args = typing.get_args(f.annotation) if f is not None else ()
    return {str(a) for a in args} | ({str(f.default)} if f is not None else set())


def format_validation_error(
    err: ValidationError, source: str = "config", model: type[BaseModel] | None = None
) -> str:
    """One line per problem, each starting with the dotted path of the field; an unknown
    key also gets the closest valid key of its section and the list of valid ones."""
    lines = [f"invalid {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            keys = _section_keys(model, tuple(e["loc"]))
            close = difflib.get_close_matches(str(e["loc"][-1]), keys, n=1)
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
            if keys:
                msg += f"; valid keys here: {', '.join(keys)}"
        inp = e.get("input")
        # a model-level check (no loc) names its fields itself; its input is the whole config
        hide = e["type"] in ("extra_forbidden", "missing") or not e["loc"]
        shown = "" if hide else f" (got {inp!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` → (["a", "b", "c"], VALUE parsed as YAML, so 3 → int, true → bool)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of `data` with dotted-key overrides applied (creating sub-dicts)."""
    out: dict[str, Any] = _deepcopy(data)
    for text in overrides or []:
        path, value = parse_override(text)
        node = out
        for p in path[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with `yaml.safe_load`; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def validate(model: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate `data` against `model`, turning pydantic's error into a `ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model)) from None


def load_config(
    model: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """YAML file (optional) + ``key=value`` overrides → validated `model` instance."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return validate(model, data, source=str(path) if path else "config")


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what MLflow and checkpoints record)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
