"""Batch decode and augmentation (pure functions on numpy / torch; no Ray here).

Thesis augmentation (``scale_crop_flip``): pick s ~ U(scale_min, 1), cut a random square
of side s · min(H, W), resize it to `image_size`, flip horizontally with p = 0.5.
RobotCar (``resize``): the whole image resized to `image_size` × `image_size`, flip.
Normalisation to [-1, 1] (mean = std = 0.5) happens in the consumer (`to_model_range`)
so that batches travel through the object store as uint8 (4× smaller).

Crop + resize of a whole batch is ONE `torchvision.ops.roi_align` call (bilinear, with
sampling_ratio ≥ side / image_size, i.e. averaged samples when shrinking), instead of a
Python loop of crops and resizes.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def _frombytes(b: bytes) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer: decoders don't write
        return torch.frombuffer(b, dtype=torch.uint8)


def decode_many(blobs: list[bytes]) -> list[torch.Tensor]:
    """Encoded 8-bit RGB JPEG/PNG bytes → list of uint8 [3, H, W] tensors.

    JPEGs go through one batched `decode_jpeg` call (libjpeg-turbo, no PIL objects)."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(blobs)
    jpeg_idx = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    if jpeg_idx:
        decoded = decode_jpeg([_frombytes(blobs[i]) for i in jpeg_idx], mode=ImageReadMode.RGB)
        for i, t in zip(jpeg_idx, decoded, strict=True):
            out[i] = t
    for i, b in enumerate(blobs):
        if out[i] is None:
            out[i] = decode_image(_frombytes(b), mode=ImageReadMode.RGB)
    return out  # type: ignore[return-value]


def resize_exact(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] → [3, size, size] (aspect not kept: the thesis' RobotCar setting)."""
    if img.shape[-2:] == (size, size):
        return img
    x = F.interpolate(
        img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def max_side_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(H', W') with the longer side at most `max_side`, aspect ratio kept, never enlarged.

    The retrieval protocol of Radenović et al. (cirtorch ``imresize`` = PIL ``thumbnail``):
    train images at max side 362, test images at 1024; smaller images stay as they are.
    """
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_max_side(
    img: torch.Tensor, max_side: int, scale_from: int | None = None
) -> torch.Tensor:
    """uint8 [3, H, W] → [3, H', W'] by `max_side_size` (bilinear, antialiased).

    `scale_from`: compute the factor as if the longer side were this many pixels, i.e.
    resize by max_side / scale_from. A query cropped to its bounding box is shrunk by the
    factor of its *full* image (cirtorch: ``imresize(crop, imsize · max(crop) / max(full))``,
    the requested side floored as PIL does), so the crop keeps the scale it has inside the
    full image at test size.
    """
    h, w = img.shape[-2:]
    side = max(h, w) if scale_from is None else scale_from
    # PIL's thumbnail floors the requested box (cirtorch passes imsize · max(crop) / max(full))
    target = math.floor(max_side * max(h, w) / side + 1e-9)
    nh, nw = max_side_size(h, w, max(1, target))
    if (nh, nw) == (h, w):
        return img
    x = F.interpolate(
        img[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
    )
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def crop_box(img: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """[3, H, W] cropped to the pixel box (x1, y1, x2, y2), x2/y2 exclusive.

    Coordinates are rounded to integers as PIL's ``Image.crop`` does (the revisited
    Oxford/Paris query boxes are floats) and clipped to the image; an empty box is an error.
    """
    h, w = img.shape[-2:]
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = max(0, min(x1, w)), max(0, min(x2, w))
    y1, y2 = max(0, min(y1, h)), max(0, min(y2, h))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"bounding box {tuple(box)} is empty inside a {w}x{h} image")
    return img[..., y1:y2, x1:x2]


def random_square_boxes(
    hw: list[tuple[int, int]], scale_min: float, rng: np.random.Generator
) -> np.ndarray:
    """Per image a square crop (x1, y1, x2, y2) of side s · min(H, W), s ~ U(scale_min, 1)."""
    boxes = np.zeros((len(hw), 4), np.float32)
    for i, (h, w) in enumerate(hw):
        side = max(1.0, rng.uniform(scale_min, 1.0) * min(h, w))
        x0 = rng.uniform(0, w - side)
        y0 = rng.uniform(0, h - side)
        boxes[i] = (x0, y0, x0 + side, y0 + side)
    return boxes


def crop_resize(images: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] + boxes [B, 4] → uint8 [B, 3, size, size] in one roi_align call."""
    from torchvision.ops import roi_align

    b = images.shape[0]
    rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], torch.from_numpy(boxes)], 1)
    side = float((boxes[:, 2] - boxes[:, 0]).max()) if b else 1.0
    ratio = max(1, math.ceil(side / size))
    out = roi_align(
        images.float(),
        rois,
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=ratio,
        aligned=True,
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def augment(
    images: list[torch.Tensor] | torch.Tensor,
    *,
    mode: str,
    size: int,
    scale_min: float,
    flip: bool,
    rng: np.random.Generator,
    extra: list[torch.Tensor] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch; `extra` (paired image_b) gets the SAME crop and flip."""
    n = len(images)
    if mode == "resize":
        a = (
            torch.stack([resize_exact(t, size) for t in images])
            if isinstance(images, list)
            else images
        )
        b = None
        if extra is not None:
            b = (
                torch.stack([resize_exact(t, size) for t in extra])
                if isinstance(extra, list)
                else extra
            )
    else:
        hw = [tuple(t.shape[-2:]) for t in images]
        boxes = random_square_boxes(hw, scale_min, rng)  # type: ignore[arg-type]

        def apply(imgs):
            if isinstance(imgs, torch.Tensor):
                return crop_resize(imgs, boxes, size)
            if len({tuple(t.shape) for t in imgs}) == 1:
                return crop_resize(torch.stack(list(imgs)), boxes, size)
            return torch.cat(
                [crop_resize(t[None], boxes[i : i + 1], size) for i, t in enumerate(imgs)]
            )

        a = apply(images)
        b = apply(extra) if extra is not None else None
    if flip and n:
        m = torch.from_numpy(rng.random(n) < 0.5)
        a = torch.where(m[:, None, None, None], a.flip(-1), a)
        if b is not None:
            b = torch.where(m[:, None, None, None], b.flip(-1), b)
    return a, b


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [.., 3, H, W] → float32 in [-1, 1] (normalise with mean = std = 0.5)."""
    return x.float().div_(127.5).sub_(1.0)
