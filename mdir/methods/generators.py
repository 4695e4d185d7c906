"""Rebuild a trained generator from (config, state dict) without discriminators.

Used by the model registry / pyfunc: ``gen = build_generator(cfg); gen.load_state_dict(sd)``
where ``sd = method.generator().state_dict()``; then ``translate_with(gen, cfg, images,
reference)``. No pretrained weights are loaded here (MDUIT's VGG comes from the state dict).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdir.methods.config import CycleGANConfig, MDUITConfig, Pix2PixConfig


def build_generator(cfg: Pix2PixConfig | CycleGANConfig | MDUITConfig) -> nn.Module:
    """The module `Method.generator()` returns, for `cfg`, with random weights."""
    if isinstance(cfg, Pix2PixConfig):
        from mdir.methods.pix2pix import build_pix2pix_generator

        return build_pix2pix_generator(cfg)
    if isinstance(cfg, CycleGANConfig):
        from mdir.methods.cyclegan import build_cyclegan_generator

        return build_cyclegan_generator(cfg)
    if isinstance(cfg, MDUITConfig):
        from mdir.methods.mduit import build_mduit_translator

        return build_mduit_translator(cfg)
    raise TypeError(f"not a method config: {type(cfg).__name__}")


@torch.no_grad()
def translate_with(
    gen: nn.Module,
    cfg: Pix2PixConfig | CycleGANConfig | MDUITConfig,
    images: Tensor,
    reference: Tensor | None = None,
) -> Tensor:
    """Translate [-1,1] images [B,3,H,W] with a generator from `build_generator` (eval mode,
    on the generator's device; the output is on that device too)."""
    was_training = gen.training
    gen.eval()
    try:
        dev = next(gen.parameters()).device
        if isinstance(cfg, MDUITConfig):
            if reference is None:
                raise ValueError("mduit needs `reference` images (the target appearance)")
            return gen(images.to(dev), reference.to(dev))
        return gen(images.to(dev))
    finally:
        gen.train(was_training)
