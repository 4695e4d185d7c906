"""One split of an mdir dataset as the retrieval job sees it: an `ImageStore` for random
access by row, per-row condition names, and the `Matching` built from place ids / poses /
an explicit pairs list. Rows are positions 0..N-1 in the store's `ids()` order; `load(rows)`
maps them to store ids.

Images keep their aspect ratio in the retrieval protocol (longer side 362 / 1024), so a batch
may hold several shapes: `load` then returns a list of [3, H, W] tensors (`Images`), and the
consumers (`mdir.retrieval.descriptors.embed_images`, the training step) run the network once
per group of equal shapes. Equal shapes are still one stacked tensor [n, 3, H, W]."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from mdir.methods.base import ImageStore
from mdir.retrieval.positives import Matching, read_pairs, resolve_mode

#: a batch of images in [-1, 1]: one tensor [n, 3, H, W], or a list of [3, H, W] when shapes differ
Images = Tensor | list[Tensor]


def per_shape(fn: Callable[[Tensor], Tensor], images: Images) -> Tensor:
    """`fn` ([n,3,H,W] → [n,D]) applied to `images`: directly to a stacked tensor, or once per
    group of equal shapes of a list, results put back in the list's order → [len, D]."""
    if isinstance(images, Tensor):
        return fn(images)
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(images):
        groups.setdefault(tuple(t.shape), []).append(i)
    if not groups:
        raise ValueError("no images to embed")
    order = [i for idx in groups.values() for i in idx]
    out = torch.cat([fn(torch.stack([images[i] for i in idx])) for idx in groups.values()])
    # row k of `out` is image order[k]; the inverse permutation restores the list order
    return out[torch.as_tensor(np.argsort(order), device=out.device)]


def to_device(images: Images, device) -> Images:
    """Move a batch (tensor or list) to `device`."""
    if isinstance(images, Tensor):
        return images.to(device, non_blocking=True)
    return [t.to(device, non_blocking=True) for t in images]


def load_images(store: ImageStore, ids: Sequence[int]) -> Images:
    """`store` images of `ids`: stacked when they share one shape, else a list (see module doc).
    Stores without ``load_list`` (square stores, test stand-ins) always stack."""
    load_list = getattr(store, "load_list", None)
    if load_list is None:
        return store.load(ids)
    imgs = load_list(ids)
    if imgs and len({tuple(t.shape) for t in imgs}) == 1:
        import torch

        return torch.stack(imgs)
    return imgs


@dataclass
class SplitData:
    store: ImageStore
    ids: np.ndarray  # int64 [N] store row ids
    condition: np.ndarray  # str [N] condition names
    matching: Matching
    # the training loop prefetches in a thread while the main thread may draw MDUIT references
    # from the same store, whose decode cache is not thread-safe
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, rows: Sequence[int]) -> Images:
        """Images of rows (positions) in [-1,1]: [n,3,H,W], or a list when shapes differ
        (thread-safe)."""
        with self._lock:
            return load_images(self.store, self.ids[np.asarray(rows, dtype=np.int64)].tolist())

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
        # pairs name rows by dataset row id (or by source path when the store provides it)
        lookup = {str(int(i)): k for k, i in enumerate(ids)}
        src = meta.get("source") if source is None else source
        if src is not None:
            lookup.update({str(s): k for k, s in enumerate(src)})
        pairs = read_pairs(pairs_file, lookup) if pairs_file else manifest_pairs(store, lookup)
    matching = Matching(
        mode=mode,
        place=np.asarray(meta["place"], dtype=np.int64),
        pose=pose,
        max_translation_m=max_translation_m,
        max_rotation_deg=max_rotation_deg,
        pairs=pairs,
    )
    return SplitData(store=store, ids=ids, condition=names, matching=matching)


def manifest_pairs(store: ImageStore, lookup: dict[str, int]) -> dict[int, set[int]]:
    """{query row: {positive rows}} from the (query_id, positive_id) pairs an ingest layout
    stored for the store's split (Retrieval-SfM: cirtorch's ``qidxs`` / ``pidxs``), symmetric
    like `read_pairs`; pairs whose rows are not in the store (skipped at ingest) are dropped."""
    m = getattr(store, "manifest", None)
    split = getattr(store, "split", None)
    layout = ((m.extra or {}).get("layout", {}) or {}) if m is not None else {}
    listed = (layout.get("pairs") or {}).get(split) if split else None
    if not listed:
        where = getattr(store, "uri", "the dataset")
        raise ValueError(
            f"data.positives=pairs without data.pairs_file needs query/positive pairs in the "
            f"manifest of {where} for split {split!r} (the retrieval_sfm layout stores them)"
        )
    out: dict[int, set[int]] = {}
    for q, p in listed:
        a, b = lookup.get(str(int(q))), lookup.get(str(int(p)))
        if a is None or b is None or a == b:
            continue
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def open_split(
    uri: str,
    split: str,
    image_size: int,
    conditions: Sequence[str] | None = None,
    positives: str = "auto",
    max_translation_m: float = 7.0,
    max_rotation_deg: float = 8.0,
    pairs_file: str | None = None,
    keep_aspect: bool = True,
) -> SplitData:
    """Open `split` of the dataset at `uri` through ``mdir.data.store.ShardImageStore``;
    `image_size` is the longer side (aspect kept) unless `keep_aspect` is False (square)."""
    from mdir.data.store import ShardImageStore

    store = ShardImageStore(
        uri,
        split,
        image_size,
        conditions=list(conditions) if conditions else None,
        keep_aspect=keep_aspect,
    )
    if len(store) == 0:
        raise ValueError(
            f"{uri}: split {split!r} has no images"
            + (f" of conditions {list(conditions)}" if conditions else "")
        )
    return from_store(store, positives, max_translation_m, max_rotation_deg, pairs_file)


class ConcatStore:
    """Several `ImageStore`s seen as one (rows numbered consecutively, condition names merged).

    Used when the evaluation database and queries come from different splits (e.g. RobotCar
    style: day reference images of the train split, queries of every condition from test)."""

    def __init__(self, stores: Sequence[ImageStore]) -> None:
        self.stores = list(stores)
        names: list[str] = []
        for s in self.stores:
            names += [c for c in s.conditions if c not in names]
        self.conditions = names
        self._sizes = [len(s) for s in self.stores]
        self._offsets = np.cumsum([0, *self._sizes])
        self._ids = [np.asarray(s.ids(), dtype=np.int64) for s in self.stores]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def meta(self) -> dict[str, np.ndarray]:
        parts = [s.meta() for s in self.stores]
        cond = [
            np.array(
                [self.conditions.index(s.conditions[c]) for c in np.asarray(m["condition"])],
                dtype=np.int64,
            )
            for s, m in zip(self.stores, parts, strict=True)
        ]
        out: dict[str, np.ndarray] = {"condition": np.concatenate(cond)}
        for key in ("place", "pose", "split", "source"):
            if all(key in m for m in parts):
                out[key] = np.concatenate([np.asarray(m[key]) for m in parts])
        return out

    def load_list(self, ids: Sequence[int]) -> list[Tensor]:
        """[3, H, W] per id from the store that holds it (shapes may differ)."""
        ids = np.asarray(ids, dtype=np.int64)
        which = np.searchsorted(self._offsets, ids, side="right") - 1
        out: list[Tensor | None] = [None] * len(ids)
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            local = self._ids[k][ids[sel] - self._offsets[k]]
            store = self.stores[k]
            imgs = (
                store.load_list(local.tolist())
                if hasattr(store, "load_list")
                else store.load(local.tolist())
            )
            for j, i in enumerate(sel):
                out[i] = imgs[j]
        return out  # type: ignore[return-value]

    def load(self, ids: Sequence[int]) -> Tensor:
        import torch

        return torch.stack(self.load_list(ids))
