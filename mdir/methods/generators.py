"""Rebuild a trained generator from (config, state dict) without discriminators.

Used by the model registry / pyfunc: ``gen = build_generator(cfg); gen.load_state_dict(sd)``
where ``sd = method.generator().state_dict()``; then ``translate_with(gen, cfg, images,
reference)``. No pretrained weights are loaded here (MDUIT's VGG comes from the state dict).
Both ask the method's spec (`mdir.methods.specs`), never its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mdir.methods.specs import spec_of


def build_generator(cfg: Any) -> nn.Module:
    """The module `Method.generator()` returns, for `cfg`, with random weights."""
    if not hasattr(cfg, "name"):
        raise TypeError(f"not a method config: {type(cfg).__name__}")
    return spec_of(cfg).build_generator(cfg)


@contextmanager
def inference_mode(gen: nn.Module, cfg: Any) -> Iterator[nn.Module]:
    """`gen` set up for inference as its method's spec says, restored afterwards.

    Usually eval mode. pix2pix's reference translates in train mode (its test.py without
    ``--eval``): dropout stays on — the generator's only noise, thesis §2.2 — and BatchNorm
    normalises with the batch's statistics. Train mode would also fold every test batch into
    the running statistics, so each BatchNorm's momentum is 0 meanwhile: running = (1 − 0) ·
    running + 0 · batch, the registered weights do not drift with use."""
    was_training = gen.training
    train_mode = spec_of(cfg).inference_train_mode(cfg)
    saved: list[tuple[nn.modules.batchnorm._BatchNorm, float | None]] = []
    gen.train(train_mode)
    if train_mode:
        for m in gen.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                saved.append((m, m.momentum))
                m.momentum = 0.0
    try:
        yield gen
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        gen.train(was_training)


@torch.no_grad()
def translate_with(
    gen: nn.Module, cfg: Any, images: Tensor, reference: Tensor | None = None
) -> Tensor:
    """Translate [-1,1] images [B,3,H,W] with a generator from `build_generator` (in the
    method's inference mode, see `inference_mode`; on the generator's device, and the output
    is on that device too). A method whose spec says ``needs_reference`` gets
    ``gen(images, reference)``, the others ``gen(images)``."""
    with inference_mode(gen, cfg):
        dev = next(gen.parameters()).device
        if spec_of(cfg).needs_reference:
            if reference is None:
                raise ValueError(f"{cfg.name} needs `reference` images (the target appearance)")
            return gen(images.to(dev), reference.to(dev))
        return gen(images.to(dev))
