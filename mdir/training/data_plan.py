"""Where the training loop gets its batches, store and fixed validation images.

`DataPlan` is the loop's only view of the data, so the loop stays independent of the
data layer (tests plug in random tensors). `ShardDataPlan` is the real one: Ray Data
streams from ``mdir.data.pipeline.make_train_datasets`` handed to the `TorchTrainer` as
``datasets={...}`` and read back per worker with ``ray.train.get_dataset_shard``;
``iter_train_batches`` yields exactly `steps` batches on every rank (equal step counts
keep DDP from hanging). A plan is pickled into each worker (keep it light: the Ray
datasets themselves travel through the trainer, not the plan).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from mdir.data.config import DataConfig
from mdir.data.pipeline import device_copy


class DataPlan(Protocol):
    def datasets(self) -> dict[str, Any]:
        """Driver side: Ray Datasets for ``TorchTrainer(datasets=...)`` (may be empty)."""
        ...

    def steps_per_epoch(self, world_size: int) -> int:
        """Driver side: steps per epoch, identical on every rank."""
        ...

    def batches(self, steps: int, device: torch.device) -> Iterator[dict[str, Tensor]]:
        """Worker side: exactly `steps` batches in the format of `mdir.methods.base`."""
        ...

    def store(self) -> Any:
        """Worker side: the `ImageStore` for methods that need one (MDUIT), else None."""
        ...

    def samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        """Fixed validation images: (sources, targets or None), float [-1, 1] NCHW; the
        targets double as MDUIT's appearance references."""
        ...

    def eval_images(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Validation (sources, real targets) as uint8 [N, H, W, 3] for the GAN metrics."""
        ...


def _hwc(t: Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).contiguous().numpy()


class ShardDataPlan:
    """Real data: mdir shards through Ray Data (see the module docstring)."""

    def __init__(
        self, data: DataConfig, batch_size: int, shuffle_buffer: int | None = None
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle_buffer = data.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        self._keys: list[str] | None = None
        self._store: Any = None

    # -- driver ----------------------------------------------------------------------------
    def datasets(self) -> dict[str, Any]:
        from mdir.data.pipeline import make_train_datasets

        ds = make_train_datasets(self.data, self.data.train_split)
        self._keys = sorted(ds)
        return ds

    def steps_per_epoch(self, world_size: int) -> int:
        from mdir.data.pipeline import steps_per_epoch

        return steps_per_epoch(self.data, self.data.train_split, self.batch_size, world_size)

    # -- worker ----------------------------------------------------------------------------
    def batches(self, steps: int, device: torch.device) -> Iterator[dict[str, Tensor]]:
        import ray.train

        from mdir.data.pipeline import iter_train_batches

        keys = self._keys or (
            ["AB"]
            if self.data.mode == "paired"
            else ["A"]
            if self.data.mode == "single"
            else ["A", "B"]
        )
        shards = {k: ray.train.get_dataset_shard(k) for k in keys}
        return iter_train_batches(
            shards,
            self.batch_size,
            steps,
            device=device,
            shuffle_buffer=self.shuffle_buffer,
            pin_memory=self.data.pin_memory,
        )

    def store(self) -> Any:
        if self.data.mode != "single":
            return None
        if self._store is None:
            from mdir.data.store import ShardImageStore

            self._store = ShardImageStore(
                self.data.uri, self.data.train_split, self.data.image_size
            )
        return self._store

    def _domains(self) -> tuple[list[str], list[str]]:
        from mdir.data.manifest import read_manifest
        from mdir.data.pipeline import resolve_domains

        return resolve_domains(read_manifest(self.data.uri), self.data)

    def _val_uint8(self, n: int) -> tuple[Tensor, Tensor | None]:
        """uint8 NCHW validation sources and targets (paired: the row's image_b)."""
        from mdir.data.store import ShardImageStore

        split, size = self.data.val_split, self.data.image_size
        if self.data.mode == "paired":
            return _paired_rows(self.data.uri, split, size, n)
        a, b = self._domains()
        src = ShardImageStore(self.data.uri, split, size, conditions=a)
        tgt = ShardImageStore(self.data.uri, split, size, conditions=b)
        if len(src) == 0:
            raise ValueError(
                f"data.val_split: no {a} images in split {split!r} of {self.data.uri!r}"
            )
        s = src.load_uint8(src.ids()[:n].tolist())
        t = tgt.load_uint8(_cycle(tgt.ids(), len(s)).tolist()) if len(tgt) else None
        return s, t

    def samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        s, t = self._val_uint8(n)
        conv = lambda x: x.float() / 127.5 - 1.0  # noqa: E731 - uint8 → [-1, 1] (mean = std = 0.5)
        return conv(s), (conv(t) if t is not None else None)

    def eval_images(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        s, t = self._val_uint8(n)
        return _hwc(s), _hwc(t if t is not None else s)


def _cycle(ids: np.ndarray, n: int) -> np.ndarray:
    return np.resize(ids, n) if len(ids) else ids


def _paired_rows(uri: str, split: str, size: int, n: int) -> tuple[Tensor, Tensor]:
    """First `n` rows of a paired split: (image, image_b) as uint8 NCHW resized to `size`."""
    import pyarrow.compute as pc

    from mdir.data.manifest import read_manifest
    from mdir.data.shards import read_all
    from mdir.data.transforms import decode_many, resize_exact

    t = read_all(read_manifest(uri), ["image", "image_b", "split"])
    t = t.filter(pc.equal(t["split"], split)).slice(0, n)
    if t.num_rows == 0:
        raise ValueError(f"data.val_split: split {split!r} of {uri!r} is empty")
    a = torch.stack([resize_exact(x, size) for x in decode_many(t["image"].to_pylist())])
    b = torch.stack([resize_exact(x, size) for x in decode_many(t["image_b"].to_pylist())])
    return a, b


class MemoryDataPlan(ShardDataPlan):
    """Small datasets without Ray Data: every rank decodes the split once (through
    `ShardImageStore`), takes the rows ``rank::world_size`` of each stream and draws
    shuffled batches from them (random horizontal flip when ``data.flip``). The same
    steps-per-epoch rule as the Ray Data path, so both loaders train identically long.
    Meant for tests and tiny demos on 2-core machines, where Ray Data's task start-up
    dominates; real datasets use `ShardDataPlan`."""

    def __init__(self, data: DataConfig, batch_size: int, seed: int = 0) -> None:
        super().__init__(data, batch_size)
        self.seed = seed
        self._streams: dict[str, dict[str, Tensor]] | None = None
        self._epoch = 0

    def datasets(self) -> dict[str, Any]:
        return {}

    def _load_streams(self, rank: int, world: int) -> dict[str, dict[str, Tensor]]:
        from mdir.data.store import ShardImageStore

        split, size = self.data.train_split, self.data.image_size
        if self.data.mode == "paired":
            a, b = _paired_rows(self.data.uri, split, size, 1 << 30)
            idx = torch.arange(len(a))[rank::world]
            return {"AB": {"A": a[idx], "B": b[idx], "A_id": idx, "B_id": idx}}
        if self.data.mode == "single":
            groups = {"A": None}
        else:
            da, db = self._domains()
            groups = {"A": da, "B": db}
        out: dict[str, dict[str, Tensor]] = {}
        for key, conds in groups.items():
            st = ShardImageStore(self.data.uri, split, size, conditions=conds)
            ids = st.ids()[rank::world]
            if len(ids) == 0:
                raise ValueError(
                    f"data.{'domain_a' if key == 'A' else 'domain_b'}: no rows for rank {rank} of {world}"
                )
            rows = [st._row[int(i)] for i in ids]  # noqa: SLF001 - aligned metadata of those ids
            meta = st.meta()
            out[key] = {
                key: st.load_uint8(ids.tolist()),
                f"{key}_id": torch.from_numpy(ids),
                f"{key}_condition": torch.from_numpy(meta["condition"][rows]),
                f"{key}_place": torch.from_numpy(meta["place"][rows]),
            }
        return out

    def batches(self, steps: int, device: torch.device) -> Iterator[dict[str, Tensor]]:
        import ray.train

        ctx = ray.train.get_context()
        return self.local_batches(steps, device, ctx.get_world_rank(), ctx.get_world_size())

    def local_batches(
        self, steps: int, device: torch.device, rank: int = 0, world: int = 1
    ) -> Iterator[dict[str, Tensor]]:
        """The same batches outside Ray Train (plain-loop baseline of `mdir bench train`)."""
        if self._streams is None:
            self._streams = self._load_streams(rank, world)
        g = torch.Generator().manual_seed(self.seed * 1000003 + rank * 7919 + self._epoch)
        self._epoch += 1
        orders = {k: torch.empty(0, dtype=torch.long) for k in self._streams}
        for _ in range(steps):
            batch: dict[str, Tensor] = {}
            for k, cols in self._streams.items():
                n = len(next(iter(cols.values())))
                while len(orders[k]) < self.batch_size:
                    orders[k] = torch.cat([orders[k], torch.randperm(n, generator=g)])
                pick, orders[k] = orders[k][: self.batch_size], orders[k][self.batch_size :]
                flip = self.data.flip and bool(torch.rand(1, generator=g) < 0.5)
                for name, col in cols.items():
                    v = col[pick]
                    if v.dtype == torch.uint8:
                        v = v.float() / 127.5 - 1.0
                        if flip:
                            v = v.flip(-1)
                    batch[name] = device_copy(v, device, self.data.pin_memory)
            yield batch
