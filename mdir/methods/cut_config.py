"""CUT / FastCUT config (Park et al., ECCV 2020); spec in `mdir.methods.specs.cut`, method
in `mdir.methods.cut`. Torch-free, like every method config.

Defaults are the paper's (and its reference code's): resnet_9blocks G, 70×70 PatchGAN D,
LSGAN, λ_GAN = 1, λ_NCE = 1, NCE layers 0, 4, 8, 12, 16 of G's encoder, 256 patches per
layer, τ = 0.07, MLP head width 256, identity NCE on (PatchNCE on (y, G(y))), xavier init
with gain 0.02, Adam(2e-4, 0.5, 0.999), LR constant for half the epochs then linear decay.
``variant: fastcut`` switches to FastCUT's defaults: λ_NCE = 10, no identity NCE, flip
equivariance, 150 + 50 epochs (decay after 0.75) — fields given explicitly still win.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from mdir.methods.config import _OptimFields

#: FastCUT's defaults (reference ``--CUT_mode FastCUT``)
FASTCUT = {
    "lambda_nce": 10.0,
    "nce_idt": False,
    "flip_equivariance": True,
    "decay_start_frac": 0.75,
}


class CUTConfig(_OptimFields):
    """CUT: one ResNet generator G, one PatchGAN D, the PatchNCE head F (`mdir.models.patchnce`)."""

    data_mode: ClassVar[str] = "unpaired"
    name: Literal["cut"] = Field("cut", description="Method discriminator.")
    variant: Literal["cut", "fastcut"] = Field(
        "cut", description="cut (paper defaults) or fastcut (λ_NCE = 10, no identity NCE, flips)."
    )
    gan_loss: Literal["vanilla", "lsgan"] = Field(
        "lsgan", description="GAN objective (CUT: lsgan)."
    )
    ngf: int = Field(64, ge=1, description="Generator width.")
    ndf: int = Field(64, ge=1, description="Discriminator width.")
    n_blocks: int = Field(9, ge=0, description="Residual blocks of G (resnet_9blocks).")
    n_layers_d: int = Field(3, ge=1, description="PatchGAN layers (3 = 70×70).")
    norm: Literal["batch", "instance"] = Field("instance", description="Normalisation of G and D.")
    init: Literal["xavier", "normal"] = Field(
        "xavier",
        description="Weight init: xavier-normal with gain init_std (CUT) or N(0, init_std).",
    )
    lambda_gan: float = Field(1.0, ge=0, description="λ_GAN.")
    lambda_nce: float = Field(1.0, ge=0, description="λ_NCE (FastCUT: 10).")
    nce_idt: bool = Field(True, description="Identity PatchNCE on (y, G(y)) (FastCUT: off).")
    nce_layers: tuple[int, ...] = Field(
        (0, 4, 8, 12, 16),
        min_length=1,
        description="Indices into G's layer list whose outputs feed PatchNCE (see mdir.models.patchnce).",
    )
    num_patches: int = Field(256, ge=1, description="Sampled positions per NCE layer.")
    nce_tau: float = Field(0.07, gt=0, description="PatchNCE temperature τ.")
    netf_nc: int = Field(256, ge=1, description="Width of the MLP head H_l (hidden and output).")
    flip_equivariance: bool = Field(
        False, description="Flip the input horizontally half the time (FastCUT: on)."
    )

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant") == "fastcut":
            return {**FASTCUT, **data}
        return data
