"""CUT's contrastive parts (Park et al., ECCV 2020, "Contrastive Learning for Unpaired
Image-to-Image Translation"): encoder features of the ResNet generator, the patch sampler
with its MLP head H_l (the paper's F), and the PatchNCE loss.

Paper ↔ code: G_enc = the first layers of `ResnetGenerator.model` (`encode_features`);
H_l = `PatchSampleMLP.mlps[l]` (2-layer MLP, 256 units, then L2 normalisation); ẑ_l / z_l =
sampled features of the output / input image; τ = `tau`; ℓ(v, v⁺, v⁻) = `patch_nce_loss`.

Layer indices count the entries of ``ResnetGenerator.model`` (the reference's
``nce_layers``): with resnet_9blocks, 0 = the reflection-padded input (3 channels), 4 = the
first stride-2 conv (2·ngf, H/2), 8 = the second down-sampling's norm (4·ngf, H/4), 12 and 16
= the outputs of residual blocks 3 and 7 (4·ngf, H/4). The MLP head is built up front from
these known channel counts (`encoder_channels`), so the optimiser exists before the first
batch (the reference creates it lazily on the first forward).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdir.models.resnet_gen import ResnetBlock


def encoder_channels(layers: Sequence[nn.Module], ids: Sequence[int], in_ch: int = 3) -> list[int]:
    """Channels of the output of each layer in `ids`, found by walking `layers` (convs change
    the channel count, every other layer keeps it)."""
    out: list[int] = []
    c = in_ch
    for i, layer in enumerate(layers):
        if i > max(ids):
            break
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            c = layer.out_channels
        elif isinstance(layer, ResnetBlock):
            pass  # x + block(x): same channels
        if i in ids:
            out.append(c)
    if len(out) != len(ids):
        raise ValueError(f"nce layers {list(ids)} exceed the generator's {len(layers)} layers")
    return out


def encode_features(layers: Sequence[nn.Module], x: Tensor, ids: Sequence[int]) -> list[Tensor]:
    """Outputs of the layers `ids` for input `x` [B,C,H,W], running only up to the last one."""
    feats: list[Tensor] = []
    last = max(ids)
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in ids:
            feats.append(x)
        if i == last:
            break
    return feats


def sample_patch_ids(
    feats: Sequence[Tensor], num_patches: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Per layer, `num_patches` distinct spatial positions (all of them when fewer or when
    `num_patches` is 0); shared by every image of the batch, as in the reference."""
    ids = []
    for f in feats:
        hw = f.shape[2] * f.shape[3]
        n = hw if num_patches <= 0 else min(num_patches, hw)
        perm = torch.randperm(hw, generator=generator)
        ids.append(perm[:n].to(f.device))
    return ids


class PatchSampleMLP(nn.Module):
    """H_l per NCE layer: gather features at given positions, 2-layer MLP, L2-normalise.

    ``forward(feats, patch_ids)``: feats[l] [B,C_l,H_l,W_l], patch_ids[l] [P] →
    list of [B·P, nc] unit vectors (rows ordered image by image)."""

    def __init__(self, channels: Sequence[int], nc: int = 256):
        super().__init__()
        self.channels = list(channels)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in channels
        )

    def forward(self, feats: Sequence[Tensor], patch_ids: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for f, ids, mlp in zip(feats, patch_ids, self.mlps, strict=True):
            b, c = f.shape[:2]
            x = f.flatten(2).transpose(1, 2)[:, ids, :]  # [B, P, C]
            out.append(F.normalize(mlp(x.reshape(-1, c)), dim=1))
        return out


def patch_nce_loss(q: Tensor, k: Tensor, batch: int, tau: float = 0.07) -> Tensor:
    """PatchNCE (paper eq. 2 / 5), one value per query patch, shape [B·P].

    q: queries ẑ [B·P, D] (output-image patches), k: keys z [B·P, D] (input-image patches,
    detached here: no gradient flows through the keys), both L2-normalised, rows ordered
    image by image. For query i the positive is key i (same position); the negatives are the
    other P − 1 keys of the same image:
    ℓ_i = −log( exp(q_i·k_i/τ) / Σ_j exp(q_i·k_j/τ) ), j over the image's P keys."""
    k = k.detach()
    d = q.shape[1]
    qb, kb = q.reshape(batch, -1, d), k.reshape(batch, -1, d)
    logits = torch.bmm(qb, kb.transpose(1, 2)) / tau  # [B, P, P]; diagonal = positives
    p = logits.shape[1]
    target = torch.arange(p, device=q.device).repeat(batch)
    return F.cross_entropy(logits.reshape(-1, p), target, reduction="none")


def init_xavier(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """CUT's default init (``init_type='xavier'``, gain 0.02): conv / linear weights
    xavier-normal, biases 0; BatchNorm weight N(1, gain)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net
