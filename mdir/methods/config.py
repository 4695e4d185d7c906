"""Typed configs of the built-in methods (pix2pix | cyclegan | mduit); the union of every
method's config, discriminated on `name`, is `mdir.methods.specs.MethodConfig`.

Every paper hyper-parameter is a field with the paper's default (pix2pix / CycleGAN: the
thesis and the original junyanz code; MDUIT: the MDUIT paper). LR schedule (all methods):
constant for the first ``decay_start_frac`` of the epochs, then linear decay towards zero
(MDUIT: 35 of 50 epochs = 0.7); see `mdir.methods.schedule.linear_decay`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mdir.config import StrictModel

GanLoss = Literal["vanilla", "lsgan"]


class _OptimFields(StrictModel):
    """Optimiser + schedule fields shared by every method."""

    lr: float = Field(2e-4, gt=0, description="Adam learning rate (all papers: 2e-4).")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam β1 (papers: 0.5; the thesis used 0.9).")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam β2.")
    decay_start_frac: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Fraction of the epochs at constant LR before the linear decay to zero "
        "(junyanz: 100 + 100 epochs = 0.5; 1.0 = no decay as in the thesis).",
    )
    gan_loss: GanLoss = Field(
        "vanilla",
        description="GAN objective: non-saturating BCE (vanilla) or least squares (lsgan).",
    )
    loss_weight_norm: bool = Field(
        False,
        description="Thesis §3.2.4: divide every generator loss weight by their sum (λ1 = 1/(1+λ), λ2 = λ/(1+λ)).",
    )
    init_std: float = Field(0.02, gt=0, description="Std of the N(0, std) weight init.")
    seed: int = Field(
        0, description="Seed of the method's own random choices (image pool, pairing, negatives)."
    )


class Pix2PixConfig(_OptimFields):
    """pix2pix (Isola et al.): U-Net G (unet_256) + 70×70 PatchGAN D on (input, output) pairs."""

    #: the data mode the method trains on (read before launch without importing torch)
    data_mode: ClassVar[str] = "paired"
    name: Literal["pix2pix"] = Field("pix2pix", description="Method discriminator.")
    ngf: int = Field(64, ge=1, description="Generator width (filters of the first conv).")
    ndf: int = Field(64, ge=1, description="Discriminator width.")
    num_downs: int = Field(
        8, ge=5, description="U-Net downsamplings (8 = unet_256: H, W divisible by 256)."
    )
    n_layers_d: int = Field(3, ge=1, description="PatchGAN layers (3 = 70×70 receptive field).")
    norm: Literal["batch", "instance"] = Field(
        "batch", description="Normalisation layer (pix2pix: batch)."
    )
    dropout: bool = Field(
        True, description="Dropout 0.5 in the U-Net's inner decoder blocks (pix2pix noise)."
    )
    lambda_l1: float = Field(100.0, ge=0, description="λ of the L1 term (eq. 2.6).")
    test_mode: Literal["train", "eval"] = Field(
        "train",
        description="How G translates after training (registered model, evaluation, samples): "
        "train = the reference's test time (junyanz test.py without --eval, thesis §2.2 "
        "noise): dropout on and BatchNorm batch statistics, so two translations of one image "
        "differ; eval = dropout off and running statistics (deterministic).",
    )


class CycleGANConfig(_OptimFields):
    """CycleGAN (Zhu et al.): two ResNet generators, two PatchGAN discriminators."""

    #: the data mode the method trains on (read before launch without importing torch)
    data_mode: ClassVar[str] = "unpaired"
    name: Literal["cyclegan"] = Field("cyclegan", description="Method discriminator.")
    ngf: int = Field(64, ge=1, description="Generator width.")
    ndf: int = Field(64, ge=1, description="Discriminator width.")
    n_blocks: int = Field(9, ge=0, description="Residual blocks of the generator (resnet_9blocks).")
    n_layers_d: int = Field(3, ge=1, description="PatchGAN layers (3 = 70×70).")
    norm: Literal["batch", "instance"] = Field(
        "instance", description="Normalisation layer (CycleGAN: instance)."
    )
    dropout: bool = Field(False, description="Dropout 0.5 in the residual blocks.")
    lambda_cyc: float = Field(10.0, ge=0, description="λ of the cycle-consistency terms (eq. 2.9).")
    lambda_identity: float = Field(
        0.0,
        ge=0,
        description="Identity term weight relative to λ_cyc (optional; junyanz default 0.5, thesis 0).",
    )
    pool_size: int = Field(
        50, ge=0, description="Image history pool for the discriminators (0 = off)."
    )


class MDUITConfig(_OptimFields):
    """MDUIT: E_c, E_a (frozen VGG-16 relu3_3), G, D_i, D_a, H; see `mdir.models.mduit`."""

    #: the data mode the method trains on (read before launch without importing torch)
    data_mode: ClassVar[str] = "single"
    name: Literal["mduit"] = Field("mduit", description="Method discriminator.")
    decay_start_frac: float = Field(
        0.7, ge=0, le=1, description="35 of 50 epochs at constant LR, then linear decay."
    )
    init_std: float = Field(
        0.001, gt=0, description="MDUIT initialises every network with N(0, 0.001)."
    )
    ngf: int = Field(
        64, ge=1, description="E_c first-layer width; f_s has ngf·2^n_downsample channels (256)."
    )
    n_downsample: int = Field(2, ge=1, description="Stride-2 convs of E_c (f_s at H/4 × W/4).")
    n_res_enc: int = Field(4, ge=0, description="Residual blocks of E_c.")
    n_res_dec: int = Field(4, ge=0, description="Residual blocks of G.")
    filter_size: int = Field(
        5, ge=1, description="k of the appearance filter W_t (1×c×k×k after grouping)."
    )
    ea_hidden: int = Field(
        256, ge=1, description="Width of E_a's trainable convs after VGG relu3_3."
    )
    ndf: int = Field(64, ge=1, description="Width of D_i and D_a.")
    n_layers_d: int = Field(3, ge=1, description="PatchGAN layers of D_i and D_a.")
    proj_hidden: int = Field(256, ge=1, description="Hidden width of H's 2-layer MLP.")
    proj_dim: int = Field(128, ge=1, description="K, the embedding size z = H(f).")
    gem_p: float = Field(3.0, gt=0, description="Initial GeM exponent of H (trainable).")
    head_norm: Literal["batch", "none"] = Field(
        "batch",
        description="Norm between the hidden layers of E_a's head and of H (paper: unspecified). "
        "'batch' keeps W_t and z image-dependent under the N(0, 0.001) init; 'none' rebuilds "
        "networks registered before it existed (see mdir.models.mduit).",
    )
    margin_content: float = Field(0.1, ge=0, description="m_c of the content triplet loss.")
    tau: float = Field(0.07, gt=0, description="NCE temperature τ.")
    n_neg: int = Field(16, ge=1, description="N_neg negatives per query for L_NCE.")
    neg_pool_factor: int = Field(
        4,
        ge=0,
        description="I_s⁻ and the N_neg NCE negatives are drawn from the neg_pool_factor·N_neg "
        "content negatives most similar to I_s at epoch start (paper §3.1: 'among the most "
        "similar images'; the pool size is our choice); 0 = from all content negatives.",
    )
    beta_adv_i: float = Field(1.0, ge=0, description="Weight of L_adv^i (paper: 1).")
    beta_adv_a: float = Field(1.0, ge=0, description="Weight of L_adv^a (paper: 1).")
    beta_rs: float = Field(100.0, ge=0, description="β_rs, self-reconstruction.")
    beta_rc: float = Field(100.0, ge=0, description="β_rc, cycle reconstruction.")
    beta_cc: float = Field(10.0, ge=0, description="β_cc, content triplet consistency.")
    beta_ca: float = Field(1.0, ge=0, description="β_ca, appearance-filter cosine consistency.")
    beta_nce: float = Field(1.0, ge=0, description="β_NCE, contrastive loss.")
    rot_thresh_deg: float = Field(
        8.0, gt=0, description="Pose positives: rotation difference below this (degrees)."
    )
    trans_thresh_m: float = Field(
        7.0, gt=0, description="Pose positives: translation difference below this (metres)."
    )
    pairing_batch_size: int = Field(
        16, ge=1, description="Images per forward when embedding the store at epoch start."
    )
    vgg_weights: str | None = Field(
        None, description="VGG-16 weights file (state dict / safetensors); None = torch hub cache."
    )
    allow_random_vgg: bool = Field(
        False, description="Allow a randomly initialised VGG-16 when no weights are found (tests)."
    )
