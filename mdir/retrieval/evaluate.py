"""Retrieval / localization evaluation of an embedding network on one split.

Database = images of `eval.database_conditions` (e.g. day / the RobotCar reference), queries =
the other conditions (or `eval.query_conditions`). Ground truth comes from the same matching
information as training (place ids or pose thresholds). For each query the database is
ranked by descriptor similarity (exact search, or faiss for large sets), and the metrics of
``mdir.metrics.retrieval`` are computed:

* ``recall_at_N`` (Tokyo 24/7 style: a query counts when a positive is among the top N), over
  all queries and split into ``day`` / ``night`` queries (`eval.night_conditions`);
* ``map`` — revisited-protocol mAP with the positives as the "easy" set (synthetic data has
  no hard/junk distinction, so Easy = Medium; reported as ``map``), ×1 (not ×100);
* ``loc/{day,night}/<t>m_<r>deg`` — localization recall: the pose of the top-1 database image is the
  query's pose estimate; fraction of queries within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°),
  Day-All / Night-All as in the MDUIT table. Only queries with a known pose count.

Images are read at the test size of the protocol: longer side `data.test_max_side` (cirtorch:
1024), aspect kept. Revisited Oxford/Paris queries are cropped to their bounding box (the
layout's ``bbx``) before resizing, as the revisited protocol requires (`eval.crop_queries`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mdir.retrieval.config import RetrievalEvalConfig, RetrievalJobConfig
from mdir.retrieval.data import SplitData
from mdir.retrieval.descriptors import extract
from mdir.retrieval.search import search

LOC_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass
class EvalSet:
    data: SplitData
    db_rows: np.ndarray
    query_rows: np.ndarray
    is_night: np.ndarray  # bool per query
    #: revisited Oxford/Paris ground truth per query: {"easy","hard","junk"} as indices into
    #: `db_rows` (from the ingested layout); None = positives from the matching information
    gnd: list[dict[str, np.ndarray]] | None = None
    #: explicit positives per query (Tokyo 24/7: database images within pos_dist_thr metres)
    pos_override: list[np.ndarray] | None = None
    #: localization recall needs full poses (Tokyo 24/7 has no orientation)
    localize: bool = True
    #: the evaluation layout's dataset name (roxford5k, rparis6k, tokyo247, ...) or None
    dataset: str | None = None
    #: query row id → bounding box (x1, y1, x2, y2) the query images were cropped to
    query_crops: dict[int, tuple[float, ...]] | None = None

    @classmethod
    def from_split(
        cls, data: SplitData, ecfg: RetrievalEvalConfig, n_query_rows: int | None = None
    ) -> EvalSet:
        """`data` rows [0, n_query_rows) are query candidates and the rest database candidates
        (two splits concatenated), or all rows are both when `n_query_rows` is None."""
        n = len(data)
        nq = n if n_query_rows is None else n_query_rows
        db_cand = np.arange(n) if n_query_rows is None else np.arange(nq, n)
        db = np.intersect1d(db_cand, data.rows_with_condition(ecfg.database_conditions))
        if ecfg.query_conditions:
            q = np.intersect1d(np.arange(nq), data.rows_with_condition(ecfg.query_conditions))
        elif n_query_rows is None:
            q = np.setdiff1d(np.arange(n), db)
        else:
            q = np.arange(nq)
        if ecfg.limit:
            q = q[: ecfg.limit]
        if len(db) == 0 or len(q) == 0:
            raise ValueError(
                f"evaluation has {len(db)} database images (conditions {ecfg.database_conditions}) "
                f"and {len(q)} queries; check eval.split / database_split / database_conditions / query_conditions"
            )
        night = np.isin(data.condition[q], list(ecfg.night_conditions))
        return cls(
            data=data, db_rows=db.astype(np.int64), query_rows=q.astype(np.int64), is_night=night
        )

    @classmethod
    def open(
        cls, cfg: RetrievalJobConfig, max_side: int | None = None, uri: str | None = None
    ) -> EvalSet:
        """Open the evaluation queries/database of `uri` (default ``data.uri``).

        Datasets ingested from the evaluation layouts carry their own protocol: splits
        ``query`` / ``db`` are used when the configured split does not exist (RobotCar
        Seasons: ``train``, the queries with public poses, against the ``db`` reference), and
        the ground truth comes from the manifest (revisited Oxford/Paris easy/hard/junk lists,
        Tokyo 24/7 positives within ``pos_dist_thr`` metres); otherwise positives come from
        the matching information (place ids / pose thresholds) as in training.
        """
        from mdir.data.manifest import read_manifest
        from mdir.data.store import ShardImageStore
        from mdir.metrics.retrieval import positives_within
        from mdir.retrieval.data import ConcatStore, from_store

        d, e = cfg.data, cfg.eval
        uri = uri or d.uri
        size = max_side or d.test_max_side
        m = read_manifest(uri)
        layout = (m.extra or {}).get("layout", {}) or {}
        crops = query_boxes(layout) if e.crop_queries else {}
        q_split, db_split = e.split, e.database_split
        db_conditions = list(e.database_conditions)
        if q_split not in m.splits and {"query", "db"} <= set(m.splits):
            q_split, db_split, db_conditions = "query", "db", []
            if layout.get("dataset") == "robotcar_seasons" and "train" in m.splits:
                q_split = "train"
        qstore = ShardImageStore(uri, q_split, size, keep_aspect=True, crops=crops)
        nq = None
        store = qstore
        dbstore = None
        if db_split and db_split != q_split:
            dbstore = ShardImageStore(
                uri, db_split, size, conditions=db_conditions or None, keep_aspect=True
            )
            store, nq = ConcatStore([qstore, dbstore]), len(qstore)
        data = from_store(store, d.positives, d.max_translation_m, d.max_rotation_deg, None)
        ecfg = e.model_copy(update={"database_conditions": db_conditions})
        es = cls.from_split(data, ecfg, nq)
        es.dataset = layout.get("dataset")
        es.query_crops = crops or None
        if "gnd" in layout and dbstore is not None:
            db_index = {int(i): k for k, i in enumerate(dbstore.ids())}  # row id → db_rows index
            q_ids = qstore.ids()
            by_query = {int(g["query_id"]): g for g in layout["gnd"]}
            es.gnd = [
                {
                    k: np.array(
                        [
                            db_index[i]
                            for i in by_query.get(int(q_ids[q]), {}).get(k, [])
                            if i in db_index
                        ],
                        np.int64,
                    )
                    for k in ("easy", "hard", "junk")
                }
                for q in es.query_rows
            ]
            es.localize = False
        elif "pos_dist_thr" in layout:
            pose = data.matching.pose
            es.pos_override = positives_within(
                pose[es.query_rows, :3], pose[es.db_rows, :3], float(layout["pos_dist_thr"])
            )
            es.localize = False
        return es

    def positives(self) -> list[np.ndarray]:
        """Per query: indices into `db_rows` of its positives."""
        m = self.data.matching
        return [np.flatnonzero(m.positive_mask(int(q), self.db_rows)) for q in self.query_rows]


def query_boxes(layout: dict[str, Any]) -> dict[int, tuple[float, ...]]:
    """Query row id → (x1, y1, x2, y2) from a revisited layout's ground truth (``gnd[*].bbx``);
    queries without a box are not cropped."""
    out: dict[int, tuple[float, ...]] = {}
    for g in layout.get("gnd", []) or []:
        box = g.get("bbx") or []
        if len(box) == 4:
            out[int(g["query_id"])] = tuple(float(v) for v in box)
    return out


def compute_metrics(
    qvecs: np.ndarray, dbvecs: np.ndarray, es: EvalSet, ecfg: RetrievalEvalConfig
) -> dict[str, float]:
    """Metrics from descriptors (queries [Q, D], database [N, D]) — see the module docstring.

    Keys (MLflow-safe: no "@"): ``recall_at_N/{all,day,night}``, ``map`` (+ ``map/{day,night}``
    without revisited ground truth), ``mp_at_k``, ``loc/{all,day,night}/<t>m_<r>deg``,
    and ``eval/*`` counts. Queries without any positive in the database count as misses
    (NetVLAD / Tokyo 24/7 convention) and are reported in ``eval/queries_without_positive``.
    """
    from mdir.metrics.retrieval import localization_recall, recall_at_n, revisited_map

    _, ranks = search(
        dbvecs, qvecs, k=None, backend=ecfg.search, exact_max=ecfg.exact_max
    )  # [Q, N]
    if es.gnd is not None:
        pos = [np.concatenate([g["easy"], g["hard"]]) for g in es.gnd]
    elif es.pos_override is not None:
        pos = [np.asarray(p, np.int64) for p in es.pos_override]
    else:
        pos = es.positives()
    has_pos = np.array([len(p) > 0 for p in pos])
    out: dict[str, float] = {
        "eval/queries": float(len(pos)),
        "eval/night_queries": float(es.is_night.sum()),
        "eval/queries_without_positive": float((~has_pos).sum()),
        "eval/database": float(len(es.db_rows)),
    }
    ns = sorted(set(ecfg.recall_n))
    for name, sel in (
        ("all", np.ones(len(pos), bool)),
        ("day", ~es.is_night),
        ("night", es.is_night),
    ):
        if not sel.any():
            continue
        r = recall_at_n(ranks[sel], [pos[i] for i in np.flatnonzero(sel)], ns)
        for n in ns:
            out[f"recall_at_{n}/{name}"] = float(r[n])
    if es.gnd is not None:
        # revisited protocol: Easy / Medium / Hard, junk ignored
        for proto in ("easy", "medium", "hard"):
            m = revisited_map(ranks, es.gnd, proto)
            out[f"map/{proto}"] = m["map"]
            out.update({f"mp_at_{k[3:]}/{proto}": v for k, v in m.items() if k.startswith("mp@")})
        out["map"] = out["map/medium"]
    elif has_pos.any():
        empty = np.zeros(0, np.int64)
        gnd = [{"easy": pos[i], "hard": empty, "junk": empty} for i in np.flatnonzero(has_pos)]
        m = revisited_map(ranks[has_pos], gnd, "easy")
        out["map"] = m["map"]
        out.update({k.replace("@", "_at_"): v for k, v in m.items() if k.startswith("mp@")})
        for name, sel in (("day", ~es.is_night), ("night", es.is_night)):
            sel = sel & has_pos
            if sel.any():
                sub = [{"easy": pos[i], "hard": empty, "junk": empty} for i in np.flatnonzero(sel)]
                out[f"map/{name}"] = revisited_map(ranks[sel], sub, "easy")["map"]
    poses = es.data.matching.pose
    qp, dp = poses[es.query_rows], poses[es.db_rows]
    if es.localize and np.isfinite(qp).all(axis=1).any():
        # the metric splits by condition name; map our night_conditions onto it
        conds = ["night" if n else "day" for n in es.is_night]
        loc = localization_recall(ranks, qp, dp, conds, LOC_THRESHOLDS)
        out.update({f"loc/{k}": v for k, v in loc.items() if "/" in k})
        out["eval/loc_skipped_queries"] = loc["skipped_queries"]
    return out


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    es: EvalSet,
    ecfg: RetrievalEvalConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Extract (distributed when under DDP) and compute metrics; every rank gets the same dict.
    `progress(done, total)` reports extraction (database, then queries) per batch."""
    scales: Sequence[float] = ecfg.scales
    rows = np.concatenate([es.db_rows, es.query_rows])
    vecs = extract(
        model,
        es.data.load,
        rows,
        device=device,
        batch_size=batch_size,
        scales=scales,
        progress=progress,
    )
    db, q = vecs[: len(es.db_rows)], vecs[len(es.db_rows) :]
    return compute_metrics(q, db, es, ecfg)


def evaluate_registered(
    model_uri: str,
    data_uri: str,
    cfg: RetrievalJobConfig,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """`mdir retrieval eval`: load ``models:/NAME@ALIAS`` (a retrieval model, or a generator
    with an embedding such as MDUIT's z_s) and evaluate it on `data_uri`."""
    from mdir.retrieval.registry import load_descriptor_model

    model, info = load_descriptor_model(model_uri, device)
    es = EvalSet.open(cfg, uri=data_uri)
    metrics = evaluate_model(model, es, cfg.eval, device, cfg.mining.batch_size, progress)
    return {
        "model_uri": model_uri,
        "model_version": info.get("version"),
        "data": data_uri,
        "dataset": es.dataset,
        "split": cfg.eval.split,
        "scales": list(cfg.eval.scales),
        "max_side": cfg.data.test_max_side,
        "cropped_queries": len(es.query_crops or {}),
        "metrics": metrics,
    }
