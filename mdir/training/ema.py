"""An exponential moving average (EMA) of the generator's weights, evaluated and registered
instead of the raw weights when ``train.ema_decay`` is set.

StarGAN v2 (Choi et al., CVPR 2020, §3 "training details") and imaginaire evaluate an EMA
copy of the generator, θ_ema ← β·θ_ema + (1 − β)·θ after every optimisation step (β = 0.999
in StarGAN v2): it smooths the oscillation of adversarial training and usually scores a
lower FID than the last raw weights. Here β is `decay`.

The shadow is a dict of tensors keyed like ``generator.state_dict()`` (floating-point
parameters and buffers are averaged; integer buffers such as BatchNorm's
``num_batches_tracked`` are copied). Every rank keeps one (all ranks hold the same weights
under DDP), so a resumed run restores it on every rank from ``ema.safetensors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

#: The shadow weights in a checkpoint directory (rank 0 writes it; every rank reads it).
EMA_FILE = "ema.safetensors"


@torch.no_grad()
def ema_update_(shadow: dict[str, Tensor], current: dict[str, Tensor], decay: float) -> None:
    """In place: shadow ← decay·shadow + (1 − decay)·current for floating-point tensors, a
    copy for the others (counters). Keys must match."""
    for k, s in shadow.items():
        v = current[k].detach()
        if s.is_floating_point():
            s.lerp_(v.to(s.dtype), 1.0 - decay)
        else:
            s.copy_(v)


class GeneratorEMA:
    """EMA of one module's state dict (see the module docstring)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def update(self, module: nn.Module) -> None:
        """One EMA step towards `module`'s current weights (call after each optimiser step)."""
        ema_update_(self.shadow, module.state_dict(), self.decay)

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """`module` holds the EMA weights inside the block and its own weights again after
        it, bit for bit (the live tensors are overwritten in place, so DDP wrappers and
        optimisers keep pointing at the same storage)."""
        live = module.state_dict()
        backup = {k: v.detach().clone() for k, v in live.items()}
        try:
            with torch.no_grad():
                for k, v in live.items():
                    v.copy_(self.shadow[k])
            yield module
        finally:
            with torch.no_grad():
                for k, v in live.items():
                    v.copy_(backup[k])

    def save(self, path: str | Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}, str(path))

    def load(self, path: str | Path) -> None:
        """Restore the shadow written by `save`; the keys must be the generator's."""
        loaded = load_file(str(path))
        if set(loaded) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(loaded))[:3]
            extra = sorted(set(loaded) - set(self.shadow))[:3]
            raise ValueError(f"{path}: EMA keys differ (missing {missing}, unexpected {extra})")
        with torch.no_grad():
            for k, v in loaded.items():
                self.shadow[k].copy_(v)


@contextlib.contextmanager
def maybe_applied(ema: GeneratorEMA | None, module: nn.Module) -> Iterator[nn.Module]:
    """`ema.applied(module)` when an EMA is kept, else `module` unchanged."""
    if ema is None:
        yield module
    else:
        with ema.applied(module) as m:
            yield m
