"""Retrieval network: conv trunk → GeM (learnable p, init 3) → L2N → optional whitening → L2N.

As in Radenović et al. / cirtorch (the thesis' retrieval baseline "VGG16 GeM"):
descriptor d = L2N(Lw(L2N(GeM(trunk(x))))) with Lw an optional learned linear whitening
(`nn.Linear(D, D_out)` with bias = the centring shift). Inputs are RGB images normalised with
the ImageNet mean/std (`meta["mean"]`, `meta["std"]`). Trunks: ``vgg16`` (conv layers up to
the last ReLU, D = 512), ``resnet50`` / ``resnet101`` (up to layer4, D = 2048), ``tiny`` (a 3-conv test trunk,
D = `tiny_width`, random init; for tests only).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from mdir.models.pooling import GeM, l2n
from mdir.models.weights import load_trunk

TrunkName = Literal["vgg16", "resnet50", "resnet101", "tiny"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _tiny_trunk(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width // 2, 3, 2, 1),
        nn.ReLU(True),
        nn.Conv2d(width // 2, width, 3, 2, 1),
        nn.ReLU(True),
        nn.Conv2d(width, width, 3, 1, 1),
        nn.ReLU(True),
    )


def build_trunk(
    trunk: TrunkName, weights: str | None = None, allow_random: bool = False, tiny_width: int = 16
) -> tuple[nn.Module, int, str]:
    """(conv trunk, output channels, weights label)."""
    if trunk == "tiny":
        return _tiny_trunk(tiny_width), tiny_width, "random"
    model, label = load_trunk(trunk, weights, allow_random)
    if trunk == "vgg16":
        return model.features[:-1], 512, label  # drop the last max-pool (cirtorch does too)
    children = list(model.children())[:-2]  # drop avgpool + fc
    return nn.Sequential(*children), 2048, label


class RetrievalNet(nn.Module):
    """Global descriptor network; `forward` returns L2-normalised descriptors [B, D]."""

    def __init__(
        self,
        trunk: TrunkName = "vgg16",
        weights: str | None = None,
        allow_random: bool = False,
        gem_p: float = 3.0,
        whitening: bool = False,
        whitening_dim: int | None = None,
        tiny_width: int = 16,
    ):
        super().__init__()
        self.features, dim, label = build_trunk(trunk, weights, allow_random, tiny_width)
        self.pool = GeM(p=gem_p)
        self.whiten = nn.Linear(dim, whitening_dim or dim, bias=True) if whitening else None
        out_dim = (whitening_dim or dim) if whitening else dim
        #: travels with the network into checkpoints (cirtorch's `meta`)
        self.meta: dict[str, Any] = {
            "architecture": trunk,
            "pooling": "gem",
            "whitening": whitening,
            "outputdim": out_dim,
            "weights": label,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }

    @property
    def weights_label(self) -> str:
        """Which trunk weights were loaded ("random" for random init)."""
        return self.meta["weights"]

    def pooled(self, x: Tensor) -> Tensor:
        """L2N(GeM(trunk(x))): the descriptor before Lw [B, D] (multi-scale averages these)."""
        return l2n(self.pool(self.features(x)))

    def whitened(self, d: Tensor) -> Tensor:
        """L2N(Lw(d)) when whitening is installed, else `d` unchanged."""
        return l2n(self.whiten(d)) if self.whiten is not None else d

    def forward(self, x: Tensor) -> Tensor:
        return self.whitened(self.pooled(x))
