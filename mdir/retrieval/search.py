"""Nearest-neighbour search over L2-normalised descriptors (similarity = inner product).

Exact search (torch matmul + sort) for small sets; faiss (``IndexFlatIP``, exact inner product
with SIMD/blocked kernels and bounded memory) when queries × database is large. Both return
the same ranking (ties aside), so the metric protocol does not depend on the backend.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch


def exact_search(
    db: np.ndarray, queries: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs similarities, sorted: (scores [Q, k], ranks [Q, k]) with ranks as db row indices."""
    d = torch.from_numpy(np.ascontiguousarray(db, dtype=np.float32))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    sim = q @ d.T
    k = d.shape[0] if k is None else min(k, d.shape[0])
    # stable sort so that ties keep database order (deterministic across backends/runs)
    scores, ranks = torch.sort(sim, dim=1, descending=True, stable=True)
    return scores[:, :k].numpy(), ranks[:, :k].numpy().astype(np.int64)


def faiss_search(
    db: np.ndarray, queries: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    db = np.ascontiguousarray(db, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    k = db.shape[0] if k is None else min(k, db.shape[0])
    scores, ranks = index.search(queries, k)
    return scores, ranks.astype(np.int64)


def search(
    db: np.ndarray,
    queries: np.ndarray,
    k: int | None = None,
    backend: Literal["auto", "exact", "faiss"] = "auto",
    exact_max: int = 50_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k database rows per query (k=None: full ranking, needed by mAP)."""
    if backend == "auto":
        backend = "exact" if len(db) * len(queries) <= exact_max else "faiss"
    if backend == "exact":
        return exact_search(db, queries, k)
    return faiss_search(db, queries, k)
