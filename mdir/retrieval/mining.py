"""Tuple construction and hard-negative mining — an explicit step with the model and device
passed in (the tuple dataset then only reads index rows; contrast cirtorch's mining inside
``Dataset.create_epoch_tuples``).

Each epoch (Radenović et al. TPAMI 2018, section 3.2):

1. draw `query_size` training queries that have at least one positive, and a pool of
   `pool_size` database images;
2. embed queries, their positive candidates and the pool with the *current* network;
3. positive = the most similar matching image (MDUIT 3.1: "among the most similar images,
   those within the pose thresholds are positive");
4. hard negatives = the `neg_num` most similar pool images that are valid negatives,
   at most one per place (cirtorch keeps one image per cluster so that the negatives are
   diverse).

Output: an int64 array [Q, 2 + neg_num] of row indices (q, p, n1..n5) — the tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mdir.retrieval.descriptors import LoadFn, extract
from mdir.retrieval.positives import Matching


@dataclass
class MiningStats:
    """What one mining step did (logged to MLflow as ``mining/*``)."""

    queries: int
    pool: int
    short_of_negatives: (
        int  # tuples where fewer than neg_num valid negatives existed (padded by repeating)
    )
    mean_positive_sim: float
    mean_negative_sim: float


def select_tuples(
    qvecs: np.ndarray,
    query_rows: np.ndarray,
    cand_vecs: np.ndarray,
    cand_rows: np.ndarray,
    matching: Matching,
    neg_num: int,
    pool_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, MiningStats]:
    """Pure selection given descriptors: queries (`qvecs`, rows `query_rows`) against
    candidate images (`cand_vecs`, rows `cand_rows`).

    Positives may come from any candidate; negatives only from candidates where
    `pool_mask` is True (default: all). Returns tuples [Q, 2+neg_num] and stats.
    Queries without any positive among the candidates are dropped.
    """
    cand_rows = np.asarray(cand_rows, dtype=np.int64)
    pool_mask = (
        np.ones(len(cand_rows), dtype=bool) if pool_mask is None else np.asarray(pool_mask, bool)
    )
    sims = qvecs @ cand_vecs.T  # [Q, C]
    order = np.argsort(-sims, axis=1, kind="stable")
    tuples: list[list[int]] = []
    short = 0
    pos_sims: list[float] = []
    neg_sims: list[float] = []
    for i, q in enumerate(np.asarray(query_rows, dtype=np.int64)):
        ranked = cand_rows[order[i]]
        pos_m = matching.positive_mask(int(q), ranked)
        if not pos_m.any():
            continue
        k_pos = int(np.argmax(pos_m))
        neg_m = matching.negative_mask(int(q), ranked) & pool_mask[order[i]]
        negs: list[int] = []
        seen_places: set[int] = set()
        for j in np.flatnonzero(neg_m):
            row = int(ranked[j])
            place = int(matching.place[row])
            if place >= 0 and place in seen_places:
                continue
            seen_places.add(place)
            negs.append(row)
            neg_sims.append(float(sims[i, order[i][j]]))
            if len(negs) == neg_num:
                break
        if not negs:
            short += 1
            continue
        if len(negs) < neg_num:
            short += 1
            negs = (negs * neg_num)[:neg_num]
        pos_sims.append(float(sims[i, order[i][k_pos]]))
        tuples.append([int(q), int(ranked[k_pos]), *negs])
    arr = np.asarray(tuples, dtype=np.int64).reshape(-1, 2 + neg_num)
    stats = MiningStats(
        queries=len(arr),
        pool=int(pool_mask.sum()),
        short_of_negatives=short,
        mean_positive_sim=float(np.mean(pos_sims)) if pos_sims else float("nan"),
        mean_negative_sim=float(np.mean(neg_sims)) if neg_sims else float("nan"),
    )
    return arr, stats


def draw_queries_and_pool(
    rng: np.random.Generator,
    trainable_queries: np.ndarray,
    database: np.ndarray,
    query_size: int,
    pool_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Random subsets (sorted, so every rank agrees given the same rng state)."""
    q = rng.choice(trainable_queries, size=min(query_size, len(trainable_queries)), replace=False)
    pool = rng.choice(database, size=min(pool_size, len(database)), replace=False)
    return np.sort(q), np.sort(pool)


def mine_tuples(
    net: nn.Module,
    load: LoadFn,
    matching: Matching,
    queries: Sequence[int],
    pool: Sequence[int],
    positive_candidates: Sequence[int],
    neg_num: int,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> tuple[np.ndarray, MiningStats]:
    """Embed with the current `net` (unwrapped module) and select tuples.

    `positive_candidates` are the rows searched for positives (usually all training rows);
    negatives come only from `pool`. Distributed-safe: extraction is sharded over ranks and
    all-gathered, and the selection is deterministic, so every rank gets the same tuples.
    """
    queries = np.asarray(queries, dtype=np.int64)
    pool = np.asarray(pool, dtype=np.int64)
    cands = np.union1d(pool, np.asarray(positive_candidates, dtype=np.int64))
    need = np.union1d(cands, queries)
    vecs = extract(net, load, need, device=device, batch_size=batch_size)
    pos_of = {int(r): i for i, r in enumerate(need)}
    qv = vecs[[pos_of[int(r)] for r in queries]]
    cv = vecs[[pos_of[int(r)] for r in cands]]
    return select_tuples(qv, queries, cv, cands, matching, neg_num, pool_mask=np.isin(cands, pool))
