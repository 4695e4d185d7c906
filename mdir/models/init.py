"""Weight initialisation shared by every generator / discriminator.

pix2pix / CycleGAN (junyanz ``init_weights(init_type="normal", init_gain=0.02)``): conv and
linear weights ~ N(0, std), biases 0, BatchNorm weight ~ N(1, std), bias 0.
MDUIT: the same with std = 0.001 ("weights of all networks were initialized by a Gaussian
distribution with a zero mean and a standard deviation of 0.001").
"""

from __future__ import annotations

from torch import nn


def init_weights(net: nn.Module, std: float = 0.02, skip: tuple[nn.Module, ...] = ()) -> nn.Module:
    """Initialise `net` in place (modules inside any of `skip`, e.g. a pretrained VGG, are
    left untouched) and return it."""
    skipped = {id(p) for m in skip for p in m.parameters()}
    for m in net.modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, nn.Parameter) or id(w) in skipped:
            continue
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return net


def count_params(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
