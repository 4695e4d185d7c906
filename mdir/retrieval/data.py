"""One split of an mdir dataset as the retrieval job sees it: an `ImageStore` for random
access by row, per-row condition names, and the `Matching` built from place ids / poses /
an explicit pairs list. Rows are positions 0..N-1 in the store's `ids()` order; `load(rows)`
maps them to store ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mdir.methods.base import ImageStore
from mdir.retrieval.positives import Matching, read_pairs, resolve_mode


@dataclass
class SplitData:
    store: ImageStore
    ids: np.ndarray  # int64 [N] store row ids
    condition: np.ndarray  # str [N] condition names
    matching: Matching

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, rows: Sequence[int]) -> Tensor:
        """Images of rows (positions) → [n,3,H,W] in [-1,1]."""
        return self.store.load(self.ids[np.asarray(rows, dtype=np.int64)].tolist())

    def rows_with_condition(self, names: Sequence[str]) -> np.ndarray:
        if not names:
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(np.isin(self.condition, list(names))).astype(np.int64)


def from_store(
    store: ImageStore,
    positives: str = "auto",
    max_translation_m: float = 7.0,
    max_rotation_deg: float = 8.0,
    pairs_file: str | None = None,
    source: Sequence[str] | None = None,
) -> SplitData:
    """Wrap any `ImageStore` (the real `ShardImageStore` or a test stand-in)."""
    meta = store.meta()
    ids = np.asarray(store.ids(), dtype=np.int64)
    cond_codes = np.asarray(meta["condition"], dtype=np.int64)
    names = np.asarray(store.conditions, dtype=object)[cond_codes].astype(str)
    pose = np.asarray(meta.get("pose", np.full((len(ids), 7), np.nan)), dtype=np.float64).reshape(
        len(ids), 7
    )
    mode = resolve_mode(positives, pose)
    pairs: dict[int, set[int]] = {}
    if mode == "pairs":
        assert pairs_file is not None
        src = meta.get("source") if source is None else source
        lookup = {str(s): i for i, s in enumerate(src)} if src is not None else None
        pairs = read_pairs(pairs_file, lookup)
    matching = Matching(
        mode=mode,
        place=np.asarray(meta["place"], dtype=np.int64),
        pose=pose,
        max_translation_m=max_translation_m,
        max_rotation_deg=max_rotation_deg,
        pairs=pairs,
    )
    return SplitData(store=store, ids=ids, condition=names, matching=matching)


def open_split(
    uri: str,
    split: str,
    image_size: int,
    conditions: Sequence[str] | None = None,
    positives: str = "auto",
    max_translation_m: float = 7.0,
    max_rotation_deg: float = 8.0,
    pairs_file: str | None = None,
) -> SplitData:
    """Open `split` of the dataset at `uri` through ``mdir.data.store.ShardImageStore``."""
    from mdir.data.store import ShardImageStore

    store = ShardImageStore(
        uri, split, image_size, conditions=list(conditions) if conditions else None
    )
    if len(store) == 0:
        raise ValueError(
            f"{uri}: split {split!r} has no images"
            + (f" of conditions {list(conditions)}" if conditions else "")
        )
    return from_store(store, positives, max_translation_m, max_rotation_deg, pairs_file)
