"""Rebuild a trained generator from (config, state dict) without discriminators.

Used by the model registry / pyfunc: ``gen = build_generator(cfg); gen.load_state_dict(sd)``
where ``sd = method.generator().state_dict()``; then ``translate_with(gen, cfg, images,
reference)``. No pretrained weights are loaded here (MDUIT's VGG comes from the state dict).
Both ask the method's spec (`mdir.methods.specs`), never its name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mdir.methods.specs import spec_of


def build_generator(cfg: Any) -> nn.Module:
    """The module `Method.generator()` returns, for `cfg`, with random weights."""
    if not hasattr(cfg, "name"):
        raise TypeError(f"not a method config: {type(cfg).__name__}")
    return spec_of(cfg).build_generator(cfg)


@torch.no_grad()
def translate_with(
    gen: nn.Module, cfg: Any, images: Tensor, reference: Tensor | None = None
) -> Tensor:
    """Translate [-1,1] images [B,3,H,W] with a generator from `build_generator` (eval mode,
    on the generator's device; the output is on that device too). A method whose spec says
    ``needs_reference`` gets ``gen(images, reference)``, the others ``gen(images)``."""
    was_training = gen.training
    gen.eval()
    try:
        dev = next(gen.parameters()).device
        if spec_of(cfg).needs_reference:
            if reference is None:
                raise ValueError(f"{cfg.name} needs `reference` images (the target appearance)")
            return gen(images.to(dev), reference.to(dev))
        return gen(images.to(dev))
    finally:
        gen.train(was_training)
