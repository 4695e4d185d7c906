"""Translate an image of any size with a generator trained on fixed-size squares.

Generators only accept some sizes: pix2pix's U-Net needs H and W divisible by
2**num_downs (its skip connections concatenate encoder and decoder maps of equal size),
the ResNet generators of CycleGAN / CUT and MDUIT's content encoder E_c by 2**(number of
stride-2 convolutions) — the method's spec says which (`MethodSpec.size_multiple`).

`translate_any_size(translate, image, multiple=…)`:

* **pad**: the image is reflection-padded up to the next multiple on every side (context
  at the border, as Jenicek & Chum pad retrieval images to 256), translated and cropped
  back, so the output has the input's size and aspect ratio;
* **tile**: an image above ``max_pixels`` is cut into ``tile``-sized squares overlapping
  by ``overlap`` pixels; each is translated (padded as above when needed) and the results
  are blended with a raised-cosine window that falls to ~0 at a tile's inner edges (where
  the network saw zero/reflection padding instead of the neighbour's pixels) and stays 1
  on the image border. Neighbouring windows cross-fade (cos² + sin² = 1 over the overlap),
  and the blend is normalised by the summed weights, so no seam shows. Networks with
  instance / layer norm compute their statistics per tile, so a tiled translation is
  close to, not equal to, the untiled one; `mdir.methods.tile_norm` makes the tiles share
  pooled statistics (measured in tests/test_translate_anysize.py).

Pure functions of tensors; the network is the `translate` callable ([N,3,h,w] → same, in
[-1, 1]), so any method (and a reference image bound in a closure, for MDUIT) works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MAX_PIXELS = 1024 * 1024
"""Above this many pixels (H·W) `translate_any_size` tiles: ~1 MP keeps a 64-channel
ResNet generator's activations within a few GB on CPU."""


def reflect_pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad [B,C,H,W] with reflection so that H and W become multiples of `multiple`.

    The padding is split top/bottom and left/right (context on every side). Reflection
    padding requires pad < side, so large pads (a 64 px image to 256) are done in rounds,
    each reflecting the already padded image. Returns the padded tensor and the (top, left)
    offsets of the original image inside it.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be ≥ 1, got {multiple}")
    h, w = x.shape[-2:]
    th, tw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    top, left = (th - h) // 2, (tw - w) // 2
    bottom, right = th - h - top, tw - w - left
    while top or bottom or left or right:
        ch, cw = x.shape[-2:]
        if ch == 1 or cw == 1:  # nothing to reflect: repeat the single row / column
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
            break
        t, b = min(top, ch - 1), min(bottom, ch - 1)
        lft, r = min(left, cw - 1), min(right, cw - 1)
        x = F.pad(x, (lft, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lft, right - r
    return x, ((th - h) // 2, (tw - w) // 2)


def translate_padded(translate: Callable[[Tensor], Tensor], x: Tensor, multiple: int) -> Tensor:
    """Reflection-pad [B,3,H,W] to `multiple` → translate → crop back to H×W."""
    h, w = x.shape[-2:]
    padded, (top, left) = reflect_pad_to_multiple(x, multiple)
    y = translate(padded)
    if y.shape[-2:] != padded.shape[-2:]:
        raise ValueError(
            f"the generator returned {tuple(y.shape[-2:])} for a {tuple(padded.shape[-2:])} "
            f"input: is multiple={multiple} the network's stride multiple?"
        )
    return y[..., top : top + h, left : left + w]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering [0, length), spread evenly so that
    neighbours share at least `overlap` pixels; the first starts at 0, the last ends at
    `length`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def ramp_window(size: int, ramp_before: int, ramp_after: int) -> Tensor:
    """1-D blending weights [size] (float64): a raised-cosine rise over the first
    `ramp_before` pixels, 1 in the middle, a fall over the last `ramp_after` (0 = no ramp:
    that side is the image border). Rise and fall over the same pixels of two neighbours
    sum to 1 (sin² + cos²); the half-pixel offset keeps every weight > 0."""
    w = torch.ones(size, dtype=torch.float64)
    for n, at_start in ((ramp_before, True), (ramp_after, False)):
        if n <= 0:
            continue
        rise = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)
        if at_start:
            w[:n] *= rise
        else:
            w[size - n :] *= rise.flip(0)
    return w


def _check_args(image: Tensor, multiple: int, tile: int, overlap: int) -> None:
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image: expected [3,H,W] or [N,3,H,W], got {tuple(image.shape)}")
    if multiple < 1:
        raise ValueError(f"multiple: must be ≥ 1, got {multiple}")
    if tile < 1:
        raise ValueError(f"tile: must be ≥ 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap: must be in [0, tile={tile}), got {overlap}")


def translate_any_size(
    translate: Callable[[Tensor], Tensor],
    image: Tensor,
    *,
    multiple: int,
    max_pixels: int | None = None,
    tile: int = 512,
    overlap: int = 64,
) -> Tensor:
    """Translate one image [3,H,W] or [1,3,H,W] (also [N,3,H,W]) in [-1, 1] at its own size.

    Args:
      translate: the generator, [N,3,h,w] → [N,3,h,w] with h, w multiples of `multiple`.
      multiple: the network's stride multiple (``spec.size_multiple(cfg)``).
      max_pixels: above H·W > max_pixels, translate in tiles (None = never tile).
      tile: tile side in pixels (rounded up to a multiple of `multiple`).
      overlap: pixels shared by neighbouring tiles, cross-faded by the blending window.

    Returns the translation with the input's shape, clamped to [-1, 1], on the input's
    device and dtype.
    """
    _check_args(image, multiple, tile, overlap)
    x = image if image.dim() == 4 else image.unsqueeze(0)
    h, w = x.shape[-2:]
    if max_pixels is None or h * w <= max_pixels:
        y = translate_padded(translate, x, multiple)
    else:
        y = _translate_tiled(translate, x, multiple, tile, overlap)
    y = y.to(device=image.device, dtype=image.dtype).clamp(-1, 1)
    return y if image.dim() == 4 else y[0]


def _translate_tiled(
    translate: Callable[[Tensor], Tensor], x: Tensor, multiple: int, tile: int, overlap: int
) -> Tensor:
    """Overlapping tiles, each translated via `translate_padded`, blended by the windows of
    `ramp_window` and normalised by their sum (float64 accumulation)."""
    tile = -(-tile // multiple) * multiple
    n, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    acc = torch.zeros(n, 3, h, w, dtype=torch.float64)
    weight = torch.zeros(1, 1, h, w, dtype=torch.float64)
    for i, top in enumerate(ys):
        th = min(tile, h)
        # ramp only over the part actually shared with the previous / next tile
        up = ys[i - 1] + th - top if i > 0 else 0
        down = top + th - ys[i + 1] if i + 1 < len(ys) else 0
        wy = ramp_window(th, up, down)
        for j, left in enumerate(xs):
            tw = min(tile, w)
            lf = xs[j - 1] + tw - left if j > 0 else 0
            rt = left + tw - xs[j + 1] if j + 1 < len(xs) else 0
            win = (wy[:, None] * ramp_window(tw, lf, rt)[None, :])[None, None]
            out = translate_padded(translate, x[..., top : top + th, left : left + tw], multiple)
            acc[..., top : top + th, left : left + tw] += out.detach().double().cpu() * win
            weight[..., top : top + th, left : left + tw] += win
    return (acc / weight).to(x.dtype)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ramp_window",
    "reflect_pad_to_multiple",
    "tile_starts",
    "translate_any_size",
    "translate_padded",
]
