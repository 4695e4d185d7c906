"""`DataConfig`: which shards a training job reads and how images are prepared.

Thesis (pix2pix / CycleGAN): random scale 0.6–1, crop `image_size` (256), horizontal flip,
normalise with mean = std = 0.5 (→ [-1, 1]). RobotCar (MDUIT and the thesis): resize to
`image_size` without crop (`augment="resize"`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mdir.config import StrictModel


class DataConfig(StrictModel):
    """The data section of every training job config."""

    uri: str = Field(description="Dataset root (contains manifest.json): local path or s3:// URI.")
    mode: Literal["unpaired", "paired", "single"] = Field(
        "unpaired",
        description="unpaired: two streams A/B (CycleGAN); paired: rows with image_b (pix2pix); "
        "single: one stream of all conditions plus an ImageStore (MDUIT).",
    )
    domain_a: list[str] = Field(
        default_factory=lambda: ["day"],
        description="Condition names of domain A (source). Empty = all conditions.",
    )
    domain_b: list[str] = Field(
        default_factory=lambda: ["night"],
        description="Condition names of domain B (target). Empty = all conditions not in domain_a.",
    )
    train_split: str = Field("train", description="Split used for training.")
    val_split: str = Field("val", description="Split used for validation / model selection.")
    image_size: int = Field(
        256, ge=8, le=4096, description="Side of the square training crop (px)."
    )
    augment: Literal["scale_crop_flip", "resize"] = Field(
        "scale_crop_flip",
        description="scale_crop_flip: random scale in [scale_min, 1] of the short side, random "
        "square crop, resize to image_size, flip (thesis); resize: whole image to image_size (RobotCar).",
    )
    scale_min: float = Field(
        0.6, gt=0.0, le=1.0, description="Smallest random scale (fraction of the short side)."
    )
    flip: bool = Field(True, description="Random horizontal flip with p = 0.5.")
    pin_memory: bool = Field(
        True,
        description="On GPU workers, copy batches from page-locked memory (asynchronous "
        "host-to-device copies); ignored on CPU.",
    )
    materialize: bool = Field(
        True,
        description="Decode once and keep the decoded images in the Ray object store (fast for small "
        "datasets; a streaming pipeline would re-read and re-decode every epoch).",
    )
    cache_max_side: int = Field(
        0,
        ge=0,
        description="Decoded images are downscaled so their short side is at most this (0 = "
        "ceil(image_size / scale_min) for scale_crop_flip, image_size for resize): saves memory and time.",
    )
    parallelism: int = Field(
        2, ge=1, description="Concurrent Ray Data tasks per stage (decode, augment)."
    )
    task_cpus: float = Field(
        0.5,
        gt=0.0,
        description="CPUs reserved per Ray Data task (0.5 leaves room next to Train workers on small machines).",
    )
    shuffle_buffer: int = Field(
        256, ge=0, description="Local shuffle buffer (rows) per worker; 0 = off."
    )
    seed: int | None = Field(
        None,
        description="Seed for the crops, flips and in-block order: reproducible, but every epoch "
        "then repeats the same ones (a Ray Data task does not know its epoch). None (default) = "
        "new ones every epoch.",
    )

    @model_validator(mode="after")
    def _domains_disjoint(self) -> DataConfig:
        both = set(self.domain_a) & set(self.domain_b)
        if both and self.mode == "unpaired":
            raise ValueError(f"domain_a and domain_b share conditions {sorted(both)}")
        return self

    def resolved_cache_side(self) -> int:
        """Short side of the cached decoded images (see `cache_max_side`)."""
        if self.cache_max_side:
            return self.cache_max_side
        if self.augment == "resize":
            return self.image_size
        return int(-(-self.image_size // self.scale_min))
