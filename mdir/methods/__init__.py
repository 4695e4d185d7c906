"""Training methods behind one protocol (`mdir.methods.base.Method`) and one table.

The table is `mdir.methods.specs`: one module per method exporting a `MethodSpec` (config
class, data mode, needs-reference, generator builder, bench defaults …). Everything that
used to compare method names asks the spec instead: ``spec_of(cfg).needs_reference``.

`METHODS` maps a name to the method class (``METHODS[name](cfg, device)``), filled from the
table on first use; an unknown name raises a `KeyError` that lists the valid ones. Tests
that add entries must restore the mapping. Importing this package (or
``mdir.methods.config`` / ``mdir.methods.specs``) does not import torch; the method modules
are imported when ``METHODS`` or a factory is first asked for, and importing one of them
registers nothing.

* `build_generator(cfg)` / `translate_with(gen, cfg, images, reference=None)` — rebuild a
  registered generator from (config, state dict) without discriminators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mdir.methods.specs import get_spec, method_specs, spec_of

# name -> method class, filled from the table on first use (`_methods`); a plain dict so that
# tests may add a fake method (and restore it).
_METHODS: dict[str, Callable[..., Any]] = {}
_LAZY = {"build_generator", "translate_with"}


def _methods() -> dict[str, Callable[..., Any]]:
    for name, spec in method_specs().items():
        if name not in _METHODS:
            _METHODS[name] = spec.method_class()
    return _METHODS


def get_method_factory(name: str) -> Callable[..., Any]:
    """Look up a method by name; the error lists the registered names."""
    methods = _methods()
    try:
        return methods[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid methods: {sorted(methods)}") from None


def build_method(cfg: Any, device: Any = None) -> Any:
    """``METHODS[cfg.name](cfg, device)``."""
    return get_method_factory(cfg.name)(cfg, device)


def __getattr__(name: str) -> Any:
    """``METHODS`` (the table's classes) and the generator helpers, imported on first use."""
    if name == "METHODS":
        return _methods()
    if name in _LAZY:
        from mdir.methods import generators

        return getattr(generators, name)
    raise AttributeError(f"module 'mdir.methods' has no attribute {name!r}")


__all__ = [
    "METHODS", "build_generator", "build_method", "get_method_factory", "get_spec",
    "method_specs", "spec_of", "translate_with",
]  # fmt: skip
