"""Retrieval and visual-localization metrics.

- `revisited_map`: mAP and mP@k of the revisited Oxford / Paris protocol (Radenović et al.
  2018) for Easy / Medium / Hard, with junk images ignored exactly as the protocol's
  reference evaluation does (positions of positives are shifted down by the number of
  junk images ranked before them; AP is the trapezoidal average precision).
- `recall_at_n`: Tokyo 24/7-style recall@N (a query is found when any top-N database image
  is a positive, e.g. within 25 m); `positives_within` builds the positives from positions.
- `localization_recall`: share of queries whose estimated pose (top-1 retrieved database
  pose, or the average of the top-k poses) is within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°)
  of the ground truth, split into day and night conditions (the MDUIT table's Day-All /
  Night-All columns).

Conventions: `ranks` is an int array [n_queries, n_db]; row q lists database indices best
first (it may be truncated to the top K). Poses are [N, 7] = (x, y, z, qw, qx, qy, qz).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Protocol = Literal["easy", "medium", "hard"]

DEFAULT_LOC_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
"""(metres, degrees) pairs of the RobotCar Seasons / MDUIT localization table."""


def _as_ranks(ranks: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 2:
        raise ValueError(f"ranks must be [n_queries, n_db], got shape {r.shape}")
    return r.astype(np.int64, copy=False)


def protocol_sets(
    gnd: Mapping[str, Sequence[int]], protocol: Protocol
) -> tuple[np.ndarray, np.ndarray]:
    """(positives, junk) of one query for a revisited protocol.

    easy: positives = easy, junk = junk + hard; medium: positives = easy + hard, junk = junk;
    hard: positives = hard, junk = junk + easy.
    """
    easy = np.asarray(gnd.get("easy", []), dtype=np.int64)
    hard = np.asarray(gnd.get("hard", []), dtype=np.int64)
    junk = np.asarray(gnd.get("junk", []), dtype=np.int64)
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    if protocol == "hard":
        return hard, np.concatenate([junk, easy])
    raise ValueError(f"unknown protocol {protocol!r}; valid: easy, medium, hard")


def average_precision(pos_ranks: np.ndarray, n_positives: int) -> float:
    """Trapezoidal AP of the revisited protocol.

    `pos_ranks`: 0-based positions of the retrieved positives after junk removal, sorted;
    `n_positives`: all positives of the query (retrieved or not). For the j-th positive
    (0-based) at position r: precision before it is j/r (1 when r = 0), after it
    (j+1)/(r+1); AP = Σ_j (p_before + p_after) / 2 · 1/n_positives.
    """
    if n_positives == 0:
        raise ValueError("AP is undefined without positives")
    pos = np.asarray(pos_ranks, dtype=np.float64)
    j = np.arange(pos.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(pos == 0, 1.0, j / np.where(pos == 0, 1.0, pos))
    p1 = (j + 1.0) / (pos + 1.0)
    return float(((p0 + p1) / 2.0).sum() / n_positives)


def revisited_map(
    ranks: np.ndarray | Sequence[Sequence[int]],
    gnd: Sequence[Mapping[str, Sequence[int]]],
    protocol: Protocol,
    kappas: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """mAP and mP@k of the revisited Oxford/Paris protocol, as fractions in [0, 1].

    `gnd[q]` has keys "easy", "hard", "junk" (database indices). Queries without positives
    under `protocol` are left out of the averages (as in the reference code). mP@k uses the
    reference definition: with 1-based junk-free positions `pos`, k' = min(max(pos), k) and
    P@k = |{pos ≤ k'}| / k'. Returns {"map", "mp@1", "mp@5", ..., "num_queries"}.
    """
    r = _as_ranks(ranks)
    if len(gnd) != r.shape[0]:
        raise ValueError(f"{r.shape[0]} ranked queries but {len(gnd)} ground-truth entries")
    aps: list[float] = []
    prs: list[list[float]] = []
    for q in range(r.shape[0]):
        positives, junk = protocol_sets(gnd[q], protocol)
        if positives.size == 0:
            continue
        row = r[q]
        pos = np.flatnonzero(np.isin(row, positives))
        junk_pos = np.flatnonzero(np.isin(row, junk))
        # each positive moves up by the number of junk images ranked before it
        pos = pos - np.searchsorted(junk_pos, pos)
        aps.append(average_precision(pos, positives.size))
        pos1 = pos + 1
        row_pr = []
        for k in kappas:
            if pos1.size == 0:
                row_pr.append(0.0)
                continue
            kq = min(int(pos1.max()), int(k))
            row_pr.append(float((pos1 <= kq).sum()) / kq)
        prs.append(row_pr)
    out: dict[str, float] = {"num_queries": float(len(aps))}
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    mp = np.mean(np.asarray(prs), axis=0) if prs else np.full(len(kappas), np.nan)
    for k, v in zip(kappas, mp, strict=True):
        out[f"mp@{k}"] = float(v)
    return out


def positives_within(
    query_xyz: np.ndarray, db_xyz: np.ndarray, threshold_m: float = 25.0
) -> list[np.ndarray]:
    """Database indices within `threshold_m` (Euclidean, metres) of each query position."""
    q = np.asarray(query_xyz, dtype=np.float64)
    d = np.asarray(db_xyz, dtype=np.float64)
    dist = np.linalg.norm(q[:, None, :] - d[None, :, :], axis=-1)
    return [np.flatnonzero(row <= threshold_m) for row in dist]


def recall_at_n(
    ranks: np.ndarray | Sequence[Sequence[int]],
    positives: Sequence[Sequence[int]],
    ns: Sequence[int] = (1, 5, 10, 20),
) -> dict[int, float]:
    """Tokyo 24/7 recall@N: share of queries with a positive among the top N results.

    Queries with no positive in the database still count (as misses), as in the
    NetVLAD evaluation.
    """
    r = _as_ranks(ranks)
    if len(positives) != r.shape[0]:
        raise ValueError(f"{r.shape[0]} ranked queries but {len(positives)} positive lists")
    n_q = r.shape[0]
    if n_q == 0:
        return {int(n): float("nan") for n in ns}
    # first position (0-based) of any positive, inf when none is retrieved
    first = np.full(n_q, np.inf)
    for q in range(n_q):
        hit = np.flatnonzero(np.isin(r[q], np.asarray(positives[q], dtype=np.int64)))
        if hit.size:
            first[q] = hit[0]
    return {int(n): float((first < n).mean()) for n in ns}


def quaternion_angle_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Rotation angle (degrees) between unit quaternions (w, x, y, z): 2·acos(|⟨q1, q2⟩|)."""
    a = np.asarray(q1, dtype=np.float64)
    b = np.asarray(q2, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    dot = np.clip(np.abs((a * b).sum(axis=-1)), 0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dot))


def average_poses(poses: np.ndarray) -> np.ndarray:
    """Mean of k poses [k, 7]: mean position, and the quaternion average of Markley et al.
    (eigenvector of Σ q qᵀ with the largest eigenvalue; sign-invariant)."""
    p = np.asarray(poses, dtype=np.float64)
    t = p[:, :3].mean(axis=0)
    q = p[:, 3:] / np.linalg.norm(p[:, 3:], axis=1, keepdims=True)
    w, v = np.linalg.eigh(q.T @ q)
    qm = v[:, np.argmax(w)]
    if qm[0] < 0:
        qm = -qm
    return np.concatenate([t, qm])


def is_night(condition: str) -> bool:
    """Night conditions of RobotCar Seasons / Aachen (night, night-rain, ...)."""
    return "night" in str(condition).lower()


def localization_recall(
    ranks: np.ndarray | Sequence[Sequence[int]],
    query_poses: np.ndarray,
    db_poses: np.ndarray,
    query_conditions: Sequence[str],
    thresholds: Sequence[tuple[float, float]] = DEFAULT_LOC_THRESHOLDS,
    top_k: int = 1,
) -> dict[str, float]:
    """Localization recall per (metres, degrees) threshold for day, night and all queries.

    The estimated pose of query q is the pose of its top-1 database image, or with
    `top_k` > 1 the average (`average_poses`) of its top-k database poses. A query counts
    as localized at (t, r) when the position error ≤ t metres and the rotation error ≤ r
    degrees. Queries whose ground-truth pose is missing (NaN) are skipped and counted in
    "skipped_queries"; a NaN database pose never localizes.

    Keys: "day/0.25m_2deg", "night/0.5m_5deg", "all/5m_10deg", ..., plus "num_day",
    "num_night", "skipped_queries". Values are fractions in [0, 1] (NaN for an empty split).
    """
    r = _as_ranks(ranks)
    qp = np.asarray(query_poses, dtype=np.float64)
    dp = np.asarray(db_poses, dtype=np.float64)
    n_q = r.shape[0]
    if qp.shape != (n_q, 7) or dp.ndim != 2 or dp.shape[1] != 7:
        raise ValueError(f"poses must be [N, 7]; got queries {qp.shape}, database {dp.shape}")
    if len(query_conditions) != n_q:
        raise ValueError(f"{n_q} queries but {len(query_conditions)} conditions")
    if top_k < 1 or top_k > r.shape[1]:
        raise ValueError(f"top_k must be in [1, {r.shape[1]}], got {top_k}")
    valid = np.all(np.isfinite(qp), axis=1)
    est = np.empty((n_q, 7))
    for q in range(n_q):
        cand = dp[r[q, :top_k]]
        est[q] = cand[0] if top_k == 1 else average_poses(cand)
    with np.errstate(invalid="ignore"):
        t_err = np.linalg.norm(est[:, :3] - qp[:, :3], axis=1)
        r_err = quaternion_angle_deg(est[:, 3:], np.where(valid[:, None], qp[:, 3:], 1.0))
    t_err = np.where(np.isfinite(t_err), t_err, np.inf)
    r_err = np.where(np.isfinite(r_err), r_err, np.inf)
    night = np.array([is_night(c) for c in query_conditions], dtype=bool)
    groups = {"day": valid & ~night, "night": valid & night, "all": valid}
    out: dict[str, float] = {}
    for name, mask in groups.items():
        for tm, rd in thresholds:
            ok = (t_err <= tm) & (r_err <= rd)
            key = f"{name}/{_fmt(tm)}m_{_fmt(rd)}deg"
            out[key] = float(ok[mask].mean()) if mask.any() else float("nan")
    out["num_day"] = float(groups["day"].sum())
    out["num_night"] = float(groups["night"].sum())
    out["skipped_queries"] = float((~valid).sum())
    return out


def _fmt(x: float) -> str:
    return f"{x:g}"
