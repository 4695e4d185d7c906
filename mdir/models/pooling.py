"""Generalised-mean pooling (Radenović et al.) and L2 normalisation.

`gem` is the stateless function; `GeM` holds the learnable exponent p (init 3) —
the functional/module split of cirtorch. Used by the retrieval net and MDUIT's head H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gem(x: Tensor, p: Tensor | float = 3.0, eps: float = 1e-6) -> Tensor:
    """GeM over the spatial dims: (mean(clamp(x, eps)^p))^(1/p); [B,C,H,W] → [B,C,1,1]."""
    return F.avg_pool2d(x.clamp(min=eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p)


def l2n(x: Tensor, eps: float = 1e-6) -> Tensor:
    """L2-normalise rows of [B, D] (or dim 1 of any tensor)."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)


class GeM(nn.Module):
    """GeM pooling with a learnable p (init 3); output [B, C] (flattened)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        self.eps = eps
        t = torch.ones(1) * p
        if learnable:
            self.p = nn.Parameter(t)
        else:
            self.register_buffer("p", t)

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps).flatten(1)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.4f}, eps={self.eps}"
