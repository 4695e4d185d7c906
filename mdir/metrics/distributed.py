"""Distributed Inception feature extraction on Ray with exactly merged statistics.

A pool of Ray actors (`FeatureWorker`), each holding one `FeatureExtractor`, processes
chunks of images (uint8 arrays, or file paths that the worker decodes itself so the driver
never holds a large set). Every worker keeps its own `GaussianStats` of the pool features;
the driver merges them with the pairwise (Chan et al.) update, which is exact, and gets the
features back in input order, so FID / KID / IS / PRD equal the single-process results
(up to float64 summation order, ~1e-12 relative).

With a random-init extractor the seed makes every worker's network identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mdir.metrics.fid import GaussianStats
from mdir.runtime import forward_env

ImageSource = np.ndarray | Sequence[str]
"""uint8 images [N, H, W, 3] or a list of image file paths."""


def load_image(path: str) -> np.ndarray:
    """Decode an image file (local path or fsspec URI) to uint8 HWC RGB."""
    import io

    import fsspec
    from PIL import Image

    with fsspec.open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclass
class DistributedFeatures:
    """Features in input order, merged statistics and the extractor that made them."""

    pool: np.ndarray
    logits: np.ndarray | None
    stats: GaussianStats
    worker_stats: list[GaussianStats]
    label: str
    source: str


class FeatureWorker:
    """Ray actor body: one extractor, running statistics of everything it has seen."""

    def __init__(self, extractor_kwargs: dict, num_threads: int = 1) -> None:
        import torch

        from mdir.metrics.features import FEATURE_DIM, FeatureExtractor

        torch.set_num_threads(max(1, num_threads))
        self.extractor = FeatureExtractor(**extractor_kwargs)
        self.stats = GaussianStats(FEATURE_DIM)

    def info(self) -> tuple[str, str]:
        return self.extractor.label, self.extractor.source

    def run(self, chunk_id: int, images) -> tuple[int, np.ndarray, np.ndarray | None]:
        if len(images) and isinstance(images[0], str):
            images = [load_image(p) for p in images]
        f = self.extractor.extract(images)
        self.stats.update(f.pool)
        return chunk_id, f.pool, f.logits

    def get_stats(self) -> GaussianStats:
        return self.stats


def extract_features_distributed(
    images: ImageSource,
    extractor_kwargs: dict,
    num_workers: int = 2,
    chunk_size: int = 64,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> DistributedFeatures:
    """Extract pool features and logits of `images` with `num_workers` Ray actors.

    Connects to RAY_ADDRESS (or starts a private local Ray) if this process is not
    connected yet. Returns features in input order and the exactly merged stats.
    """
    import ray
    from ray.util import ActorPool

    if num_workers < 1:
        raise ValueError("num_workers must be ≥ 1")
    if not ray.is_initialized():
        # RAY_ADDRESS → that cluster; otherwise a private local instance (never someone
        # else's cluster, no ~/.ray/auth_token written).
        from mdir.data.raylocal import init_ray

        init_ray(num_cpus=max(2, int(num_workers * cpus_per_worker + 0.999)))
    n = len(images)
    chunks = [(i, s) for i, s in enumerate(range(0, n, chunk_size))]
    threads = max(1, int(cpus_per_worker))
    actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(FeatureWorker)
    env = forward_env()  # MDIR_INCEPTION_WEIGHTS, MDIR_CACHE_DIR, ... (mdir.runtime's one list)
    actors = [
        actor_cls.options(runtime_env={"env_vars": env} if env else None).remote(
            extractor_kwargs, threads
        )
        for _ in range(num_workers)
    ]
    try:
        label, source = ray.get(actors[0].info.remote())
        pool = ActorPool(actors)
        parts: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

        def submit(actor, item):
            cid, start = item
            return actor.run.remote(cid, images[start : start + chunk_size])

        for cid, p, lg in pool.map_unordered(submit, chunks):
            parts[cid] = (p, lg)
        worker_stats = ray.get([a.get_stats.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
    from mdir.metrics.features import FEATURE_DIM, NUM_LOGITS

    order = sorted(parts)
    pool_f = (
        np.concatenate([parts[i][0] for i in order])
        if order
        else np.zeros((0, FEATURE_DIM), np.float32)
    )
    if not order:
        logits = np.zeros((0, NUM_LOGITS), np.float32)
    elif any(parts[i][1] is None for i in order):
        logits = None  # weights without the fc: IS is omitted
    else:
        logits = np.concatenate([parts[i][1] for i in order])
    merged = GaussianStats(FEATURE_DIM)
    for s in worker_stats:
        merged.merge(s)
    return DistributedFeatures(pool_f, logits, merged, list(worker_stats), label, source)
