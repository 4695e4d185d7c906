"""Training methods behind one protocol (`mdir.methods.base.Method`) and an explicit registry.

`METHODS` maps a name to a factory ``(config, device) -> Method``; an unknown name raises a
`KeyError` that lists the valid ones. Tests that add entries must restore the mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

METHODS: dict[str, Callable[..., Any]] = {}


def get_method_factory(name: str) -> Callable[..., Any]:
    """Look up a method by name; the error lists the registered names."""
    _ensure_builtin()
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}") from None


def _ensure_builtin() -> None:
    """Import the built-in methods (registration happens in their modules)."""
    # Filled in by mdir/methods/{pix2pix,cyclegan,mduit}.py, which add themselves to METHODS.
    import importlib

    for mod in ("pix2pix", "cyclegan", "mduit"):
        try:
            importlib.import_module(f"mdir.methods.{mod}")
        except ModuleNotFoundError as e:  # not written yet in early development
            if e.name != f"mdir.methods.{mod}":
                raise
