"""CUT and FastCUT (Park et al., ECCV 2020) on unpaired data: one generator, one
discriminator, and patchwise contrastive learning instead of a cycle.

Batch: ``{"A": [B,3,H,W], "B": [B,3,H,W]}`` from two independent streams (like CycleGAN).
Networks: G (resnet_9blocks, A → B), D (PatchGAN on domain B), F (the MLP head H_l of
`mdir.models.patchnce`, trained with G: optimiser "G" holds G and F). One step, as the
reference: x = A (and y = B when identity NCE is on) go through G in one batch, then

* D step: ½ [L(D(y), 1) + L(D(G(x)), 0)] (LSGAN by default);
* G step (D frozen): λ_GAN·L(D(G(x)), 1) + λ_NCE·L_PatchNCE, where L_PatchNCE is the mean
  over NCE layers and query patches of ℓ(ẑ, z⁺, z⁻) between G's encoder features of G(x) and
  of x (paper eq. 5); with identity NCE it is ½ (L_PatchNCE(x, G(x)) + L_PatchNCE(y, G(y))).

The keys z (features of the input) carry no gradient (the reference detaches them), so they
are computed under ``no_grad`` with the unwrapped G and F; only the queries ẑ go through F's
DDP wrapper, once per step (identity and translation share one batch). FastCUT's flip
equivariance flips G's input half the time and flips the query features back, so that query
and key positions match. Patch positions and flips come from torch's global RNG (per-rank
seeded and checkpointed by the loop).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mdir import losses
from mdir.methods.common import GANMethod, raw, set_requires_grad
from mdir.methods.cut_config import CUTConfig
from mdir.models.init import init_weights
from mdir.models.patchgan import PatchDiscriminator
from mdir.models.patchnce import (
    PatchSampleMLP,
    encode_features,
    encoder_channels,
    init_xavier,
    patch_nce_loss,
    sample_patch_ids,
)
from mdir.models.resnet_gen import ResnetGenerator


def _init(net: nn.Module, cfg: CUTConfig) -> nn.Module:
    return (
        init_xavier(net, cfg.init_std) if cfg.init == "xavier" else init_weights(net, cfg.init_std)
    )


def build_cut_generator(cfg: CUTConfig) -> ResnetGenerator:
    """G: resnet_{n_blocks}blocks, no dropout (CUT: ``--no_dropout``)."""
    return _init(ResnetGenerator(3, 3, cfg.ngf, cfg.n_blocks, cfg.norm, False), cfg)


def build_cut_discriminator(cfg: CUTConfig) -> PatchDiscriminator:
    return _init(PatchDiscriminator(3, cfg.ndf, cfg.n_layers_d, cfg.norm), cfg)


def build_cut_head(cfg: CUTConfig, generator: ResnetGenerator) -> PatchSampleMLP:
    """F, built up front from the channel counts of G's NCE layers."""
    channels = encoder_channels(generator.model, cfg.nce_layers)
    return _init(PatchSampleMLP(channels, cfg.netf_nc), cfg)


class CUT(GANMethod):
    """CUT method: networks {"G", "D", "F"}, optimisers {"G" (G and F), "D"}."""

    name = "cut"
    data_mode: ClassVar = CUTConfig.data_mode
    optim_groups: ClassVar = {"G": ("G", "F"), "D": ("D",)}

    def __init__(self, cfg: CUTConfig, device: torch.device | str | None = None):
        super().__init__(cfg, device)
        g = build_cut_generator(cfg)
        self.networks = {
            "G": g.to(self.device),
            "D": build_cut_discriminator(cfg).to(self.device),
            "F": build_cut_head(cfg, g).to(self.device),
        }
        self.weights = losses.normalized_weights(
            {"G_GAN": cfg.lambda_gan, "NCE": cfg.lambda_nce}, cfg.loss_weight_norm
        )

    def nce_per_image(self, source: Tensor, output: Tensor, flipped: bool = False) -> Tensor:
        """PatchNCE between G's encoder features of `output` (queries, with gradient) and of
        `source` (keys, without): mean over layers and patches, one value per image [B]."""
        cfg, n = self.cfg, self.networks
        layers = raw(n["G"]).model
        feat_q = encode_features(layers, output, cfg.nce_layers)
        if flipped:
            feat_q = [f.flip(3) for f in feat_q]
        with torch.no_grad():
            feat_k = encode_features(layers, source, cfg.nce_layers)
            ids = sample_patch_ids(feat_k, cfg.num_patches)
            keys = raw(n["F"])(feat_k, ids)
        queries = n["F"](feat_q, ids)
        b = source.shape[0]
        per_layer = [
            patch_nce_loss(q, k, b, cfg.nce_tau).view(b, -1).mean(1)
            for q, k in zip(queries, keys, strict=True)
        ]
        return torch.stack(per_layer).mean(0)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        real_a, real_b = self._to_device(batch, ("A", "B"))
        n, cfg, kind = self.networks, self.cfg, self.cfg.gan_loss
        b = real_a.shape[0]
        source = torch.cat([real_a, real_b]) if cfg.nce_idt else real_a
        flipped = cfg.flip_equivariance and bool(torch.rand(()) < 0.5)
        fake = n["G"](source.flip(3) if flipped else source)
        fake_b = fake[:b]

        # D step: real y vs G(x)
        set_requires_grad([n["D"]], True)
        loss_d = losses.discriminator_loss(n["D"](real_b), n["D"](fake_b.detach()), kind)
        self._update("D", loss_d)

        # G (and F) step with D frozen
        set_requires_grad([n["D"]], False)
        nce = self.nce_per_image(source, fake, flipped)
        terms = {
            "G_GAN": losses.gan_loss(raw(n["D"])(fake_b), True, kind),
            "NCE": 0.5 * (nce[:b].mean() + nce[b:].mean()) if cfg.nce_idt else nce.mean(),
        }
        loss_g, logs = self._update_generator(terms)
        set_requires_grad([n["D"]], True)
        out = {**logs, "NCE_X": float(nce[:b].mean().detach()), "G": float(loss_g.detach())}
        if cfg.nce_idt:
            out["NCE_Y"] = float(nce[b:].mean().detach())
        return {**out, "D": float(loss_d.detach())}

    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        """A → B with G (eval mode)."""
        return self._eval_call(lambda x: raw(self.networks["G"])(x.to(self.device)), images)

    def generator(self) -> nn.Module:
        return raw(self.networks["G"])
