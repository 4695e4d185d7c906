"""Pure augmentation functions (no Ray): crop/resize, paired consistency, normalisation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mdir.data.transforms import augment, crop_resize, random_square_boxes, to_model_range


def test_to_model_range_endpoints():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    y = to_model_range(x).flatten()
    assert torch.allclose(y, torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_crop_resize_matches_reference_resizes():
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    full = np.array([[0, 0, 8, 8]] * 2, np.float32)
    assert torch.equal(crop_resize(img, full, 8), img)  # same size: exact copy
    # shrinking by 2 averages 2x2 samples at pixel centres = average pooling
    down = crop_resize(img, full, 4).float()
    assert (down - F.avg_pool2d(img.float(), 2)).abs().max() <= 0.5
    # enlarging = bilinear interpolation (align_corners=False)
    small = img[:, :, :4, :4].contiguous()
    up = crop_resize(small, np.array([[0, 0, 4, 4]] * 2, np.float32), 8).float()
    ref = F.interpolate(small.float(), size=(8, 8), mode="bilinear", align_corners=False)
    assert (up - ref).abs().max() <= 0.5
    # a crop: the top-left quadrant of a 8x8 image at its own size is the quadrant
    q = crop_resize(img, np.array([[0, 0, 4, 4]] * 2, np.float32), 4)
    assert torch.equal(q, img[:, :, :4, :4])


def test_random_boxes_within_image_and_scale():
    rng = np.random.default_rng(0)
    boxes = random_square_boxes([(40, 60)] * 200, 0.6, rng)
    side = boxes[:, 2] - boxes[:, 0]
    assert np.allclose(side, boxes[:, 3] - boxes[:, 1])
    assert side.min() >= 0.6 * 40 - 1e-4 and side.max() <= 40 + 1e-4
    assert (
        (boxes[:, 0] >= 0).all()
        and (boxes[:, 2] <= 60 + 1e-4).all()
        and (boxes[:, 3] <= 40 + 1e-4).all()
    )


def test_paired_augmentation_identical_for_both_images():
    imgs = torch.randint(0, 256, (6, 3, 20, 30), dtype=torch.uint8)
    a, b = augment(
        imgs,
        mode="scale_crop_flip",
        size=12,
        scale_min=0.6,
        flip=True,
        rng=np.random.default_rng(1),
        extra=imgs.clone(),
    )
    assert a.shape == (6, 3, 12, 12) and torch.equal(a, b)
    r, _ = augment(
        list(imgs), mode="resize", size=10, scale_min=0.6, flip=False, rng=np.random.default_rng(1)
    )
    assert r.shape == (6, 3, 10, 10)


def test_worker_stages_do_not_import_torch_and_augment_pairs_identically():
    import subprocess
    import sys

    code = "import sys, mdir.data.stages; print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
    imgs = np.random.default_rng(0).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    out = _stage(imgs, size=12, flip=True, image_b=imgs.copy())
    assert out["A"].shape == (5, 3, 12, 12) and out["A"].dtype == np.uint8
    assert np.array_equal(out["A"], out["B"]) and np.array_equal(out["A_id"], out["B_id"])
    assert sorted(out["A_id"].tolist()) == list(range(5))
    # resize mode at the image's own size: rows are permuted but pixels untouched
    same = np.random.default_rng(1).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    for mode, scale_min in (("resize", 0.6), ("scale_crop_flip", 1.0)):
        # scale_crop_flip with scale_min = 1 on a square of side `size`: the whole image
        full = _stage(same, size=12, scale_min=scale_min, mode=mode)
        for k, i in enumerate(full["A_id"].tolist()):
            assert np.array_equal(full["A"][k], same[i].transpose(2, 0, 1)), mode


def _stage(
    images: np.ndarray,
    *,
    size: int,
    scale_min: float = 0.6,
    flip: bool = False,
    mode: str = "scale_crop_flip",
    image_b: np.ndarray | None = None,
    seed: int = 1,
) -> dict[str, np.ndarray]:
    """`augment_stage` on a block of `images` (ids 0..n-1) as Ray Data hands it over."""
    from mdir.data.stages import augment_stage

    n = len(images)
    batch = {"id": np.arange(n), "condition": np.zeros(n, np.int64), "place": np.arange(n)}
    batch["image"] = images
    if image_b is not None:
        batch["image_b"] = image_b
    return augment_stage(
        batch,
        key="A",
        mode=mode,
        size=size,
        scale_min=scale_min,
        flip=flip,
        seed=seed,
        paired=image_b is not None,
    )


def test_stage_resize_and_decode_known_answers():
    """Shrinking averages (2×2 blocks at half size); JPEG DCT-domain downscaling gives the
    cache side; PNG decodes losslessly; a crop of a ramp keeps the ramp's slope."""
    import io

    from mdir.data.stages import decode, resize

    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    blocks = a.reshape(4, 2, 4, 2, 3).astype(float).mean((1, 3))
    assert np.abs(resize(a, (4, 4)) - blocks).max() <= 0.5
    assert resize(a, (8, 8)) is a

    ramp = np.linspace(0, 255, 64)[None, :, None].repeat(48, 0).repeat(3, 2).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(ramp).save(jpeg, "JPEG", quality=95)
    small = decode(jpeg.getvalue(), 12, exact=False)  # 64×48 → short side 12: 16×12
    assert small.shape == (12, 16, 3)
    assert np.abs(small - ramp.reshape(12, 4, 16, 4, 3).mean((1, 3))).max() <= 2.0
    assert decode(jpeg.getvalue(), 10, exact=True).shape == (10, 10, 3)
    png = io.BytesIO()
    Image.fromarray(a).save(png, "PNG")
    assert np.array_equal(decode(png.getvalue(), 100, exact=False), a)  # never enlarged

    # a horizontal ramp stays a ramp after crop + resize (+ flip reverses it)
    r = np.linspace(0, 240, 40)[None, :, None].repeat(40, 0).repeat(3, 2).astype(np.uint8)
    for flip in (False, True):
        out = _stage(np.stack([r, r]), size=20, scale_min=0.5, flip=flip, seed=3)
        rows = out["A"][:, 0, 10, :].astype(float)  # channel 0, middle row
        steps = np.diff(rows, axis=1)
        # the crop side is 20..40 source px, so one output px spans 1..2 source steps of
        # 240/39 ≈ 6.15 (±1 for rounding); flipped, the ramp runs right to left
        sign = -1.0 if flip else 1.0
        assert (sign * steps >= -1.0).all() and (np.abs(steps) <= 2 * 240 / 39 + 1.5).all()
        mean_slope = sign * steps.mean(axis=1)
        assert ((mean_slope > 240 / 39 - 0.5) & (mean_slope < 2 * 240 / 39 + 0.5)).all()
