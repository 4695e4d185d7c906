"""70×70 PatchGAN discriminator (pix2pix / CycleGAN ``NLayerDiscriminator``, n_layers = 3).

Layout (k = 4, pad = 1; C = ndf):
  conv(in→C, s2, bias) + LReLU(0.2)
  for n in 1..n_layers-1: conv(C·min(2^(n-1),8) → C·min(2^n,8), s2) + norm + LReLU
  conv(→ C·min(2^n_layers, 8), s1) + norm + LReLU
  conv(→ 1, s1, bias)                      → patch logits [B, 1, H/8 - 2, W/8 - 2]
The inner convs have a bias only when the norm is not BatchNorm (see `mdir.models.norm`).
pix2pix feeds the channel-concatenated (input, output) pair (in = 6).
"""

from __future__ import annotations

from torch import Tensor, nn

from mdir.models.norm import NormName, conv_bias, norm_layer


class PatchDiscriminator(nn.Module):
    """PatchGAN D; returns raw logits (the GAN loss applies sigmoid / LSGAN)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3, norm: NormName = "batch"):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=bias),
            norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, 1, 1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
