"""What a training method says about itself, so that nobody has to ask for its name.

A `MethodSpec` sits beside each method (one module per method in ``mdir/methods/specs/``)
and answers every question the rest of mdir used to answer with ``name == "mduit"``:

* ``config`` — its pydantic config class (``data_mode`` is a class attribute of it);
* ``needs_reference`` — translation takes a target-appearance image (MDUIT);
* ``method_class()`` / ``build_generator(cfg)`` — the training class and the inference
  generator (what `Method.generator()` returns), both imported lazily;
* ``check_size(cfg, size)`` — an error message when the image size does not fit the nets;
* ``inference_train_mode(cfg)`` — translate with the generator in train mode (dropout on,
  BatchNorm batch statistics), as pix2pix's reference does at test time; default False;
* ``size_multiple(cfg)`` — the generator's stride multiple: H and W of an inference input
  must be divisible by it (`mdir.methods.anysize` pads any image up to it);
* ``needs_vgg`` / ``needs_poses`` — preflight checks of pretrained VGG weights and poses;
* ``summary(size)`` — its default networks with example inputs (`mdir models summary`);
* bench defaults: ``bench_lite`` (narrow widths), ``bench_config`` (always applied),
  ``bench_tiny`` (dotted overrides for ``mdir bench train``) and ``batch_keys`` (the
  images of one synthetic step batch).

This module and the spec modules import no torch: configs are validated before launch
without paying torch's import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _no_size_limit(cfg: Any, size: int) -> str | None:
    return None


def _eval_mode(cfg: Any) -> bool:
    return False


def _any_size(cfg: Any) -> int:
    return 1


@dataclass(frozen=True)
class MethodSpec:
    """The facts of one method (see the module docstring)."""

    name: str
    config: type
    #: () -> the Method class (imports torch and the method's module)
    method_class: Callable[[], type]
    #: cfg -> the module `Method.generator()` returns, randomly initialised
    build_generator: Callable[[Any], Any]
    #: size -> {network name: (module, example inputs, frozen submodule or None)}
    summary: Callable[[int], dict[str, tuple[Any, tuple[Any, ...], Any]]]
    needs_reference: bool = False
    needs_vgg: bool = False
    needs_poses: bool = False
    check_size: Callable[[Any, int], str | None] = _no_size_limit
    #: cfg -> True: inference runs the generator in train mode (see `translate_with`)
    inference_train_mode: Callable[[Any], bool] = _eval_mode
    #: cfg -> H and W of the generator's input must be multiples of this
    size_multiple: Callable[[Any], int] = _any_size
    batch_keys: tuple[str, ...] = ("A", "B")
    bench_config: dict[str, Any] = field(default_factory=dict)
    bench_lite: dict[str, Any] = field(default_factory=dict)
    bench_tiny: tuple[str, ...] = ()

    @property
    def data_mode(self) -> str:
        return self.config.data_mode  # type: ignore[attr-defined]

    def default_config(self, **overrides: Any) -> Any:
        return self.config(**overrides)
