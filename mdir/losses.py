"""Every loss of both papers as a small pure function of tensors.

Each function returns a scalar tensor (mean over the batch unless noted); `weighted_sum`
combines named terms into ``(total, {name: float})`` for logging. Paper symbols:

* GAN (thesis eq. 2.1/2.6, pix2pix & CycleGAN; MDUIT eq. 2): `gan_loss(logits, target_is_real,
  kind)` — ``vanilla`` = BCE with logits (the generator uses the non-saturating form, i.e.
  real labels for fakes), ``lsgan`` = MSE to 1/0. `discriminator_loss` = mean of the real and
  fake terms ("D loss = mean of real and fake").
* L1 (pix2pix, λ = 100), cycle consistency ‖G_B(G_A(a)) − a‖₁ (CycleGAN, λ = 10), identity.
* `normalized_weights` — the thesis' loss-weight normalisation λ_i / Σλ, e.g. pix2pix
  λ1 = 1/(1+λ), λ2 = λ/(1+λ).
* MDUIT: `l1_loss` for L_rec^self / L_rec^cyc (eq. 3); `content_triplet_loss` = L_con^c (eq. 4);
  `filter_cosine_loss` = L_con^a (eq. 4); `nce_loss` = L_NCE (eq. 5).
* Retrieval: `contrastive_loss` (Radenović et al.; cirtorch's tuple form).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

GanKind = Literal["vanilla", "lsgan"]


def gan_loss(logits: Tensor, target_is_real: bool, kind: GanKind = "vanilla") -> Tensor:
    """Loss of discriminator `logits` against an all-real / all-fake target.

    vanilla: BCE-with-logits; for the generator call it with ``target_is_real=True`` on
    fakes (non-saturating: minimise −log D(G(x)) instead of maximising log(1 − D(G(x)))).
    lsgan: mean squared error to 1 (real) or 0 (fake)."""
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"unknown GAN loss {kind!r}; valid: vanilla, lsgan")


def discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, kind: GanKind = "vanilla"
) -> Tensor:
    """D loss = ½ (L(D(real), 1) + L(D(fake), 0))."""
    return 0.5 * (gan_loss(real_logits, True, kind) + gan_loss(fake_logits, False, kind))


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error ‖pred − target‖₁ / N (pix2pix L1, MDUIT L_rec)."""
    return (pred - target).abs().mean()


def cycle_loss(reconstructed: Tensor, original: Tensor) -> Tensor:
    """CycleGAN L_cyc for one direction: ‖G_B(G_A(a)) − a‖₁ (mean)."""
    return l1_loss(reconstructed, original)


def identity_loss(same: Tensor, original: Tensor) -> Tensor:
    """CycleGAN identity term ‖G_A(b) − b‖₁ (mean)."""
    return l1_loss(same, original)


def normalized_weights(weights: Mapping[str, float], normalize: bool = True) -> dict[str, float]:
    """Thesis §3.2.4: divide every loss weight by the sum of all weights.

    ``{"gan": 1, "l1": λ}`` → ``{"gan": 1/(1+λ), "l1": λ/(1+λ)}``. With `normalize`
    False the weights are returned unchanged."""
    if not normalize:
        return dict(weights)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"loss weights must sum to a positive number, got {dict(weights)}")
    return {k: v / total for k, v in weights.items()}


def weighted_sum(
    terms: Mapping[str, Tensor], weights: Mapping[str, float]
) -> tuple[Tensor, dict[str, float]]:
    """Σ_k w_k · term_k and the unweighted terms as floats (for logging); terms whose
    weight is 0 are skipped (not even logged as computed)."""
    total: Tensor | None = None
    logs: dict[str, float] = {}
    for k, t in terms.items():
        w = weights.get(k, 1.0)
        logs[k] = float(t.detach())
        if w == 0:
            continue
        total = w * t if total is None else total + w * t
    if total is None:
        raise ValueError("weighted_sum: every weight is 0")
    return total, logs


def content_triplet_loss(f_s: Tensor, f_pos: Tensor, f_neg: Tensor, margin: float = 0.1) -> Tensor:
    """MDUIT L_con^c = max(0, ‖f_s − f_s→t‖² − ‖f_s − f_s⁻‖² + m_c), mean over the batch.

    The squared distances are *means* over the C·h·w elements of each sample (a sum over
    256·64·64 elements would make the margin m_c = 0.1 meaningless)."""
    d_pos = (f_s - f_pos).pow(2).flatten(1).mean(1)
    d_neg = (f_s - f_neg).pow(2).flatten(1).mean(1)
    return F.relu(d_pos - d_neg + margin).mean()


def filter_cosine_loss(w_t: Tensor, w_pos: Tensor, w_neg: Tensor) -> Tensor:
    """MDUIT L_con^a = max(0, 1 − Δ(W_t, W_s→t) + Δ(W_t, W_t⁻)), Δ = cosine similarity of
    the flattened filters, mean over the batch."""
    sim_pos = F.cosine_similarity(w_t.flatten(1), w_pos.flatten(1), dim=1)
    sim_neg = F.cosine_similarity(w_t.flatten(1), w_neg.flatten(1), dim=1)
    return F.relu(1.0 - sim_pos + sim_neg).mean()


def nce_loss(z: Tensor, z_pos: Tensor, z_neg: Tensor, tau: float = 0.07) -> Tensor:
    """MDUIT L_NCE (SimCLR/InfoNCE form, eq. 5), mean over the batch.

    z, z_pos [B, K] (L2-normalised), z_neg [B, N_neg, K] or [N_neg, K] (shared negatives):
    −log( e^{z·z⁺/τ} / (e^{z·z⁺/τ} + Σ_i e^{z·z_i⁻/τ}) ) = cross-entropy with class 0."""
    pos = (z * z_pos).sum(1, keepdim=True)  # [B, 1]
    neg = z @ z_neg.t() if z_neg.dim() == 2 else torch.einsum("bk,bnk->bn", z, z_neg)
    logits = torch.cat([pos, neg], 1) / tau
    return F.cross_entropy(logits, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))


def contrastive_loss(x: Tensor, label: Tensor, margin: float = 0.7, eps: float = 1e-6) -> Tensor:
    """Retrieval contrastive loss over tuples (Radenović et al., cirtorch's form, summed).

    x [N, D]: descriptors of consecutive tuples, each starting with its query; label [N]:
    −1 for a query, 1 for a matching (positive) image, 0 for a non-matching one. For every
    non-query row with query q: ½ d² if matching, ½ max(0, margin − d)² otherwise, where
    d = ‖x − q‖₂. Returns the sum over all pairs (as cirtorch)."""
    if x.dim() != 2 or label.dim() != 1 or x.shape[0] != label.shape[0]:
        raise ValueError(
            f"contrastive_loss: x [N, D] and label [N] expected, got {tuple(x.shape)}, {tuple(label.shape)}"
        )
    is_q = label == -1
    if not bool(is_q[0]):
        raise ValueError("contrastive_loss: the first row must be a query (label −1)")
    # index of the query each row belongs to
    q_index = torch.cummax(
        torch.where(is_q, torch.arange(len(label), device=x.device), 0), 0
    ).values
    rows = ~is_q
    q = x[q_index[rows]]
    d = torch.linalg.vector_norm(x[rows] - q + eps, dim=1)
    lbl = label[rows].to(x.dtype)
    return (0.5 * lbl * d.pow(2) + 0.5 * (1 - lbl) * F.relu(margin - d).pow(2)).sum()
