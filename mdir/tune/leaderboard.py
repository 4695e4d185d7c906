"""The sweep leaderboard: one row per trial, sorted by the ranking metric.

Pure functions over plain rows so they are tested without Ray. A trial's score is its
best evaluation point on the validation split (``scope="all"``), and the row shows the
KID and PRD F₈ / F₁/₈ measured at that same point. Failed trials and trials that never
reported go to the bottom with an empty score.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SHOWN_METRICS = ("kid", "kid_std", "prd_f8", "prd_f1_8")


@dataclass
class Row:
    """One trial in the leaderboard."""

    trial_id: str
    index: int
    label: str
    status: str  # finished | stopped (ASHA) | error
    score: float | None  # the ranking metric at the best evaluation point
    metrics: dict[str, float] = field(default_factory=dict)  # KID / PRD at that point
    eval_points: int = 0
    steps: int = 0
    run_id: str | None = None
    model_uri: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    best_step: int | None = None  # training step of the best evaluation point

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_point(history: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The report with the best finite `metric` (ties: the earliest)."""
    best = None
    for row in history:
        v = row.get(metric)
        if v is None or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        if best is None or (v < best[metric] if mode == "min" else v > best[metric]):
            best = row
    return best


def metric_variants(base: str, metric: str) -> list[str]:
    """KID etc. under the same protocol and feature label as the ranking metric
    (fid_legacy → kid_legacy, fid_legacy_random_inception → kid_legacy_random_inception)."""
    suffix = metric[len("fid") :] if metric.startswith("fid") else ""
    return [base + suffix, base]


def sort_rows(rows: list[Row], mode: str) -> list[Row]:
    """Best first; rows without a score last (in trial order)."""
    scored = [r for r in rows if r.score is not None]
    unscored = [r for r in rows if r.score is None]
    scored.sort(key=lambda r: (r.score if mode == "min" else -r.score, r.index))  # type: ignore[operator]
    unscored.sort(key=lambda r: r.index)
    return scored + unscored


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def kid_ties(rows: list[Row]) -> set[int]:
    """Trial indices whose KID interval (kid ± kid_std) overlaps the winner's: the sets'
    noise cannot tell them from the winner (the winner itself is not in the set)."""
    scored = [r for r in rows if r.score is not None]
    if not scored:
        return set()
    win = scored[0]
    wk, ws = win.metrics.get("kid"), win.metrics.get("kid_std")
    if wk is None or ws is None:
        return set()
    out = set()
    for r in scored[1:]:
        k, s = r.metrics.get("kid"), r.metrics.get("kid_std")
        if k is not None and s is not None and abs(k - wk) <= s + ws:
            out.add(r.index)
    return out


def to_markdown(rows: list[Row], metric: str) -> str:
    """A GitHub-style table: rank, trial, label, metric, KID, PRD F8, PRD F1/8, status."""
    head = [
        "rank",
        "trial",
        "label",
        metric,
        *SHOWN_METRICS,
        "KID tie",
        "eval points",
        "steps",
        "status",
        "run",
    ]
    ties = kid_ties(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        cells = [
            str(i) if r.score is not None else "-",
            f"{r.index:03d}",
            r.label,
            _fmt(r.score),
            *(_fmt(r.metrics.get(m)) for m in SHOWN_METRICS),
            "tie" if r.index in ties else "",
            str(r.eval_points),
            str(r.steps),
            r.status + (f" ({r.error[:60]})" if r.error else ""),
            r.run_id or "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], metric: str) -> str:
    """Same content as the markdown, one column per parameter as well."""
    keys = sorted({k for r in rows for k in r.params})
    ties = kid_ties(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "trial_id", "index", "label", metric, *SHOWN_METRICS, "kid_tie", "eval_points", "steps", "status",
                "run_id", "model_uri", *keys, "error"])  # fmt: skip
    for i, r in enumerate(rows, 1):
        w.writerow(
            [
                i if r.score is not None else "",
                r.trial_id,
                r.index,
                r.label,
                r.score,
                *(r.metrics.get(m) for m in SHOWN_METRICS),
                r.index in ties,
                r.eval_points,
                r.steps,
                r.status,
                r.run_id or "",
                r.model_uri or "",
                *(r.params.get(k) for k in keys),
                r.error or "",
            ]  # fmt: skip
        )
    return buf.getvalue()
