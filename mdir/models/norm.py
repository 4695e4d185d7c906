"""Normalisation layers by name, with the bias rule of the original pix2pix/CycleGAN code.

junyanz ``get_norm_layer``: ``batch`` = BatchNorm2d(affine=True, track_running_stats=True);
``instance`` = InstanceNorm2d(affine=False, track_running_stats=False). A conv followed by
BatchNorm has no bias (the BN shift makes it redundant); with InstanceNorm (no affine) the
conv keeps its bias — this is what makes the parameter counts equal to the original's.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

NormName = Literal["batch", "instance", "none"]


def norm_layer(kind: NormName, channels: int) -> nn.Module:
    """The normalisation module for `channels` feature maps."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: batch, instance, none")


def conv_bias(kind: NormName) -> bool:
    """Whether a conv followed by this norm keeps its bias (False only for BatchNorm)."""
    return kind != "batch"
