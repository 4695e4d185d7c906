"""MDUIT networks (multi-domain unsupervised I2I translation with appearance-adaptive conv).

Paper symbols → code:
  E_c  `ContentEncoder`        I_s → f_s  [B, c=256, H/4, W/4]
  E_a  `AppearanceEncoder`     I_t → W_t  [B, c, k, k]: frozen VGG-16 up to relu3_3, then
                               trainable convs + average pooling to k×k (k = 5)
  ⊗    `appearance_conv`       f_s ⊗ W_t: the paper's 256×256×5×5 filter reduced by a
                               256-group convolution to one 5×5 filter per channel
                               ("1×256×5×5"), applied per sample as ONE grouped conv
                               over the batch (groups = B·c)
  G    `Decoder`               f_s^t → I_s→t  (residual blocks + 2 upsamplings, tanh)
  D_i  PatchGAN on images; D_a PatchGAN on channel-concatenated pairs (6 channels)
  H    `ProjectionHead`        f → z: trainable GeM + 2-layer MLP + L2N (K-dim)

Details the paper leaves open (our choices, MUNIT-like since the paper builds on [2-5]):
E_c = conv7 + `n_downsample` stride-2 conv3 + `n_res` residual blocks with instance norm;
G = `n_res` residual blocks *without* normalisation (an instance norm would undo the
per-channel appearance statistics that W_t injects) + `n_downsample` × (nearest ×2, conv5,
LayerNorm, ReLU) + conv7 + tanh, as MUNIT's decoder; E_a's trainable part = conv3 s2 +
BatchNorm + ReLU, conv3 s2 + BatchNorm + ReLU, adaptive average pool to k×k, conv1×1 (no
bias) to c channels; H's MLP = linear, BatchNorm, ReLU, linear (SimCLR's projection head).

Why the BatchNorms and the bias-free last conv of E_a (``head_norm="batch"``; the paper
names no norm there): with the paper's N(0, 0.001) init, an un-normalised stack scales its
input by ~(0.001·√fan_in)^depth — E_a's three convs ≈ 1e-6, ≈ 1e-8 on a random VGG whose
relu3_3 activations are ~0.006 — while Adam moves the last layer's *bias* by ~lr = 2e-4
in the first step. From then on W_t and z are that bias plus a component common to all
images (ReLU features are all positive): measured on the demo, 1 − cos(W_a, W_b) ≈ 1e-6
for any two images and every z·z ≈ 0.998, so L_con^a sits at 1 with no gradient, L_NCE at
log(1 + N_neg), and the translation cannot depend on the target. A LayerNorm restores the
scale but not the common component (still 1 − cos ≈ 1e-6 after 10 steps); a BatchNorm
removes it — what is left is how an image differs from the others of its batch, i.e. its
appearance (E_a) or content (H) — and the bias-free last conv keeps a learned constant
filter from swamping it. Training batches hold several images even at batch size 1: E_a
sees I_s, I_t, I_t⁻ together (and I_s→t with its positions), H sees f_s, f_s→t, f_s⁻ and
the N_neg negatives; at inference and when pairing (eval mode) the running statistics
apply. ``head_norm="none"`` rebuilds the earlier networks (for
checkpoints registered before this change).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdir.models.norm import NormName, norm_layer
from mdir.models.pooling import GeM, l2n
from mdir.models.resnet_gen import ResnetBlock

#: index after VGG-16 `features` 'relu3_3' (conv3_3 is 14, its ReLU 15)
VGG_RELU3_3 = 16
VGG_RELU3_3_CHANNELS = 256
HeadNorm = Literal["batch", "none"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ContentEncoder(nn.Module):
    """E_c: [B,3,H,W] → f_s [B, ngf·2^n_downsample, H/2^n, W/2^n] (instance norm)."""

    def __init__(
        self, ngf: int = 64, n_downsample: int = 2, n_res: int = 4, norm: NormName = "instance"
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        c = ngf
        for _ in range(n_downsample):
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), norm_layer(norm, 2 * c), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c, norm) for _ in range(n_res)]
        self.model = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _StatsFromFirstBatch:
    """BatchNorm whose running statistics start from its first training batch instead of
    (0, 1). Under the N(0, 0.001) init the hidden activations are ~1e-5, so a running
    variance starting at 1 needs ~100 steps of momentum 0.1 to come down: until then the
    eval-mode E_a (sample grids, evaluation, translation) outputs W ≈ 0 — measured on the
    demo after 12 steps, day and night references gave identical translations."""

    def forward(self, x: Tensor) -> Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        tracked = bn.num_batches_tracked
        if bn.training and tracked is not None and not x.is_meta and int(tracked) == 0:
            dims = [d for d in range(x.dim()) if d != 1]
            with torch.no_grad():
                bn.running_mean.copy_(x.mean(dims))  # type: ignore[union-attr]
                bn.running_var.copy_(x.var(dims, unbiased=True))  # type: ignore[union-attr]
        return super().forward(x)  # type: ignore[misc]


class _BatchNorm1d(_StatsFromFirstBatch, nn.BatchNorm1d):
    pass


class _BatchNorm2d(_StatsFromFirstBatch, nn.BatchNorm2d):
    pass


def _head_norm(kind: HeadNorm, channels: int, conv: bool) -> list[nn.Module]:
    """The hidden-layer norm of E_a's head / H (see the module doc): BatchNorm over the
    batch (and positions, for conv maps); nothing for "none"."""
    if kind == "none":
        return []
    if kind == "batch":
        return [_BatchNorm2d(channels) if conv else _BatchNorm1d(channels)]
    raise ValueError(f"unknown head norm {kind!r}; valid: batch, none")


class AppearanceEncoder(nn.Module):
    """E_a: frozen VGG-16 (relu3_3) + trainable head → per-image filter W_t [B, c, k, k].

    `vgg_features` is torchvision ``vgg16().features`` (truncated here); it is frozen with
    ``requires_grad_(False)`` and always kept in eval mode, but gradients still flow
    through it to the input image (the filter consistency loss needs ∂W/∂I_s→t).
    `weights_label` records which VGG weights were loaded.
    """

    def __init__(
        self,
        vgg_features: nn.Module,
        content_channels: int = 256,
        hidden: int = 256,
        kernel_size: int = 5,
        weights_label: str = "random",
        norm: HeadNorm = "batch",
    ):
        super().__init__()
        self.vgg = nn.Sequential(*list(vgg_features.children())[:VGG_RELU3_3])
        self.vgg.requires_grad_(False)
        self.head = nn.Sequential(
            nn.Conv2d(VGG_RELU3_3_CHANNELS, hidden, 3, 2, 1),
            *_head_norm(norm, hidden, conv=True),
            nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, 2, 1),
            *_head_norm(norm, hidden, conv=True),
            nn.ReLU(True),
            nn.AdaptiveAvgPool2d(kernel_size),
            nn.Conv2d(hidden, content_channels, 1, bias=norm == "none"),
        )
        self.kernel_size = kernel_size
        self.weights_label = weights_label
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Only the head is trained; the VGG stays frozen."""
        return list(self.head.parameters())

    def train(self, mode: bool = True) -> AppearanceEncoder:
        super().train(mode)
        self.vgg.eval()  # frozen: never in training mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        x = ((x + 1) * 0.5 - self.mean) / self.std  # [-1,1] → ImageNet normalisation
        return self.head(self.vgg(x))


def appearance_conv(f: Tensor, w: Tensor) -> Tensor:
    """f ⊗ W: per-sample depthwise convolution as one grouped conv over the batch.

    f [B, C, h, w], w [B, C, k, k] → [B, C, h, w]: sample b, channel c is convolved with its
    own filter w[b, c] (zero 'same' padding). Folding the batch into channels makes this a
    single ``conv2d(groups=B·C)`` call instead of a Python loop over samples.
    """
    b, c, h, wd = f.shape
    if w.shape[:2] != (b, c):
        raise ValueError(f"filter {tuple(w.shape)} does not match features {tuple(f.shape)}")
    k = w.shape[-1]
    out = F.conv2d(
        f.reshape(1, b * c, h, wd), w.reshape(b * c, 1, k, k), padding=k // 2, groups=b * c
    )
    return out.reshape(b, c, h, wd)


class Decoder(nn.Module):
    """G: appearance-representative content f_s^t [B,C,h,w] → image [B,3,h·2^n,w·2^n]."""

    def __init__(self, in_channels: int = 256, n_upsample: int = 2, n_res: int = 4):
        super().__init__()
        layers: list[nn.Module] = [ResnetBlock(in_channels, "none") for _ in range(n_res)]
        c = in_channels
        for _ in range(n_upsample):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, c // 2, 5, 1, 2),
                nn.GroupNorm(1, c // 2),  # LayerNorm over (C, H, W), as in MUNIT's decoder
                nn.ReLU(True),
            ]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class ProjectionHead(nn.Module):
    """H: f [B,C,h,w] → z [B,K] = L2N(MLP(GeM(f))) (trainable GeM p, 2 linear layers with a
    BatchNorm between them unless ``norm="none"``; train-mode batches need B ≥ 2)."""

    def __init__(
        self,
        in_channels: int = 256,
        hidden: int = 256,
        out_dim: int = 128,
        gem_p: float = 3.0,
        norm: HeadNorm = "batch",
    ):
        super().__init__()
        self.pool = GeM(p=gem_p)
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden),
            *_head_norm(norm, hidden, conv=False),
            nn.ReLU(True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, f: Tensor) -> Tensor:
        return l2n(self.mlp(self.pool(f)))


class MDUITTranslator(nn.Module):
    """The inference path I_s→t = G(E_c(I_s) ⊗ E_a(I_t)) as one module (what gets
    registered). A reference batch of size 1 is broadcast over the sources.

    With the projection head H it also exports the retrieval embedding z_s = H(E_c(I_s))
    (`embed`), which the paper's localization experiment (its Table 1) retrieves with.
    Generators registered before H was part of the module load without it."""

    def __init__(
        self,
        E_c: nn.Module,  # noqa: N803
        E_a: nn.Module,  # noqa: N803
        G: nn.Module,  # noqa: N803
        H: nn.Module | None = None,  # noqa: N803
    ):
        super().__init__()
        self.E_c, self.E_a, self.G = E_c, E_a, G
        self.H = H

    def embed(self, images: Tensor) -> Tensor:
        """z_s = H(E_c(I_s)), L2-normalised [B, K] (call in eval mode, as training's
        pairing does, so H's BatchNorm uses its running statistics)."""
        if self.H is None:
            raise ValueError("this MDUIT generator was registered without its projection head H")
        return self.H(self.E_c(images))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001
        if self.H is not None and not any(k.startswith("H.") for k in state_dict):
            self.H = None  # registered before the head was exported: translation only
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, images: Tensor, reference: Tensor) -> Tensor:
        # expand without a branch on shapes: a traced/exported graph then serves one
        # reference for the batch and one reference per image alike
        w = self.E_a(reference).expand(images.shape[0], -1, -1, -1)
        return self.G(appearance_conv(self.E_c(images), w))
