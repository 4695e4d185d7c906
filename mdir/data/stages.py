"""Ray Data stages that run inside Ray worker processes: pyarrow + numpy + PIL only.

No torch here on purpose: every Ray worker that imports torch costs ~300 MB and seconds of
start-up; these stages need neither. (The consumer side — `iter_train_batches` — runs in
the training process, which has torch anyway.)

* `read_decode_stage`: one task per Parquet row group: read it (local or s3 via the
  pickled fsspec filesystem), keep the wanted split/conditions, decode each JPEG/PNG with
  PIL (JPEG DCT-domain downscaling via ``draft`` when the image is ≥ 2× larger than
  needed) and shrink so the short side is ``cache_side`` (or to exactly ``size`` × ``size``
  in ``resize`` mode). Output: uint8 HWC ``image`` (+ ``image_b``), id, condition index,
  place — binary columns dropped (iter_torch_batches rejects them).
* `augment_stage`: thesis augmentation per epoch — s ~ U(scale_min, 1), square crop of side
  s · min(H, W) at a random position, PIL bilinear resize (antialiased when shrinking) to
  ``size``, flip with p = 0.5 — the same crop and flip for ``image`` and ``image_b``; rows
  permuted within the block; output uint8 NCHW with keys prefixed by the stream key.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image


def _decode(data: bytes, cache_side: int, exact: bool) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if exact:
        target = (cache_side, cache_side)
    else:
        s = min(1.0, cache_side / min(w, h))
        target = (max(1, round(w * s)), max(1, round(h * s)))
    if im.format == "JPEG" and target[0] * 2 <= w and target[1] * 2 <= h:
        im.draft("RGB", target)  # decode at 1/2, 1/4, 1/8 scale directly
    im = im.convert("RGB")
    if im.size != target:
        im = im.resize(target, Image.Resampling.BILINEAR)
    return np.asarray(im)


def _column(arrs: list[np.ndarray]) -> np.ndarray:
    if arrs and len({a.shape for a in arrs}) == 1:
        return np.stack(arrs)
    out = np.empty(len(arrs), dtype=object)  # variable shapes → Ray variable-shaped tensors
    for i, a in enumerate(arrs):
        out[i] = a
    return out


def filter_rows(t: pa.Table, split: str | None, conditions: list[str] | None) -> pa.Table:
    mask = None
    if split is not None:
        mask = pc.equal(t["split"], split)
    if conditions:
        m2 = pc.is_in(t["condition"], value_set=pa.array(conditions))
        mask = m2 if mask is None else pc.and_(mask, m2)
    return t if mask is None else t.filter(mask)


def decode_table(
    t: pa.Table, *, all_conditions: list[str], cache_side: int, exact: bool, paired: bool
) -> dict[str, np.ndarray]:
    index = {c: i for i, c in enumerate(all_conditions)}
    out: dict[str, np.ndarray] = {
        "id": t["id"].to_numpy().astype(np.int64),
        "condition": np.array([index.get(c, -1) for c in t["condition"].to_pylist()], np.int64),
        "place": t["place"].to_numpy().astype(np.int64),
    }
    for col in ("image", "image_b") if paired else ("image",):
        out[col] = _column([_decode(b, cache_side, exact) for b in t[col].to_pylist()])
    return out


def read_decode_stage(
    batch: dict[str, np.ndarray],
    *,
    fs: Any,
    split: str | None,
    conditions: list[str] | None,
    all_conditions: list[str],
    cache_side: int,
    exact: bool,
    paired: bool,
) -> dict[str, np.ndarray]:
    """batch = {"path": [...], "row_group": [...]} (usually one row group per task)."""
    cols = ["id", "image", "condition", "place", "split"] + (["image_b"] if paired else [])
    tables = []
    for path, rg in zip(batch["path"], batch["row_group"], strict=True):
        with fs.open(str(path), "rb") as f:
            tables.append(pq.ParquetFile(f).read_row_group(int(rg), columns=cols))
    t = filter_rows(pa.concat_tables(tables), split, conditions)
    return decode_table(
        t, all_conditions=all_conditions, cache_side=cache_side, exact=exact, paired=paired
    )


def _rows(col: Any) -> list[np.ndarray]:
    return (
        list(col)
        if isinstance(col, np.ndarray) and col.dtype != object
        else [np.asarray(x) for x in col]
    )


def augment_stage(
    batch: dict[str, np.ndarray],
    *,
    key: str,
    mode: str,
    size: int,
    scale_min: float,
    flip: bool,
    seed: int | None,
    paired: bool,
) -> dict[str, np.ndarray]:
    ids = np.asarray(batch["id"])
    n = len(ids)
    rng = np.random.default_rng(None if seed is None else [seed, int(ids[0]) if n else 0, n])
    perm = rng.permutation(n)  # shuffle within the block (blocks are shuffled by order)
    imgs = _rows(batch["image"])
    imgs_b = _rows(batch["image_b"]) if paired else None
    out_a = np.empty((n, 3, size, size), np.uint8)
    out_b = np.empty((n, 3, size, size), np.uint8) if paired else None
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    for k, i in enumerate(perm):
        box = None
        if mode != "resize":
            h, w = imgs[i].shape[:2]
            side = max(1.0, rng.uniform(scale_min, 1.0) * min(h, w))
            x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
            box = (x0, y0, x0 + side, y0 + side)
        for src, dst in ((imgs, out_a), (imgs_b, out_b)):
            if src is None or dst is None:
                continue
            a = src[i]
            if box is not None or a.shape[:2] != (size, size):
                a = np.asarray(
                    Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR, box=box)
                )
            if flips[k]:
                a = a[:, ::-1]
            dst[k] = a.transpose(2, 0, 1)
    out = {
        key: out_a,
        f"{key}_id": ids[perm],
        f"{key}_condition": np.asarray(batch["condition"])[perm],
        f"{key}_place": np.asarray(batch["place"])[perm],
    }
    if paired and out_b is not None:
        out.update(
            {
                "B": out_b,
                "B_id": out[f"{key}_id"],
                "B_condition": out[f"{key}_condition"],
                "B_place": out[f"{key}_place"],
            }
        )
    return out
