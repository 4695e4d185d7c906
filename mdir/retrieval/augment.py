"""GAN augmentation of retrieval training images (thesis 3.4, Fig. 3.2).

Every training image of a tuple is, independently with probability p (0.15 ≈ 1/7 for a
7-image tuple), replaced by its translation through a frozen registered generator; the
others pass through unchanged. The generator runs batched on the worker's device on just
the selected images. U-Net generators need sides divisible by 256, so the selected images
are reflection-padded up to the next multiple of `pad_multiple` (and of the translator's
``size_multiple``; keeping context at the border, as Jenicek & Chum) and cropped back after
translation — `mdir.methods.anysize.translate_any_size`, the one any-size path. MDUIT is exemplar-guided:
for each translated image a reference image of the target condition is drawn.
Aspect-kept training images of different shapes (a list) are translated one image at a
time, as the thesis's per-image augmentation does.

`Translator` is the contract of ``mdir.registry.generators.load_translator``; anything with a
``translate(images, reference=None)`` method works (tests use a tiny stand-in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mdir.methods.anysize import reflect_pad_to_multiple, translate_any_size


class Translator(Protocol):
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor: ...


def translate_padded(
    translator: Translator, x: Tensor, multiple: int, reference: Tensor | None = None
) -> Tensor:
    """Translate full images [B,3,H,W] at their size (`mdir.methods.anysize`): reflection-
    padded to the least common multiple of `multiple` (the thesis' 256) and the translator's
    own stride multiple, translated, cropped back. MDUIT references are resized to the
    padded size (E_a then sees the reference at the scale of the padded source)."""
    m = math.lcm(multiple, int(getattr(translator, "size_multiple", 1)))
    ref = reference
    if ref is not None:
        padded_hw = tuple(-(-s // m) * m for s in x.shape[-2:])
        if tuple(ref.shape[-2:]) != padded_hw:
            ref = F.interpolate(ref, size=padded_hw, mode="bilinear", align_corners=False)
    return translate_any_size(lambda t: translator.translate(t, reference=ref), x, multiple=m)


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
        images: Tensor | list[Tensor],
        eligible: Sequence[bool] | np.ndarray | None = None,
        uniforms: np.ndarray | None = None,
        ref_rng: np.random.Generator | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[Tensor | list[Tensor], np.ndarray]:
        """images [B,3,H,W] (or a list of [3,H,W]) in [-1,1] → (augmented images of the same
        kind, bool mask of translated rows). (`ids`, the images' dataset row ids, is for
        `DatasetAugmenter`; unused here.)

        `uniforms` [B] in [0, 1) replaces the private draws: the training loop draws them for
        the whole global batch from a (seed, epoch, step) generator and hands each rank its
        slice, so the same images are translated whatever the number of workers.
        `ref_rng` likewise replaces the private generator for drawing MDUIT references.
        """
        b = len(images)
        eligible = np.ones(b, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
        u = self.rng.random(b) if uniforms is None else np.asarray(uniforms, dtype=np.float64)
        mask = (u < self.probability) & eligible
        self.counter.seen += int(eligible.sum())
        if not mask.any():
            return images, mask
        ref = None
        if self.needs_reference:
            assert self.draw_reference is not None
            ref = self.draw_reference(int(mask.sum()), ref_rng or self.rng)
        if isinstance(images, list) or isinstance(ref, list):
            # shapes differ (aspect-kept images or references): one image at a time
            out, done = self._translate_each(list(images), mask, ref)
            return (out if isinstance(images, list) else torch.stack(out)), done
        idx = torch.from_numpy(np.flatnonzero(mask)).to(images.device)
        if ref is not None:
            ref = ref.to(images.device)
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

    def _translate_each(
        self, images: list[Tensor], mask: np.ndarray, ref: Tensor | list[Tensor] | None
    ) -> tuple[list[Tensor], np.ndarray]:
        """Translate the selected images of a list one at a time (shapes differ)."""
        out = list(images)
        try:
            for k, i in enumerate(np.flatnonzero(mask)):
                x = images[i]
                r = None if ref is None else ref[k][None].to(x.device)
                out[i] = translate_padded(self.translator, x[None], self.pad_multiple, r)[0].to(
                    x.dtype
                )
        except Exception:  # as for batches: count the failure, keep the originals
            self.counter.failed += int(mask.sum())
            return images, np.zeros(len(images), dtype=bool)
        self.counter.applied += int(mask.sum())
        return out, mask


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
        images: Tensor | list[Tensor],
        eligible: Sequence[bool] | np.ndarray | None = None,
        uniforms: np.ndarray | None = None,
        ref_rng: np.random.Generator | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[Tensor | list[Tensor], np.ndarray]:
        if ids is None:
            raise ValueError("DatasetAugmenter needs the images' dataset row ids (`ids`)")
        b = len(images)
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
            picked = list(out) if isinstance(out, list) else list(out.unbind(0))
            rows = np.flatnonzero(mask)
            for i, x in zip(rows, picked, strict=True):
                if tuple(x.shape) != tuple(images[i].shape):
                    raise ValueError(f"translation of row {ids[i]} has shape {tuple(x.shape)}")
        except Exception:  # an unreadable or mismatched translation must not kill a long job
            self.counter.failed += int(mask.sum())
            return images, np.zeros(b, dtype=bool)
        if isinstance(images, list):
            images = list(images)
            for i, x in zip(rows, picked, strict=True):
                images[i] = x.to(images[i].device, images[i].dtype)
        else:
            images = images.clone()
            idx = torch.from_numpy(rows).to(images.device)
            images[idx] = torch.stack(picked).to(images.device, images.dtype)
        self.counter.applied += int(mask.sum())
        return images, mask


__all__ = [
    "AugmentCounter", "DatasetAugmenter", "GanAugmenter", "Translator", "reflect_pad_to_multiple", "translate_padded", "translation_provenance",
]  # fmt: skip
