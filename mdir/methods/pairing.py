"""MDUIT per-epoch pairing: which target / positive / negatives each source image gets.

Given embeddings z = H(E_c(I)) of every image of the store (rows of `z`), their conditions
and, where known, poses (else place ids), `compute_pairing` returns an int64 table
[N, 4 + n_neg] of *row indices*:

  col 0  target   I_t : the most similar image (z·z) under a different condition
  col 1  t_pos    I_t⁺: another image of the target's condition (D_a's real pair)
  col 2  s_neg    I_s⁻: an image with different content than I_s (L_con^c)
  col 3  t_neg    I_t⁻: an image of a different condition than I_t (L_con^a)
  col 4… negs     N_neg content negatives of I_s (L_NCE)

Content positives: both poses known → rotation difference < `rot_deg` and translation
< `trans_m` (MDUIT: 8°, 7 m); otherwise the same place id. Negatives are the others
(never the image itself). With ``neg_pool`` > 0, I_s⁻ and the N_neg negatives are drawn
only from the ``neg_pool`` content negatives most similar to I_s (z·z): the paper builds
its samples "among the most similar images" (§3.1), and uniformly drawn negatives of
other places are so easy that L_con^c and L_NCE are ~0 from the first epochs on.
Random picks come from a NumPy generator seeded by (seed, epoch), so the table is a
deterministic function of (z, metadata, seed, epoch).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

COL_TARGET, COL_T_POS, COL_S_NEG, COL_T_NEG, COL_NEGS = 0, 1, 2, 3, 4


def rotation_angle_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Angle between unit quaternions (qw, qx, qy, qz), broadcast: 2·acos(|⟨q1, q2⟩|)."""
    q1 = q1 / np.linalg.norm(q1, axis=-1, keepdims=True)
    q2 = q2 / np.linalg.norm(q2, axis=-1, keepdims=True)
    dot = np.abs((q1 * q2).sum(-1)).clip(0.0, 1.0)
    return np.degrees(2.0 * np.arccos(dot))


def content_positive_mask(
    rows: np.ndarray,
    place: np.ndarray,
    pose: np.ndarray | None,
    rot_deg: float = 8.0,
    trans_m: float = 7.0,
) -> np.ndarray:
    """[len(rows), N] bool: j shows the same content as row i (i itself excluded)."""
    n = len(place)
    same_place = (place[rows, None] == place[None, :]) & (place[rows, None] >= 0)
    mask = same_place
    if pose is not None and pose.size:
        known = ~np.isnan(pose).any(1)
        both = known[rows, None] & known[None, :]
        if both.any():
            t = np.linalg.norm(pose[rows, None, :3] - pose[None, :, :3], axis=-1)
            r = rotation_angle_deg(pose[rows, None, 3:], pose[None, :, 3:])
            by_pose = (t < trans_m) & (r < rot_deg)
            mask = np.where(both, by_pose, same_place)
    mask = mask.copy()
    mask[np.arange(len(rows)), rows] = False
    assert mask.shape == (len(rows), n)
    return mask


def _random_pick(
    rng: np.random.Generator, mask: np.ndarray, k: int, fallback: np.ndarray
) -> np.ndarray:
    """k random column indices per row among True entries of `mask` (with replacement when
    fewer than k); rows without any True entry pick from the `fallback` mask instead."""
    m = np.where(mask.any(1, keepdims=True), mask, fallback)
    scores = rng.random(m.shape)
    scores[~m] = -1.0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    order = np.zeros((m.shape[0], k), dtype=np.int64)
    order[:, : top.shape[1]] = top
    counts = m.sum(1)
    for i in np.nonzero(counts < k)[0]:
        valid = np.nonzero(m[i])[0]
        if len(valid) == 0:  # nothing valid at all (a one-image store): column 0
            valid = np.zeros(1, dtype=np.int64)
        order[i] = rng.choice(valid, size=k, replace=True)
    return order


def _most_similar(mask: np.ndarray, sim: np.ndarray, k: int) -> np.ndarray:
    """`mask` reduced to its `k` True entries of highest `sim` per row (all of them when a
    row has fewer); ties are broken by column order."""
    if k >= mask.shape[1]:
        return mask
    masked = np.where(mask, sim, -np.inf)
    top = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    keep = np.zeros_like(mask)
    np.put_along_axis(keep, top, True, axis=1)
    return keep & mask


def compute_pairing(
    z: Tensor,
    condition: np.ndarray,
    place: np.ndarray,
    pose: np.ndarray | None,
    n_neg: int = 16,
    rot_deg: float = 8.0,
    trans_m: float = 7.0,
    seed: int = 0,
    epoch: int = 0,
    chunk: int = 512,
    neg_pool: int = 0,
) -> np.ndarray:
    """The pairing table (see module doc) for N images with embeddings `z` [N, K];
    `neg_pool` > 0 restricts the content negatives to that many most similar ones."""
    n = z.shape[0]
    rng = np.random.default_rng([seed, epoch])
    condition = np.asarray(condition)
    place = np.asarray(place)
    table = np.zeros((n, 4 + n_neg), dtype=np.int64)
    z = z.float().cpu()
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        not_self = np.arange(n)[None, :] != rows[:, None]
        sim = (z[rows] @ z.t()).numpy()
        other_cond = (condition[rows, None] != condition[None, :]) & not_self
        cand = np.where(other_cond.any(1, keepdims=True), other_cond, not_self)
        if n == 1:
            cand = np.ones((len(rows), 1), dtype=bool)
        sim_masked = np.where(cand, sim, -np.inf)
        target = sim_masked.argmax(1)
        table[rows, COL_TARGET] = target
        # I_t⁺: same condition as the target, not the target itself
        same_t = (condition[target][:, None] == condition[None, :]) & (
            np.arange(n)[None, :] != target[:, None]
        )
        table[rows, COL_T_POS] = _random_pick(
            rng, same_t, 1, np.arange(n)[None, :] == target[:, None]
        )[:, 0]
        # I_t⁻: a condition different from the target's
        diff_t = condition[target][:, None] != condition[None, :]
        table[rows, COL_T_NEG] = _random_pick(rng, diff_t, 1, not_self)[:, 0]
        # content negatives of I_s
        neg = ~content_positive_mask(rows, place, pose, rot_deg, trans_m) & not_self
        if neg_pool > 0:
            neg = _most_similar(neg, sim, neg_pool)
        table[rows, COL_S_NEG] = _random_pick(rng, neg, 1, not_self)[:, 0]
        table[rows, COL_NEGS:] = _random_pick(rng, neg, n_neg, not_self)
    return table
