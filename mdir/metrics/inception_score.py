"""Inception Score (Salimans et al. 2016; thesis eq. 4.4–4.5).

IS = exp(E_x KL(p(k|x) ‖ p(k))), computed on `splits` disjoint chunks, reported as mean and
standard deviation over the chunks (the original protocol). p(k|x) = softmax(logits), where
the logits are the 1008 outputs of the FID Inception network. Bounds: 1 ≤ IS ≤ #classes.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of IS over `splits` chunks of the logits [N, K] (float64 inside)."""
    lg = np.asarray(logits, dtype=np.float64)
    if lg.ndim != 2:
        raise ValueError(f"logits must be [N, K], got {lg.shape}")
    n = lg.shape[0]
    if n < splits:
        raise ValueError(f"IS with {splits} splits needs at least {splits} images, got {n}")
    logp = _log_softmax(lg)
    scores = []
    for chunk in np.array_split(np.arange(n), splits):
        lp = logp[chunk]
        p = np.exp(lp)
        log_marginal = np.log(p.mean(axis=0) + 1e-300)
        kl = (p * (lp - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
