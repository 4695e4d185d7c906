"""pix2pix U-Net generator (``unet_256``: 8 downsamplings, 256 → 1×1 bottleneck).

Built recursively from skip blocks exactly as the original ``UnetSkipConnectionBlock``:
  outermost: [conv(in→ngf)]                         … [ReLU, convT(2·ngf→out, bias), Tanh]
  inner:     [LReLU, conv(outer→inner), norm]       … [ReLU, convT(2·inner→outer), norm, (Dropout 0.5)]
  innermost: [LReLU, conv(outer→inner)]             … [ReLU, convT(inner→outer), norm]
every non-outermost block returns cat([x, block(x)]); all k = 4, s = 2, p = 1 and, with
BatchNorm, no conv bias except the outermost transposed conv. Dropout sits in the
``num_downs - 5`` innermost-but-one blocks (the 512-channel ones), as in the original.
Inputs must be divisible by 2**num_downs (256 for unet_256).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdir.models.norm import NormName, conv_bias, norm_layer


class UnetSkipBlock(nn.Module):
    """One U-Net level: down → `sub` → up, with the skip concatenation."""

    def __init__(
        self,
        outer: int,
        inner: int,
        in_ch: int | None = None,
        sub: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: NormName = "batch",
        dropout: bool = False,
    ):
        super().__init__()
        self.outermost = outermost
        bias = conv_bias(norm)
        in_ch = outer if in_ch is None else in_ch
        down_conv = nn.Conv2d(in_ch, inner, 4, 2, 1, bias=bias)
        if outermost:
            assert sub is not None
            down = [down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
            layers = [*down, sub, *up]
        elif innermost:
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias),
                norm_layer(norm, outer),
            ]
            layers = [*down, *up]
        else:
            assert sub is not None
            down = [nn.LeakyReLU(0.2, True), down_conv, norm_layer(norm, inner)]
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias),
                norm_layer(norm, outer),
            ]
            if dropout:
                up.append(nn.Dropout(0.5))
            layers = [*down, sub, *up]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net G of pix2pix: [B,in,H,W] in [-1,1] → [B,out,H,W] in [-1,1] (tanh)."""

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: NormName = "batch",
        dropout: bool = False,
    ):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be ≥ 5 (got {num_downs})")
        self.num_downs = num_downs
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, sub=block, norm=norm, dropout=dropout)
        block = UnetSkipBlock(ngf * 4, ngf * 8, sub=block, norm=norm)
        block = UnetSkipBlock(ngf * 2, ngf * 4, sub=block, norm=norm)
        block = UnetSkipBlock(ngf, ngf * 2, sub=block, norm=norm)
        self.model = UnetSkipBlock(out_ch, ngf, in_ch=in_ch, sub=block, outermost=True, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        m = 2**self.num_downs
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"U-Net with {self.num_downs} downsamplings needs H, W divisible by {m}; got {tuple(x.shape[-2:])}"
            )
        return self.model(x)
