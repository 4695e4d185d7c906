"""Precision and Recall for Distributions (Sajjadi et al. 2018; thesis eq. 4.7–4.8).

The union of real (reference, P) and fake (evaluated, Q) features is clustered with
mini-batch k-means (k = 20); the two cluster histograms give
    α(λ) = Σ_ω min(λ P(ω), Q(ω))  (precision),   β(λ) = α(λ) / λ  (recall),
for slopes λ = tan(θ), θ evenly spaced in (0, π/2) (`num_angles`). The curves of `num_runs`
clusterings are averaged. Summaries: F₈ = max_λ F_β(α, β) with β = 8 (weights recall) and
F₁/₈ with β = 1/8 (weights precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-10


@dataclass(frozen=True)
class PRDCurve:
    """Averaged PRD curve and its F₈ / F₁/₈ summaries."""

    precision: np.ndarray
    recall: np.ndarray
    f8: float
    f1_8: float


def prd_from_histograms(
    eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """(precision α(λ), recall β(λ)) of histogram `eval_dist` (Q) w.r.t. `ref_dist` (P)."""
    q = np.asarray(eval_dist, dtype=np.float64)
    p = np.asarray(ref_dist, dtype=np.float64)
    if np.any(q < 0) or np.any(p < 0) or not np.isclose(q.sum(), 1) or not np.isclose(p.sum(), 1):
        raise ValueError("histograms must be non-negative and sum to 1")
    angles = np.linspace(_EPS, np.pi / 2 - _EPS, num=num_angles)
    slopes = np.tan(angles)
    precision = np.minimum(p[None, :] * slopes[:, None], q[None, :]).sum(axis=1)
    recall = precision / slopes
    # round-off can exceed 1 by ~1e-16
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> np.ndarray:
    """F_β = (1 + β²) p r / (β² p + r), 0 where both are 0."""
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    denom = beta**2 * p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (1 + beta**2) * p * r / denom
    return np.where(denom > _EPS, out, 0.0)


def compute_prd(
    real: np.ndarray,
    fake: np.ndarray,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
) -> PRDCurve:
    """PRD of fake features [N, d] w.r.t. real features [M, d], averaged over k-means runs."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    ref = np.asarray(real, dtype=np.float64)
    ev = np.asarray(fake, dtype=np.float64)
    if ref.ndim != 2 or ev.ndim != 2 or ref.shape[1] != ev.shape[1]:
        raise ValueError(f"feature shapes do not match: {ref.shape} vs {ev.shape}")
    data = np.vstack([ev, ref])
    k = min(num_clusters, data.shape[0])
    precisions, recalls = [], []
    # small problems: thread start-up (and oversubscribed busy-waiting) costs more than it saves
    threads = 1 if data.size < 2_000_000 else None
    for run in range(num_runs):
        km = MiniBatchKMeans(n_clusters=k, n_init=10, random_state=seed + run)
        with threadpool_limits(threads):
            labels = km.fit(data).labels_
        ev_hist = np.bincount(labels[: ev.shape[0]], minlength=k) / ev.shape[0]
        ref_hist = np.bincount(labels[ev.shape[0] :], minlength=k) / ref.shape[0]
        p, r = prd_from_histograms(ev_hist, ref_hist, num_angles)
        precisions.append(p)
        recalls.append(r)
    precision = np.mean(precisions, axis=0)
    recall = np.mean(recalls, axis=0)
    return PRDCurve(
        precision=precision,
        recall=recall,
        f8=float(f_beta(precision, recall, 8.0).max()),
        f1_8=float(f_beta(precision, recall, 1.0 / 8.0).max()),
    )


def plot_prd(curves: dict[str, PRDCurve], path: str, title: str | None = None) -> str:
    """Plot one or more PRD curves (recall on x, precision on y) to a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, c in curves.items():
        ax.plot(c.recall, c.precision, label=f"{name} (F8={c.f8:.3f}, F1/8={c.f1_8:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
