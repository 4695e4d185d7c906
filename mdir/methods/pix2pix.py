"""pix2pix (Isola et al. 2017; thesis eq. 2.6): conditional GAN + λ·L1 on paired data.

Batch: ``{"A": input [B,3,H,W], "B": target [B,3,H,W]}`` row-aligned (paired mode).
G: U-Net `unet_256`; D: 70×70 PatchGAN on cat(A, ·) (6 channels). One step = D step
(½[L(D(A,B),1) + L(D(A,G(A)),0)]) then G step (λ_gan·L(D(A,G(A)),1) + λ_L1·‖G(A) − B‖₁),
with λ_gan = 1, λ_L1 = 100, or 1/(1+λ), λ/(1+λ) under loss-weight normalisation.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mdir import losses
from mdir.methods.common import GANMethod, raw, set_requires_grad
from mdir.methods.config import Pix2PixConfig
from mdir.models.init import init_weights
from mdir.models.patchgan import PatchDiscriminator
from mdir.models.unet import UnetGenerator


def build_pix2pix_generator(cfg: Pix2PixConfig) -> UnetGenerator:
    """The pix2pix G for `cfg` (random init N(0, init_std))."""
    g = UnetGenerator(3, 3, cfg.num_downs, cfg.ngf, cfg.norm, cfg.dropout)
    return init_weights(g, cfg.init_std)


def build_pix2pix_discriminator(cfg: Pix2PixConfig) -> PatchDiscriminator:
    """PatchGAN on the channel-concatenated (input, output) pair."""
    return init_weights(PatchDiscriminator(6, cfg.ndf, cfg.n_layers_d, cfg.norm), cfg.init_std)


class Pix2Pix(GANMethod):
    """pix2pix method: networks {"G", "D"}, optimisers {"G", "D"}."""

    name = "pix2pix"
    data_mode: ClassVar = Pix2PixConfig.data_mode
    optim_groups: ClassVar = {"G": ("G",), "D": ("D",)}

    def __init__(self, cfg: Pix2PixConfig, device: torch.device | str | None = None):
        super().__init__(cfg, device)
        self.networks = {
            "G": build_pix2pix_generator(cfg).to(self.device),
            "D": build_pix2pix_discriminator(cfg).to(self.device),
        }
        self.weights = losses.normalized_weights(
            {"G_GAN": 1.0, "G_L1": cfg.lambda_l1}, cfg.loss_weight_norm
        )

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        real_a, real_b = self._to_device(batch, ("A", "B"))
        G, D = self.networks["G"], self.networks["D"]  # noqa: N806
        kind = self.cfg.gan_loss
        fake_b = G(real_a)

        # D step: maximise log D(A,B) + log(1 − D(A,G(A)))
        set_requires_grad([D], True)
        pred_fake = D(torch.cat([real_a, fake_b.detach()], 1))
        pred_real = D(torch.cat([real_a, real_b], 1))
        loss_d_fake = losses.gan_loss(pred_fake, False, kind)
        loss_d_real = losses.gan_loss(pred_real, True, kind)
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        self._update("D", loss_d)

        # G step: D frozen (and called unwrapped, see mdir.methods.common)
        set_requires_grad([D], False)
        terms = {
            "G_GAN": losses.gan_loss(raw(D)(torch.cat([real_a, fake_b], 1)), True, kind),
            "G_L1": losses.l1_loss(fake_b, real_b),
        }
        loss_g, logs = self._update_generator(terms)
        set_requires_grad([D], True)
        return {
            **logs,
            "G": float(loss_g.detach()),
            "D": float(loss_d.detach()),
            "D_real": float(loss_d_real.detach()),
            "D_fake": float(loss_d_fake.detach()),
        }

    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        """A → B as the registered model will translate (``method.test_mode``: by default the
        reference's train mode, dropout on and batch statistics; see
        `mdir.methods.generators.inference_mode`), so samples and evaluation see it too."""
        from mdir.methods.generators import translate_with

        return translate_with(raw(self.networks["G"]), self.cfg, images)

    def generator(self) -> torch.nn.Module:
        return raw(self.networks["G"])
