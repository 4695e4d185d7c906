"""Pure augmentation functions (no Ray): crop/resize, paired consistency, normalisation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mdir.data.transforms import augment, crop_resize, random_square_boxes, to_model_range


def test_to_model_range_endpoints():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    y = to_model_range(x).flatten()
    assert torch.allclose(y, torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_crop_resize_full_box_identity_and_half_box():
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    boxes = np.array([[0, 0, 8, 8]] * 2, np.float32)
    assert torch.equal(crop_resize(img, boxes, 8), img)  # same size: exact copy
    # top-left 4x4 quadrant upsampled ×2 then downsampled back ≈ the quadrant
    up = crop_resize(img, np.array([[0, 0, 4, 4]] * 2, np.float32), 8)
    down = F.avg_pool2d(up.float(), 2)
    assert (down - img[:, :, :4, :4].float()).abs().mean() < 25


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
