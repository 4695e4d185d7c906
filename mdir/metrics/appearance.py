"""Feature-free checks of a translation's appearance: mean luminance and colour histograms.

They need no network, so they mean the same with or without the standard Inception weights,
and they say *what* changed (darker? the right colours?) where FID only says *how much*.
Images are uint8 RGB, [N, H, W, 3].
"""

from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights (R, G, B), as PIL's ``convert("L")`` uses.
LUMA = np.array([0.299, 0.587, 0.114])


def mean_luminance(images: np.ndarray) -> float:
    """Mean luma Y = 0.299 R + 0.587 G + 0.114 B of all pixels, in [0, 1]."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {x.shape}")
    return float((x.reshape(-1, 3).astype(np.float64) @ LUMA).mean() / 255.0)


def colour_histogram(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint RGB histogram of all pixels, `bins` per channel, normalised to sum 1."""
    x = np.asarray(images).reshape(-1, 3).astype(np.int64)
    q = x * bins // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins**3).astype(np.float64)
    return h / max(h.sum(), 1.0)


def colour_histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """Total-variation distance ½ Σ |h_a − h_b| between the two sets' joint RGB histograms:
    0 = the same colour distribution, 1 = no colour in common."""
    return 0.5 * float(np.abs(colour_histogram(a, bins) - colour_histogram(b, bins)).sum())
