"""CycleGAN (Zhu et al. 2017; thesis eq. 2.9) on unpaired data.

Batch: ``{"A": [B,3,H,W], "B": [B,3,H,W]}`` from two independent streams.
Naming as the original code: G_A: A → B, G_B: B → A; D_A judges domain B (real B vs
G_A(A)), D_B judges domain A. Generator objective per direction:
L_GAN + λ_cyc·‖G_B(G_A(a)) − a‖₁ (+ λ_cyc·λ_idt·‖G_A(b) − b‖₁), weights optionally
normalised by their sum (thesis §3.2.4). D loss = ½(real + fake) with fakes drawn from
an image pool of 50 per discriminator. One step = G step (D's frozen) then D step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mdir import losses
from mdir.methods.common import GANMethod, raw, set_requires_grad
from mdir.methods.config import CycleGANConfig
from mdir.methods.pool import ImagePool
from mdir.models.init import init_weights
from mdir.models.patchgan import PatchDiscriminator
from mdir.models.resnet_gen import ResnetGenerator


def build_cyclegan_generator(cfg: CycleGANConfig) -> ResnetGenerator:
    """One CycleGAN generator (resnet_{n_blocks}blocks) with N(0, init_std) init."""
    return init_weights(
        ResnetGenerator(3, 3, cfg.ngf, cfg.n_blocks, cfg.norm, cfg.dropout), cfg.init_std
    )


def build_cyclegan_discriminator(cfg: CycleGANConfig) -> PatchDiscriminator:
    return init_weights(PatchDiscriminator(3, cfg.ndf, cfg.n_layers_d, cfg.norm), cfg.init_std)


class CycleGAN(GANMethod):
    """CycleGAN method: networks {"G_A", "G_B", "D_A", "D_B"}, optimisers {"G", "D"}."""

    name = "cyclegan"
    data_mode: ClassVar = CycleGANConfig.data_mode
    optim_groups: ClassVar = {"G": ("G_A", "G_B"), "D": ("D_A", "D_B")}

    def __init__(self, cfg: CycleGANConfig, device: torch.device | str | None = None):
        super().__init__(cfg, device)
        self.networks = {
            "G_A": build_cyclegan_generator(cfg).to(self.device),
            "G_B": build_cyclegan_generator(cfg).to(self.device),
            "D_A": build_cyclegan_discriminator(cfg).to(self.device),
            "D_B": build_cyclegan_discriminator(cfg).to(self.device),
        }
        lam = cfg.lambda_cyc
        w = losses.normalized_weights(
            {"gan": 1.0, "cycle": lam, "idt": lam * cfg.lambda_identity}, cfg.loss_weight_norm
        )
        self.weights = {
            "G_A": w["gan"], "G_B": w["gan"], "cycle_A": w["cycle"], "cycle_B": w["cycle"],
            "idt_A": w["idt"], "idt_B": w["idt"],
        }  # fmt: skip
        self.pool_a = ImagePool(cfg.pool_size, seed=cfg.seed)  # fakes of domain A (G_B(b))
        self.pool_b = ImagePool(cfg.pool_size, seed=cfg.seed + 1)  # fakes of domain B (G_A(a))

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        real_a, real_b = self._to_device(batch, ("A", "B"))
        n = self.networks
        kind = self.cfg.gan_loss
        fake_b = n["G_A"](real_a)
        rec_a = n["G_B"](fake_b)
        fake_a = n["G_B"](real_b)
        rec_b = n["G_A"](fake_a)

        # G step with both D's frozen
        set_requires_grad([n["D_A"], n["D_B"]], False)
        terms = {
            "G_A": losses.gan_loss(raw(n["D_A"])(fake_b), True, kind),
            "G_B": losses.gan_loss(raw(n["D_B"])(fake_a), True, kind),
            "cycle_A": losses.cycle_loss(rec_a, real_a),
            "cycle_B": losses.cycle_loss(rec_b, real_b),
        }
        if self.cfg.lambda_identity > 0:
            terms["idt_A"] = losses.identity_loss(n["G_A"](real_b), real_b)
            terms["idt_B"] = losses.identity_loss(n["G_B"](real_a), real_a)
        loss_g, logs = self._update_generator(terms)

        # D step on pooled fakes
        set_requires_grad([n["D_A"], n["D_B"]], True)
        pooled_b = self.pool_b.query(fake_b)
        pooled_a = self.pool_a.query(fake_a)
        loss_da = losses.discriminator_loss(n["D_A"](real_b), n["D_A"](pooled_b), kind)
        loss_db = losses.discriminator_loss(n["D_B"](real_a), n["D_B"](pooled_a), kind)
        self._update("D", loss_da + loss_db)
        return {
            **logs,
            "G": float(loss_g.detach()),
            "D_A": float(loss_da.detach()),
            "D_B": float(loss_db.detach()),
        }

    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        """A → B with G_A (eval mode)."""
        return self._eval_call(lambda x: raw(self.networks["G_A"])(x.to(self.device)), images)

    def generator(self) -> torch.nn.Module:
        return raw(self.networks["G_A"])

    def state_dict(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "pool_a" in state:
            self.pool_a.load_state_dict(state["pool_a"])
            self.pool_b.load_state_dict(state["pool_b"])
