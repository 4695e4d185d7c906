"""Which checkpoint a run registers: the one whose evaluation scored best (issue 14).

A trial's rank (Tune) and a run's registered generator must be the same model. Every
checkpoint is reported with `SCORE_KEY` = the selection metric at that very step (negated
for "min" metrics, so that Ray's ``CheckpointConfig(checkpoint_score_order="max")`` keeps
the best), or `UNSCORED` when it was not evaluated there. Pure functions: tested without Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mdir.training.checkpoint import SCORE_KEY, UNSCORED

__all__ = ["SCORE_KEY", "UNSCORED", "selection_key", "score", "best_point"]


def selection_key(metrics: dict[str, Any], configured: str | None) -> str | None:
    """The ``eval/<name>`` key that ranks checkpoints: ``storage.checkpoint_metric`` when set
    (Tune sets it to the sweep's metric), else the first FID key the evaluation reported
    (``fid``, ``fid_legacy``, ``fid_random_inception``, … — whatever the metrics name it)."""
    if configured:
        key = configured if configured.startswith("eval/") else f"eval/{configured}"
        return key if key in metrics else None
    fids = sorted(k for k in metrics if k.startswith("eval/fid"))
    return fids[0] if fids else None


def score(metrics: dict[str, Any], configured: str | None, mode: str) -> float:
    """`SCORE_KEY`'s value for a report with these eval metrics (higher = better)."""
    key = selection_key(metrics, configured)
    v = metrics.get(key) if key else None
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return UNSCORED
    return -float(v) if mode == "min" else float(v)


def best_point(points: Iterable[tuple[int, float, Any]]) -> tuple[int, float, Any] | None:
    """The (step, score, payload) with the highest score; ties go to the earliest step, as
    the Tune leaderboard's best point does. Unscored points never win."""
    best = None
    for p in points:
        if p[1] <= UNSCORED:
            continue
        if best is None or p[1] > best[1] or (p[1] == best[1] and p[0] < best[0]):
            best = p
    return best
