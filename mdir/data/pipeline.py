"""Ray Data pipelines that feed Ray Train workers, and plain iteration for evaluation.

Training pipeline (one per stream)::

    materialize (default): row groups of the shards in the manifest → read_decode_stage
    (read the Parquet row groups, filter split/conditions, decode, shrink to the cache side)
    → decoded images cached in the object store → per epoch: randomize_block_order →
    augment_stage (random square crop + resize, flip; uint8)
    streaming (materialize=False): per epoch: randomize_block_order over the row groups →
    read_augment_stage (both stages in one task; nothing cached)
    → DataIterator.iter_torch_batches → `iter_train_batches` (exact batch size, cycling,
    to device, normalise to [-1, 1] there)

The stages live in `mdir.data.stages` (no torch in Ray workers: less memory, fast start).

Streams (`make_train_datasets`):
    unpaired → {"A": domain_a conditions, "B": domain_b conditions}  (CycleGAN)
    paired   → {"AB": rows with image_b}, emitting keys "A" and "B"  (pix2pix)
    single   → {"A": all conditions} + `ShardImageStore` for id look-ups (MDUIT)

Each stream's columns are prefixed with its key: ``A`` uint8 [B,3,S,S] → float [-1, 1],
``A_id``, ``A_condition`` (index into manifest.conditions), ``A_place`` int64.

Ray Train splits each dataset across workers (`streaming_split(n, equal=True)` in its
default DataConfig); `iter_train_batches` additionally yields exactly `steps` batches on
every rank (cycling a stream that runs out), so DDP never waits for a missing batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mdir.data import io
from mdir.data.config import DataConfig
from mdir.data.images import decode_rgb
from mdir.data.manifest import Manifest, read_manifest
from mdir.data.shards import ROW_GROUP_SIZE, iter_tables
from mdir.data.stages import augment_stage, read_augment_stage, read_decode_stage

if TYPE_CHECKING:  # torch is imported lazily: metadata/iteration users need not load it
    import torch


def resolve_domains(manifest: Manifest, cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Domain A / B condition lists (empty domain_a = all; empty domain_b = all not in A)."""
    for c in [*cfg.domain_a, *cfg.domain_b]:
        manifest.condition_index(c)  # raises a clear KeyError naming the dataset
    a = list(cfg.domain_a) or list(manifest.conditions)
    b = list(cfg.domain_b) or [c for c in manifest.conditions if c not in a]
    return a, b


# ---------------------------------------------------------------- datasets


def row_group_items(manifest: Manifest) -> list[dict[str, Any]]:
    """One work item per Parquet row group of every shard in the manifest (shards are
    written with `ROW_GROUP_SIZE` rows per group), so decoding parallelises finely."""
    items = []
    for shard, uri in zip(manifest.shards, manifest.shard_uris(), strict=True):
        _, path = io.get_fs(uri)
        for rg in range(-(-shard.rows // ROW_GROUP_SIZE)):
            items.append({"path": path, "row_group": rg})
    return items


#: Parquet row groups read, decoded and augmented per block (8 × 64 = 512 rows). Ray Data
#: splits a block whose output outgrows its target size (128 MiB) by itself.
ROW_GROUPS_PER_BLOCK = 8


def num_blocks(row_groups: int, cfg: DataConfig) -> int:
    """Blocks (= tasks per pass) for `row_groups` row groups: `ROW_GROUPS_PER_BLOCK` per
    block, and at least 2 per parallel task so both stay busy. Per-task overhead dominated
    with one 64-row group per block: on 2000 images at 256 px, epochs over 4 blocks ran 1.2×
    faster than over 32 (`mdir bench data`, 745 vs 625 images/s)."""
    wanted = max(2 * cfg.parallelism, -(-row_groups // ROW_GROUPS_PER_BLOCK))
    return max(1, min(row_groups, wanted))


def _tasks(n: int):
    from ray.data import TaskPoolStrategy

    return TaskPoolStrategy(size=n)


def _read_kwargs(
    manifest: Manifest,
    split: str | None,
    conditions: list[str] | None,
    cfg: DataConfig,
    paired: bool,
) -> dict[str, Any]:
    exact = cfg.augment == "resize"
    fs, _ = io.get_fs(manifest.uri)
    return {
        "fs": fs,
        "split": split,
        "conditions": conditions,
        "all_conditions": list(manifest.conditions),
        "cache_side": cfg.image_size if exact else cfg.resolved_cache_side(),
        "exact": exact,
        "paired": paired,
    }


def _augment_kwargs(cfg: DataConfig, key: str, paired: bool) -> dict[str, Any]:
    return {
        "key": key,
        "mode": cfg.augment,
        "size": cfg.image_size,
        "scale_min": cfg.scale_min,
        "flip": cfg.flip,
        "seed": cfg.seed,
        "paired": paired,
    }


def _row_group_dataset(manifest: Manifest, cfg: DataConfig):
    import ray.data

    items = row_group_items(manifest)
    if not items:
        raise io.DataPathError(f"dataset {manifest.uri!r} has no shards")
    return ray.data.from_items(items, override_num_blocks=num_blocks(len(items), cfg))


def _map(ds, fn, cfg: DataConfig, fn_kwargs: dict[str, Any]):
    """One task per block (batch_size=None: no re-batching copies), `cfg.parallelism`
    tasks at a time."""
    return ds.map_batches(
        fn,
        batch_format="numpy",
        batch_size=None,
        fn_kwargs=fn_kwargs,
        compute=_tasks(cfg.parallelism),
        num_cpus=cfg.task_cpus,
        zero_copy_batch=True,
    )


def decoded_dataset(
    manifest: Manifest,
    split: str | None,
    conditions: list[str] | None,
    cfg: DataConfig,
    paired: bool = False,
):
    """row groups → read + filter + decode, materialised: uint8 HWC images with
    id / condition / place cached in the object store. Runs in Ray tasks; the driver only
    lists row groups."""
    ds = _map(
        _row_group_dataset(manifest, cfg),
        read_decode_stage,
        cfg,
        _read_kwargs(manifest, split, conditions, cfg, paired),
    )
    return ds.materialize()


def train_dataset(
    manifest: Manifest,
    split: str,
    conditions: list[str] | None,
    cfg: DataConfig,
    key: str,
    paired: bool = False,
):
    """One training stream, re-augmented every epoch (lazy), in shuffled block order.

    ``materialize``: decode once (`decoded_dataset`), then crop/flip the cached images each
    epoch. Otherwise stream: each epoch reads, decodes and augments the row groups in one
    task per block (`read_augment_stage`); memory stays bounded by the blocks in flight."""
    aug = _augment_kwargs(cfg, key, paired)
    if cfg.materialize:
        decoded = decoded_dataset(manifest, split, conditions, cfg, paired)
        return _map(decoded.randomize_block_order(), augment_stage, cfg, aug)
    read = _read_kwargs(manifest, split, conditions, cfg, paired)
    return _map(
        _row_group_dataset(manifest, cfg).randomize_block_order(),
        read_augment_stage,
        cfg,
        {"read": read, "augment": aug},
    )


def make_train_datasets(cfg: DataConfig, split: str) -> dict[str, Any]:
    """Ray Datasets for Ray Train's ``datasets=`` argument (see module docstring)."""
    m = read_manifest(cfg.uri)
    if split not in m.counts:
        raise KeyError(f"split {split!r} not in dataset {cfg.uri!r} (has {m.splits})")
    if cfg.mode == "paired":
        if not m.paired:
            raise ValueError(
                f"dataset {cfg.uri!r} is not paired (no image_b); use mode unpaired/single"
            )
        return {"AB": train_dataset(m, split, None, cfg, "A", paired=True)}
    if cfg.mode == "single":
        return {"A": train_dataset(m, split, None, cfg, "A")}
    a, b = resolve_domains(m, cfg)
    for name, conds in (("domain_a", a), ("domain_b", b)):
        if m.count(split, conds) == 0:
            raise ValueError(
                f"data.{name}: no rows of conditions {conds} in split {split!r} of {cfg.uri!r}"
            )
    return {
        "A": train_dataset(m, split, a, cfg, "A"),
        "B": train_dataset(m, split, b, cfg, "B"),
    }


def stream_rows(cfg: DataConfig, split: str) -> dict[str, int]:
    """Rows per stream key (from the manifest; no Ray)."""
    m = read_manifest(cfg.uri)
    if cfg.mode in ("paired", "single"):
        return {"AB" if cfg.mode == "paired" else "A": m.count(split)}
    a, b = resolve_domains(m, cfg)
    return {"A": m.count(split, a), "B": m.count(split, b)}


def steps_per_epoch(cfg: DataConfig, split: str, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch, identical on every rank: the longest stream (CycleGAN's
    max(|A|, |B|) convention) divided by the global batch, at least 1."""
    n = max(stream_rows(cfg, split).values())
    return max(1, n // (batch_size * max(world_size, 1)))


# ---------------------------------------------------------------- consumer side


def _cycle_batches(
    it: Any, batch_size: int, shuffle_buffer: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless fixed-size batches from a DataIterator (re-iterates when a pass ends,
    carries leftovers over so every batch has exactly `batch_size` rows). A batch that
    arrives whole is passed on as is: no copy."""
    import torch

    def rows(b: dict[str, torch.Tensor]) -> int:
        return len(next(iter(b.values())))

    parts: list[dict[str, torch.Tensor]] = []  # leftovers, fewer than batch_size rows
    while True:
        got = 0
        for b in it.iter_torch_batches(
            batch_size=batch_size,
            local_shuffle_buffer_size=shuffle_buffer or None,
            prefetch_batches=2,
            device="cpu",
        ):
            got += 1
            if not parts and rows(b) == batch_size:
                yield b
                continue
            parts.append(b)
            have = sum(rows(p) for p in parts)
            if have < batch_size:
                continue
            merged = {k: torch.cat([p[k] for p in parts]) for k in b}
            for i in range(0, have - batch_size + 1, batch_size):
                yield {k: v[i : i + batch_size] for k, v in merged.items()}
            rest = have % batch_size
            parts = [{k: v[have - rest :] for k, v in merged.items()}] if rest else []
        if got == 0:
            raise RuntimeError(
                "a data stream is empty on this worker (too few rows for the number of workers?)"
            )


@functools.cache  # once per process
def _keep_freed_batches_in_heap() -> None:
    """glibc returns every freed allocation above its mmap threshold (≤ 32 MiB) to the
    OS, so each new float batch (32 × 3 × 256² × 4 B = 25 MiB) is page-faulted in afresh:
    normalising such a batch took 9.0 ms instead of 2.7 ms on this 2-core machine. Raise
    the threshold so freed batches are reused from the heap (at most 128 MiB kept free)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters (malloc.h)
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 128 << 20)


def iter_train_batches(
    shards: dict[str, Any],
    batch_size: int,
    steps: int,
    device: torch.device | str | None = None,
    shuffle_buffer: int = 0,
    pin_memory: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly `steps` batches merged from all streams (keys "A", "B", "A_id", ...);
    images as float32 [-1, 1] NCHW on `device`. Images travel as uint8 and are
    normalised after the move to `device` (4× less to copy to a GPU); on a GPU they are
    copied from pinned memory (`device_copy`)."""
    import torch

    from mdir.data.transforms import to_model_range

    _keep_freed_batches_in_heap()
    gens = {k: _cycle_batches(it, batch_size, shuffle_buffer) for k, it in shards.items()}
    dev = torch.device(device) if device is not None else None
    for _ in range(steps):
        batch: dict[str, torch.Tensor] = {}
        for g in gens.values():
            batch.update(next(g))
        for k, v in list(batch.items()):
            if dev is not None:
                v = device_copy(v, dev, pin_memory)
            batch[k] = to_model_range(v) if v.dtype == torch.uint8 and v.dim() == 4 else v
        yield batch


def device_copy(v: torch.Tensor, dev: torch.device, pin_memory: bool) -> torch.Tensor:
    """`v` on `dev`. GPU branch: a copy from pageable memory is synchronous whatever
    ``non_blocking`` says; from page-locked (pinned) memory it is a DMA the host does not
    wait for, so the next batch is prepared while this one travels. CPU: no copy."""
    if dev.type == "cuda" and pin_memory and v.device.type == "cpu":
        return v.pin_memory().to(dev, non_blocking=True)
    return v.to(dev, non_blocking=True)


def split_for_workers(datasets: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Outside Ray Train: per-worker DataIterators (what `get_dataset_shard` returns)."""
    per_key = {k: ds.streaming_split(n, equal=True) for k, ds in datasets.items()}
    return [{k: its[i] for k, its in per_key.items()} for i in range(n)]


# ---------------------------------------------------------------- plain iteration (no Ray)


def _row_meta(t: pa.Table, i: int, conditions: list[str]) -> dict[str, Any]:
    row = {c: t[c][i].as_py() for c in t.column_names if c not in ("image", "image_b")}
    row["condition_index"] = (
        conditions.index(row["condition"]) if row.get("condition") in conditions else -1
    )
    return row


def iter_images(
    uri: str,
    split: str | None = None,
    conditions: list[str] | None = None,
    limit: int | None = None,
) -> Iterator[tuple[dict, np.ndarray]]:
    """(row metadata, uint8 [H, W, 3] RGB) in shard order, streaming (bounded memory).

    Metadata keys: id, condition, condition_index, place, place_name, pose (7 floats or
    None), split, source, sha256, width, height (and condition_b for paired data)."""
    m = read_manifest(uri)
    n = 0
    if limit is not None and limit <= 0:
        return
    for t in iter_tables(m):
        mask = None
        if split is not None:
            mask = pc.equal(t["split"], split)
        if conditions:
            m2 = pc.is_in(t["condition"], value_set=pa.array(conditions))
            mask = m2 if mask is None else pc.and_(mask, m2)
        if mask is not None:
            t = t.filter(mask)
        images = t["image"].to_pylist()
        for i in range(t.num_rows):
            yield _row_meta(t, i, m.conditions), decode_rgb(images[i])
            n += 1
            if limit is not None and n >= limit:
                return
