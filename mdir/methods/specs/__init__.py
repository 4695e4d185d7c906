"""The method table: one module per method in this package, each exporting ``SPEC``.

The table is this directory, read in sorted order by `method_specs` — no module registers
itself by mutating a global when imported, and adding a method is adding one module here
(plus the method's own code). Spec modules import no torch (see `mdir.methods.spec`).

Also here, built from the table: `MethodConfig` (the discriminated union of every method's
config on ``name``), `METHOD_CONFIGS` and `parse_method_config`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Annotated, Any, Union

from pydantic import Field

from mdir.methods.spec import MethodSpec


@cache
def method_specs() -> dict[str, MethodSpec]:
    """name → spec of every method module in this package (sorted by module name)."""
    out: dict[str, MethodSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if not isinstance(spec, MethodSpec):
            raise TypeError(f"{__name__}.{info.name} has no SPEC (a MethodSpec)")
        if spec.name in out:
            raise ValueError(f"method {spec.name!r} is declared twice")
        out[spec.name] = spec
    return out


def get_spec(name: str) -> MethodSpec:
    """The spec of method `name`; the error lists the valid names."""
    specs = method_specs()
    try:
        return specs[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid methods: {sorted(specs)}") from None


def spec_of(cfg: Any) -> MethodSpec:
    """The spec of a method config instance."""
    return get_spec(cfg.name)


METHOD_CONFIGS: dict[str, type] = {n: s.config for n, s in method_specs().items()}

MethodConfig = Annotated[
    Union[tuple(METHOD_CONFIGS.values())],  # noqa: UP007 - built from the table at run time
    Field(discriminator="name"),
]
"""Any method config, selected by its ``name`` field."""


def parse_method_config(data: dict) -> Any:
    """Validate a plain dict (with ``name``) into the matching config class."""
    from pydantic import TypeAdapter

    return TypeAdapter(MethodConfig).validate_python(data)


__all__ = [
    "METHOD_CONFIGS",
    "MethodConfig",
    "get_spec",
    "method_specs",
    "parse_method_config",
    "spec_of",
]
