"""Training methods behind one protocol (`mdir.methods.base.Method`) and an explicit registry.

`METHODS` maps a name to a factory ``(config, device) -> Method``; an unknown name raises a
`KeyError` that lists the valid ones. Tests that add entries must restore the mapping.

Importing this package (or ``mdir.methods.config``) does not import torch; the built-in
methods are imported when ``METHODS`` or a factory is first asked for.

Contract names (see /work/shared contracts):
* ``METHODS["pix2pix" | "cyclegan" | "mduit"](cfg, device)`` — classes `Pix2Pix`
  (data_mode "paired"), `CycleGAN` ("unpaired"), `MDUIT` ("single" + ImageStore);
* `mdir.methods.config.MethodConfig` — discriminated union on ``name``;
* `build_generator(cfg)` / `translate_with(gen, cfg, images, reference=None)` — rebuild a
  registered generator from (config, state dict) without discriminators.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# The registry itself. It is reached as ``METHODS`` through the module `__getattr__` below,
# which imports the built-in methods (and torch) on first use: importing
# ``mdir.methods.config`` to validate a config must not pay torch's import (25-50 s under load).
_METHODS: dict[str, Callable[..., Any]] = {}
_builtin_loading = False
_LAZY = {"build_generator", "translate_with"}


def get_method_factory(name: str) -> Callable[..., Any]:
    """Look up a method by name; the error lists the registered names."""
    _ensure_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid methods: {sorted(_METHODS)}") from None


def build_method(cfg: Any, device: Any = None) -> Any:
    """``METHODS[cfg.name](cfg, device)``."""
    return get_method_factory(cfg.name)(cfg, device)


def _ensure_builtin() -> None:
    """Import the built-in methods once (registration happens in their modules, which
    themselves ask for ``METHODS``: the flag stops that re-entry)."""
    global _builtin_loading
    if _builtin_loading:
        return
    _builtin_loading = True
    try:
        for mod in ("pix2pix", "cyclegan", "mduit"):
            importlib.import_module(f"mdir.methods.{mod}")
    except BaseException:
        _builtin_loading = False  # let the next call retry and raise the same error again
        raise


def __getattr__(name: str) -> Any:
    """``METHODS`` (built-ins registered) and the generator helpers, imported on first use."""
    if name == "METHODS":
        _ensure_builtin()
        return _METHODS
    if name in _LAZY:
        from mdir.methods import generators

        return getattr(generators, name)
    raise AttributeError(f"module 'mdir.methods' has no attribute {name!r}")


__all__ = ["METHODS", "build_generator", "build_method", "get_method_factory", "translate_with"]
