"""`ShardImageStore`: random access to a dataset split by row id (MDUIT pairing, mining).

Implements `mdir.methods.base.ImageStore`. It reads the matching rows' encoded bytes once
(pyarrow, no Ray; JPEG bytes are ~10× smaller than decoded pixels), decodes on demand in
batches and keeps up to `cache_images` decoded images (LRU). Preprocessing is
deterministic: the whole image resized to `image_size` × `image_size` (GAN training), or with
``keep_aspect=True`` its longer side shrunk to `image_size` (the retrieval protocol: train
362, test 1024), optionally after cropping rows to a bounding box (revisited Oxford/Paris
queries); scaled to [-1, 1]. Images of different shapes come back as a list (`load_list`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from mdir.data.manifest import read_manifest
from mdir.data.shards import read_all
from mdir.data.transforms import (
    crop_box,
    decode_many,
    resize_exact,
    resize_max_side,
    to_model_range,
)


class ShardImageStore:
    """Random access by int64 row id to the images of `split` (None = all splits)."""

    def __init__(
        self,
        uri: str,
        split: str | None,
        image_size: int,
        conditions: list[str] | None = None,
        cache_images: int = 4096,
        keep_aspect: bool = False,
        crops: Mapping[int, Sequence[float]] | None = None,
    ) -> None:
        """`keep_aspect`: `image_size` is the longer side (never enlarged) instead of the
        square side; `crops`: row id → (x1, y1, x2, y2) box in original pixels, applied
        before resizing (the crop is shrunk by its full image's factor, as cirtorch does)."""
        m = read_manifest(uri)
        self.uri = uri
        self.split = split
        self.manifest = m
        self.conditions: list[str] = list(m.conditions)
        self.image_size = image_size
        self.keep_aspect = keep_aspect
        self.crops = {int(k): tuple(float(v) for v in b) for k, b in (crops or {}).items()}
        t = read_all(m, ["id", "image", "condition", "place", "pose", "split", "source"])
        mask = None
        if split is not None:
            mask = pc.equal(t["split"], split)
        if conditions:
            for c in conditions:
                m.condition_index(c)
            m2 = pc.is_in(t["condition"], value_set=pa.array(conditions))
            mask = m2 if mask is None else pc.and_(mask, m2)
        if mask is not None:
            t = t.filter(mask)
        self._ids = t["id"].to_numpy().astype(np.int64)
        self._row = {int(i): k for k, i in enumerate(self._ids)}
        self._bytes = t["image"].to_pylist()
        cond = t["condition"].to_pylist()
        self._meta = {
            "condition": np.array([self.conditions.index(c) for c in cond], np.int64),
            "place": t["place"].to_numpy().astype(np.int64),
            "pose": np.array(
                [
                    p if p is not None and len(p) == 7 else [np.nan] * 7
                    for p in t["pose"].to_pylist()
                ],
                np.float64,
            ).reshape(-1, 7),
            "split": np.array(t["split"].to_pylist(), dtype=object),
            "source": np.array(t["source"].to_pylist(), dtype=object),
        }
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self._cache_max = cache_images

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def meta(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._meta.items()}

    def _rows(self, ids: Sequence[int]) -> list[int]:
        try:
            return [self._row[int(i)] for i in ids]
        except KeyError as e:
            raise KeyError(
                f"row id {e.args[0]} is not in this store ({self.uri}, {len(self)} rows)"
            ) from None

    def _prepare(self, row: int, img: Tensor) -> Tensor:
        """Decoded uint8 [3, H, W] of store row `row` → the model's input size."""
        if not self.keep_aspect:
            return resize_exact(img, self.image_size)
        box = self.crops.get(int(self._ids[row]))
        if box is None:
            return resize_max_side(img, self.image_size)
        full = max(img.shape[-2:])
        try:
            crop = crop_box(img, box)  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"{self.uri}: row id {int(self._ids[row])}: {e}") from None
        return resize_max_side(crop, self.image_size, scale_from=full)

    def load_uint8_list(self, ids: Sequence[int]) -> list[Tensor]:
        """uint8 [3, H, W] per id (shapes may differ with ``keep_aspect``)."""
        rows = self._rows(ids)
        missing = [r for r in dict.fromkeys(rows) if r not in self._cache]
        if missing:
            for r, img in zip(missing, decode_many([self._bytes[r] for r in missing]), strict=True):
                self._cache[r] = self._prepare(r, img)
                if len(self._cache) > self._cache_max:
                    self._cache.popitem(last=False)
        out = []
        for r in rows:
            t = self._cache.get(r)
            if t is None:  # evicted within this call (cache smaller than the request)
                t = self._prepare(r, decode_many([self._bytes[r]])[0])
            else:
                self._cache.move_to_end(r)
            out.append(t)
        return out

    def load_uint8(self, ids: Sequence[int]) -> Tensor:
        """uint8 [len(ids), 3, H, W]; all images must share one shape (else `load_uint8_list`)."""
        out = self.load_uint8_list(ids)
        if not out:
            return torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        shapes = {tuple(t.shape) for t in out}
        if len(shapes) > 1:
            raise ValueError(
                f"{self.uri}: images of {len(shapes)} different shapes cannot be stacked "
                "(keep_aspect=True); load them with load_list"
            )
        return torch.stack(out)

    def load(self, ids: Sequence[int]) -> Tensor:
        """float32 [len(ids), 3, H, W] in [-1, 1]."""
        return to_model_range(self.load_uint8(ids))

    def load_list(self, ids: Sequence[int]) -> list[Tensor]:
        """float32 [3, H, W] in [-1, 1] per id; shapes may differ (``keep_aspect``)."""
        return [to_model_range(t) for t in self.load_uint8_list(ids)]
