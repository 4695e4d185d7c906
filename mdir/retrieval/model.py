"""The embedding model the retrieval job trains: input normalisation + `RetrievalNet`.

mdir images are RGB in [-1, 1]; `RetrievalNet` (``mdir.models.retrieval``) expects the
ImageNet mean/std normalisation its pretrained trunk was trained with, so `EmbeddingModel`
converts first. The learned whitening Lw is stored *inside* the network as its
``whiten`` Linear (weight P, bias −Pμ), so the registered model carries it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mdir.models.retrieval import RetrievalNet
from mdir.retrieval.config import RetrievalModelConfig
from mdir.retrieval.data import Images, per_shape
from mdir.retrieval.whitening import Whitening


class EmbeddingModel(nn.Module):
    """[-1,1] images [B,3,H,W] → L2-normalised descriptors [B, D] (with Lw once learned).

    `forward` also takes a list of [3, H, W] images of different shapes (aspect-kept
    retrieval images) and runs the network once per shape group, in one call, so DDP sees one
    forward per step. The trunks here have no batch-dependent layers in eval mode and the
    retrieval job keeps BatchNorm frozen (cirtorch), so grouping gives the same descriptors
    as cirtorch's one image at a time."""

    def __init__(self, cfg: RetrievalModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = RetrievalNet(
            trunk=cfg.arch,
            weights=cfg.weights,
            allow_random=cfg.allow_random,
            gem_p=cfg.gem_p,
            whitening=False,
            tiny_width=cfg.width,
        )
        mean = torch.tensor(self.net.meta["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(self.net.meta["std"]).view(1, 3, 1, 1)
        self.register_buffer("in_mean", mean, persistent=False)
        self.register_buffer("in_std", std, persistent=False)

    @property
    def meta(self) -> dict[str, Any]:
        return self.net.meta

    @property
    def dim(self) -> int:
        return int(self.net.meta["outputdim"])

    @property
    def gem_p(self) -> float:
        """GeM exponent p (mean over channels): the power of multi-scale averaging (cirtorch msp)."""
        return float(self.net.pool.p.detach().mean())

    def _normalise(self, x: Tensor) -> Tensor:
        return ((x + 1.0) * 0.5 - self.in_mean) / self.in_std

    def pooled(self, x: Images) -> Tensor:
        """Descriptors before Lw: L2N(GeM(trunk(x))) [B, D]."""
        return per_shape(lambda b: self.net.pooled(self._normalise(b)), x)

    def whitened(self, d: Tensor) -> Tensor:
        """Apply Lw (+ L2N) when learned; identity before."""
        return self.net.whitened(d)

    def forward(self, x: Images) -> Tensor:
        return per_shape(lambda b: self.net(self._normalise(b)), x)

    def set_whitening(self, w: Whitening) -> None:
        """Install Lw as the network's ``whiten`` layer (d = L2N(P(L2N(GeM)) − Pμ))."""
        lin = w.as_linear().to(next(self.net.parameters()).device)
        self.net.whiten = lin
        self.net.meta["whitening"] = True
        self.net.meta["outputdim"] = lin.out_features

    def load_whitening_state(self, state: dict[str, Tensor]) -> None:
        if "whiten.weight" not in state:
            return
        w = state["whiten.weight"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(state["whiten.bias"])
        self.net.whiten = lin
        self.net.meta["whitening"] = True
        self.net.meta["outputdim"] = lin.out_features


def build_model(cfg: RetrievalModelConfig) -> EmbeddingModel:
    return EmbeddingModel(cfg)
