"""Training methods behind one protocol (`mdir.methods.base.Method`) and an explicit registry.

`METHODS` maps a name to a factory ``(config, device) -> Method``; an unknown name raises a
`KeyError` that lists the valid ones. Tests that add entries must restore the mapping.

Contract names (see /work/shared contracts):
* ``METHODS["pix2pix" | "cyclegan" | "mduit"](cfg, device)`` — classes `Pix2Pix`
  (data_mode "paired"), `CycleGAN` ("unpaired"), `MDUIT` ("single" + ImageStore);
* `mdir.methods.config.MethodConfig` — discriminated union on ``name``;
* `build_generator(cfg)` / `translate_with(gen, cfg, images, reference=None)` — rebuild a
  registered generator from (config, state dict) without discriminators.
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


def build_method(cfg: Any, device: Any = None) -> Any:
    """``METHODS[cfg.name](cfg, device)``."""
    return get_method_factory(cfg.name)(cfg, device)


def _ensure_builtin() -> None:
    """Import the built-in methods (registration happens in their modules)."""
    import importlib

    for mod in ("pix2pix", "cyclegan", "mduit"):
        importlib.import_module(f"mdir.methods.{mod}")


# Register the built-in methods now, so that ``METHODS["pix2pix"]`` works right after
# ``from mdir.methods import METHODS`` (their modules add themselves to METHODS above).
_ensure_builtin()

from mdir.methods.generators import build_generator, translate_with  # noqa: E402

__all__ = ["METHODS", "build_generator", "build_method", "get_method_factory", "translate_with"]
