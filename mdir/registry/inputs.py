"""What `mdir models translate` feeds a generator: photos at their own size and MDUIT's
reference (an image file, or one drawn from a condition of an mdir dataset).

Files are decoded as ingest decodes them (`mdir.data.images.decode_photo`: EXIF
orientation, 16-bit, gray, RGBA, palette, CMYK), never resized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mdir.data.images import decode_photo
from mdir.data.transforms import to_model_range


def photo_tensor(path: Path) -> Tensor:
    """An image file → float32 [3, H, W] in [-1, 1], as displayed (EXIF applied).
    Raises `mdir.data.images.BadInput` (with the ingest skip reason) for a bad file."""
    arr, _ = decode_photo(Path(path).read_bytes())
    return to_model_range(torch.from_numpy(arr.copy()).permute(2, 0, 1))  # writable


def to_uint8_hwc(image: Tensor) -> np.ndarray:
    """float [3, H, W] in [-1, 1] → uint8 [H, W, 3] (rounded, clamped)."""
    x = image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def draw_reference(uri: str, condition: str, seed: int = 0) -> tuple[Tensor, int]:
    """One image of `condition` from the mdir dataset at `uri`, drawn with `seed` (the same
    seed gives the same image) → (float32 [3, H, W] in [-1, 1] at its stored size, row id).
    The error names the condition and the dataset's conditions when it has none."""
    import pyarrow.compute as pc

    from mdir.data.manifest import read_manifest
    from mdir.data.shards import iter_tables, read_all
    from mdir.data.transforms import decode_many

    m = read_manifest(uri)
    m.condition_index(condition)  # KeyError naming the dataset's conditions
    meta = read_all(m, ["id", "condition"])
    ids = meta.filter(pc.equal(meta["condition"], condition))["id"].to_numpy()
    if len(ids) == 0:
        raise ValueError(f"dataset {uri!r} has no image of condition {condition!r}")
    pick = int(np.sort(ids)[np.random.default_rng(seed).integers(len(ids))])
    for t in iter_tables(m, ["id", "image"]):
        hit = t.filter(pc.equal(t["id"], pick))
        if hit.num_rows:
            img = decode_many([hit["image"][0].as_py()])[0]
            return to_model_range(img), pick
    raise ValueError(f"dataset {uri!r}: row {pick} listed but not found in its shards")
