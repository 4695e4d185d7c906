"""GAN augmentation of retrieval training images (thesis 3.4, Fig. 3.2).

Every training image of a tuple is, independently with probability p (0.15 ≈ 1/7 for a
7-image tuple), replaced by its translation through a frozen registered generator; the
others pass through unchanged. The generator runs batched on the worker's device on just
the selected images. U-Net generators need sides divisible by 256, so the selected images
are reflection-padded up to the next multiple of `pad_multiple` (keeping context at the
border, as Jenicek & Chum) and cropped back after translation. MDUIT is exemplar-guided:
for each translated image a reference image of the target condition is drawn.

`Translator` is the contract of ``mdir.registry.generators.load_translator``; anything with a
``translate(images, reference=None)`` method works (tests use a tiny stand-in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class Translator(Protocol):
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor: ...


def reflect_pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad [B,C,H,W] with reflection so that H and W become multiples of `multiple`.

    The padding is split top/bottom and left/right (context on every side). Reflection
    padding requires pad < side, so large pads (a 64 px image to 256) are done in rounds,
    each reflecting the already padded image. Returns the padded tensor and the (top, left)
    offsets of the original image inside it.
    """
    h, w = x.shape[-2:]
    th, tw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    top, left = (th - h) // 2, (tw - w) // 2
    bottom, right = th - h - top, tw - w - left
    while top or bottom or left or right:
        ch, cw = x.shape[-2:]
        t, b = min(top, ch - 1), min(bottom, ch - 1)
        lft, r = min(left, cw - 1), min(right, cw - 1)
        x = F.pad(x, (lft, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lft, right - r
    return x, ((th - h) // 2, (tw - w) // 2)


def translate_padded(
    translator: Translator, x: Tensor, multiple: int, reference: Tensor | None = None
) -> Tensor:
    """Reflection-pad → translate → crop back to the input size."""
    h, w = x.shape[-2:]
    padded, (top, left) = reflect_pad_to_multiple(x, multiple)
    ref = None
    if reference is not None:
        ref = reference
        if ref.shape[-2:] != padded.shape[-2:]:
            ref = F.interpolate(ref, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    y = translator.translate(padded, reference=ref)
    return y[..., top : top + h, left : left + w].clamp(-1, 1)


@dataclass
class AugmentCounter:
    """How often augmentation was considered / applied (logged as ``augment/*``)."""

    seen: int = 0
    applied: int = 0
    failed: int = 0
    per_condition: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.applied / self.seen if self.seen else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "applied": self.applied,
            "failed": self.failed,
            "rate": self.rate,
        }


class GanAugmenter:
    """Applies a frozen translator to a random subset of a batch.

    Args:
      translator: object with ``translate(images, reference=None)`` (frozen; no gradients).
      probability: p of translating each eligible image.
      pad_multiple: reflection-pad sides to a multiple of this (256 for U-Net).
      needs_reference: MDUIT-style translators get a reference image per translated image.
      draw_reference: ``(n, rng) -> [n,3,H,W]`` images of the target condition (MDUIT).
      seed: the draws come from a private generator seeded per rank, so runs with the
        same seed apply the same augmentation decisions.
    """

    def __init__(
        self,
        translator: Translator,
        probability: float = 0.15,
        pad_multiple: int = 256,
        needs_reference: bool = False,
        draw_reference: Callable[[int, np.random.Generator], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if needs_reference and draw_reference is None:
            raise ValueError("this translator needs reference images: pass draw_reference")
        self.translator = translator
        self.probability = probability
        self.pad_multiple = pad_multiple
        self.needs_reference = needs_reference
        self.draw_reference = draw_reference
        self.rng = np.random.default_rng(seed)
        self.counter = AugmentCounter()

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,
        eligible: Sequence[bool] | np.ndarray | None = None,
        uniforms: np.ndarray | None = None,
        ref_rng: np.random.Generator | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[Tensor, np.ndarray]:
        """images [B,3,H,W] in [-1,1] → (augmented images, bool mask of translated rows).
        (`ids`, the images' dataset row ids, is for `DatasetAugmenter`; unused here.)

        `uniforms` [B] in [0, 1) replaces the private draws: the training loop draws them for
        the whole global batch from a (seed, epoch, step) generator and hands each rank its
        slice, so the same images are translated whatever the number of workers.
        `ref_rng` likewise replaces the private generator for drawing MDUIT references.
        """
        b = images.shape[0]
        eligible = np.ones(b, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
        u = self.rng.random(b) if uniforms is None else np.asarray(uniforms, dtype=np.float64)
        mask = (u < self.probability) & eligible
        self.counter.seen += int(eligible.sum())
        if not mask.any():
            return images, mask
        idx = torch.from_numpy(np.flatnonzero(mask)).to(images.device)
        ref = None
        if self.needs_reference:
            assert self.draw_reference is not None
            ref = self.draw_reference(int(mask.sum()), ref_rng or self.rng).to(images.device)
        try:
            out = translate_padded(
                self.translator, images.index_select(0, idx), self.pad_multiple, ref
            )
        except (
            Exception
        ):  # a translation failure must not kill a long job: count it, keep originals
            self.counter.failed += int(mask.sum())
            return images, np.zeros(b, dtype=bool)
        images = images.clone()
        images[idx] = out.to(images.dtype)
        self.counter.applied += int(mask.sum())
        return images, mask


def translation_provenance(uri: str) -> dict[str, str]:
    """Model name / version / URI recorded by `mdir data translate` in a translated dataset's
    manifest; raises ValueError naming ``augment.dataset`` when it is not one."""
    from mdir.data.manifest import read_manifest

    tr = read_manifest(uri).extra.get("translation")
    if not tr:
        raise ValueError(
            f"augment.dataset: {uri!r} is not a translated dataset (no extra.translation in "
            "its manifest); write one with `mdir data translate`"
        )
    return {
        "uri": uri,
        "model_uri": str(tr.get("model_uri")),
        "model_name": str(tr.get("model_name")),
        "model_version": str(tr.get("model_version")),
        "to": str(tr.get("to")),
    }


class DatasetAugmenter(GanAugmenter):
    """GAN augmentation from a translated dataset (``augment.dataset``): the same draws as
    `GanAugmenter`, but a selected image is replaced by the stored translation of its
    dataset row id (``mdir data translate`` keeps the source id), loaded by `load` at the
    training size. Rows without a translation are never selected."""

    def __init__(
        self,
        load: Callable[[list[int]], Tensor],
        available: Sequence[int] | np.ndarray,
        probability: float = 0.15,
        seed: int = 0,
    ) -> None:
        self.load = load
        self.available = np.asarray(sorted(int(i) for i in available), dtype=np.int64)
        self.probability = probability
        self.needs_reference = False
        self.rng = np.random.default_rng(seed)
        self.counter = AugmentCounter()

    def has_translation(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.isin(np.asarray(ids, dtype=np.int64), self.available)

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,
        eligible: Sequence[bool] | np.ndarray | None = None,
        uniforms: np.ndarray | None = None,
        ref_rng: np.random.Generator | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[Tensor, np.ndarray]:
        if ids is None:
            raise ValueError("DatasetAugmenter needs the images' dataset row ids (`ids`)")
        b = images.shape[0]
        ids = np.asarray(ids, dtype=np.int64)
        ok = np.ones(b, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
        ok = ok & self.has_translation(ids)
        u = self.rng.random(b) if uniforms is None else np.asarray(uniforms, dtype=np.float64)
        mask = (u < self.probability) & ok
        self.counter.seen += int(ok.sum())
        if not mask.any():
            return images, mask
        try:
            out = self.load(ids[mask].tolist())
        except Exception:  # an unreadable translation must not kill a long job
            self.counter.failed += int(mask.sum())
            return images, np.zeros(b, dtype=bool)
        images = images.clone()
        idx = torch.from_numpy(np.flatnonzero(mask)).to(images.device)
        images[idx] = out.to(images.device, images.dtype)
        self.counter.applied += int(mask.sum())
        return images, mask
