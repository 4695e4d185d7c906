"""CycleGAN ResNet generator (``resnet_9blocks``), as in the original implementation.

  ReflectionPad(3), conv7(in→ngf), norm, ReLU
  2 × [conv3 s2 (c→2c), norm, ReLU]                         (→ 4·ngf channels, H/4)
  n_blocks × ResnetBlock(4·ngf): x + [RPad1, conv3, norm, ReLU, (Dropout 0.5), RPad1, conv3, norm]
  2 × [convT3 s2 p1 op1 (c→c/2), norm, ReLU]
  ReflectionPad(3), conv7(ngf→out, bias), Tanh
With InstanceNorm (affine=False) every conv keeps its bias.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from mdir.models.norm import NormName, conv_bias, norm_layer

PadName = Literal["reflect", "replicate", "zero"]


def _pad(kind: PadName, p: int) -> tuple[list[nn.Module], int]:
    """Explicit padding layers and the conv padding that goes with them."""
    if kind == "reflect":
        return [nn.ReflectionPad2d(p)], 0
    if kind == "replicate":
        return [nn.ReplicationPad2d(p)], 0
    return [], p


class ResnetBlock(nn.Module):
    """Residual block with two 3×3 convs (norm may be "none", e.g. for MDUIT's G)."""

    def __init__(
        self,
        dim: int,
        norm: NormName = "instance",
        dropout: bool = False,
        padding: PadName = "reflect",
    ):
        super().__init__()
        bias = conv_bias(norm)
        pad, p = _pad(padding, 1)
        layers: list[nn.Module] = [
            *pad,
            nn.Conv2d(dim, dim, 3, padding=p, bias=bias),
            norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        pad, p = _pad(padding, 1)
        layers += [*pad, nn.Conv2d(dim, dim, 3, padding=p, bias=bias), norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN G: [B,in,H,W] → [B,out,H,W] (tanh); H, W divisible by 4."""

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: NormName = "instance",
        dropout: bool = False,
        padding: PadName = "reflect",
    ):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias),
                norm_layer(norm, 2 * c),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, norm, dropout, padding) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias),
                norm_layer(norm, c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(
                f"ResNet generator needs H, W divisible by 4; got {tuple(x.shape[-2:])}"
            )
        return self.model(x)
