"""SSIM and MS-SSIM (Wang et al. 2004 / 2003; thesis eq. 4.1–4.3) for paired images.

SSIM uses an 11×11 Gaussian window (σ = 1.5), C₁ = (0.01 R)², C₂ = (0.03 R)² with R the
data range, local statistics over the *valid* region (no padding), averaged over the map
and the channels. MS-SSIM multiplies the contrast–structure terms cs₁…cs₄ of the first
four scales and the full SSIM of the fifth, each raised to its weight
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), with 2×2 average pooling between scales.
Computed in float64; inputs are [N, C, H, W] or [N, H, W, C] uint8 (R = 255) or floats
with an explicit `data_range`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
SIGMA = 1.5


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian [size] in float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _to_nchw(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(img)) if isinstance(img, np.ndarray) else img
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(
            f"expected [N, C, H, W] or [N, H, W, C] images, got shape {tuple(t.shape)}"
        )
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    return t.to(torch.float64)


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = win.numel()
    wh = win.view(1, 1, 1, k).expand(c, 1, 1, k)
    wv = win.view(1, 1, k, 1).expand(c, 1, k, 1)
    return F.conv2d(F.conv2d(x, wh, groups=c), wv, groups=c)


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, data_range: float, win: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean SSIM and mean contrast-structure term cs, [N, C]."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x = _blur(x, win)
    mu_y = _blur(y, win)
    sxx = _blur(x * x, win) - mu_x**2
    syy = _blur(y * y, win) - mu_y**2
    sxy = _blur(x * y, win) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs_map).mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def _prepare(x, y, data_range):
    a = _to_nchw(x)
    b = _to_nchw(y)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if data_range is None:
        if (
            isinstance(x, np.ndarray)
            and x.dtype == np.uint8
            or (isinstance(x, torch.Tensor) and x.dtype == torch.uint8)
        ):
            data_range = 255.0
        else:
            raise ValueError("data_range is required for float images (e.g. 2.0 for [-1, 1])")
    return a, b, float(data_range)


def ssim(x, y, data_range: float | None = None, per_image: bool = False) -> float | torch.Tensor:
    """Mean SSIM of paired images (per image [N] with `per_image`)."""
    a, b, r = _prepare(x, y, data_range)
    if min(a.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(
            f"SSIM needs images of at least {WINDOW_SIZE}×{WINDOW_SIZE}, got {tuple(a.shape[-2:])}"
        )
    s, _ = _ssim_cs(a, b, r, gaussian_window())
    s = s.mean(dim=1)
    return s if per_image else float(s.mean())


def ms_ssim(
    x, y, data_range: float | None = None, weights=MS_SSIM_WEIGHTS, per_image: bool = False
) -> float | torch.Tensor:
    """Mean MS-SSIM of paired images; the smaller side must exceed (11 − 1)·2⁴ = 160 px."""
    a, b, r = _prepare(x, y, data_range)
    levels = len(weights)
    min_side = (WINDOW_SIZE - 1) * 2 ** (levels - 1)
    if min(a.shape[-2:]) <= min_side:
        raise ValueError(
            f"MS-SSIM with {levels} scales needs images larger than {min_side} px, got {tuple(a.shape[-2:])}"
        )
    win = gaussian_window()
    w = torch.tensor(weights, dtype=torch.float64)
    mcs = []
    for i in range(levels):
        s, cs = _ssim_cs(a, b, r, win)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s_ % 2 for s_ in a.shape[2:]]
            a = F.avg_pool2d(a, kernel_size=2, padding=pad)
            b = F.avg_pool2d(b, kernel_size=2, padding=pad)
    vals = torch.stack([*mcs, torch.relu(s)], dim=0)  # [levels, N, C]
    out = torch.prod(vals ** w.view(-1, 1, 1), dim=0).mean(dim=1)
    return out if per_image else float(out.mean())
