"""Learned whitening Lw (Radenović, Tolias, Chum, TPAMI 2018, section 4; cirtorch ``whitenlearn``).

Post-processing of the trained network's descriptors, learned from *matching pairs*
(query i, positive j) of the training data:

1. centre with the mean of the query descriptors:  μ = mean_i f(i);
2. whitening from the intra-class covariance of pair differences
   C_S = Σ_(i,j)∈P (f(i) − f(j))(f(i) − f(j))ᵀ / |P|,   P_w = C_S^{-1/2}  (Cholesky inverse);
3. rotate by the PCA of the whitened, centred data:  C_D = eig( P_w (f − μ)(f − μ)ᵀ P_wᵀ ),
   P = Vᵀ P_w with eigenvectors sorted by decreasing eigenvalue.

Whitened descriptor: f_w = normalize(P[:d] (f − μ)). `Whitening` is a module so it can be
stored next to the network (state dict with ``mean`` and ``proj``); it is also expressible as
a `Linear` (weight P, bias −Pμ) for networks that carry a whitening layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def learn_whitening(
    x: np.ndarray, qidx: np.ndarray, pidx: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors `x` [N, D] and matching pairs (qidx[k], pidx[k]) → (μ [D], P [D, D]).

    `eps`·I regularises C_S so that fewer pairs than dimensions still give a usable P.
    """
    x = np.asarray(x, dtype=np.float64)
    qidx = np.asarray(qidx, dtype=np.int64)
    pidx = np.asarray(pidx, dtype=np.int64)
    if len(qidx) == 0 or len(qidx) != len(pidx):
        raise ValueError(
            "learn_whitening needs at least one (query, positive) pair and equal index lists"
        )
    mu = x[qidx].mean(axis=0)
    diff = x[qidx] - x[pidx]  # [P, D]
    cov_s = diff.T @ diff / len(diff) + eps * np.eye(x.shape[1])
    p_w = np.linalg.inv(np.linalg.cholesky(cov_s))  # C_S^{-1/2}: p_w C_S p_wᵀ = I
    xw = (x - mu) @ p_w.T
    cov_d = xw.T @ xw
    evals, evecs = np.linalg.eigh(cov_d)
    order = np.argsort(evals)[::-1]
    proj = evecs[:, order].T @ p_w
    return mu, proj


def apply_whitening(
    x: np.ndarray, mu: np.ndarray, proj: np.ndarray, dim: int | None = None
) -> np.ndarray:
    """f_w = normalize(P[:dim] (f − μ)) for rows of `x` [N, D] (numpy twin of `Whitening`)."""
    p = proj if dim is None else proj[:dim]
    y = (np.asarray(x, dtype=np.float64) - mu) @ p.T
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


class Whitening(nn.Module):
    """Lw as a module: buffers ``mean`` [D] and ``proj`` [d, D]; output is L2-normalised."""

    def __init__(self, mean: Tensor | np.ndarray, proj: Tensor | np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("proj", torch.as_tensor(np.asarray(proj), dtype=torch.float32))

    @classmethod
    def learn(
        cls, x: np.ndarray, qidx: np.ndarray, pidx: np.ndarray, dim: int | None = None
    ) -> Whitening:
        mu, proj = learn_whitening(x, qidx, pidx)
        return cls(mu, proj if dim is None else proj[:dim])

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize((x - self.mean) @ self.proj.T, dim=-1)

    def as_linear(self) -> nn.Linear:
        """The same map as ``Linear(weight=P, bias=−Pμ)`` (normalisation not included)."""
        lin = nn.Linear(self.proj.shape[1], self.proj.shape[0])
        with torch.no_grad():
            lin.weight.copy_(self.proj)
            lin.bias.copy_(-(self.proj @ self.mean))
        return lin
