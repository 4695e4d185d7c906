"""The issue-8 experiment: the same retrieval fine-tuning with and without GAN augmentation
(same config, seed and step count; only ``augment.generator`` differs), compared side by side
on night-query recall and localization recall.

Both runs are tracked in MLflow under one experiment (tags ``mdir.compare=baseline|gan``) and
registered as ``mdir-retrieval-<dataset>``: the augmented network gets the configured alias
(``candidate``), the baseline the alias ``baseline``. The numbers are reported as measured;
nothing is selected or tuned on them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mdir.retrieval.config import RetrievalJobConfig, load_retrieval_config
from mdir.retrieval.train import LaunchError, RetrievalResult, run_training, validate_before_launch

#: rows of the comparison table (metric key, label), in print order
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("recall_at_1/night", "night recall@1"),
    ("recall_at_5/night", "night recall@5"),
    ("recall_at_10/night", "night recall@10"),
    ("recall_at_1/day", "day recall@1"),
    ("recall_at_5/day", "day recall@5"),
    ("loc/night/0.25m_2deg", "night loc (0.25m, 2°)"),
    ("loc/night/0.5m_5deg", "night loc (0.5m, 5°)"),
    ("loc/night/5m_10deg", "night loc (5m, 10°)"),
    ("loc/day/0.25m_2deg", "day loc (0.25m, 2°)"),
    ("loc/day/0.5m_5deg", "day loc (0.5m, 5°)"),
    ("loc/day/5m_10deg", "day loc (5m, 10°)"),
    ("map", "mAP"),
    ("loss", "final train loss"),
)


def run_compare(cfg: RetrievalJobConfig, local: bool = False) -> dict[str, Any]:
    """Train baseline and GAN-augmented networks; return the comparison document.

    `local` runs both in this process (one worker, no Ray) — same numbers as a 1-worker run."""
    if not cfg.augment.generator:
        raise LaunchError(
            "--compare needs augment.generator (a models:/NAME@ALIAS of a registered generator)"
        )
    validate_before_launch(cfg)  # fail before the first run when the generator/data are missing
    base_cfg = cfg.model_copy(
        update={
            "augment": cfg.augment.model_copy(update={"generator": None}),
            "mlflow": cfg.mlflow.model_copy(update={"alias": "baseline"}),
        }
    )
    base = run_training(
        base_cfg,
        run_name=f"{cfg.dataset_name}-baseline",
        tags={"mdir.compare": "baseline"},
        local=local,
    )
    gan = run_training(
        cfg,
        run_name=f"{cfg.dataset_name}-gan",
        tags={"mdir.compare": "gan"},
        local=local,
    )
    return comparison(base, gan, cfg)


def comparison(
    base: RetrievalResult, gan: RetrievalResult, cfg: RetrievalJobConfig
) -> dict[str, Any]:
    rows = []
    for key, label in TABLE_ROWS:
        b, g = base.metrics.get(key), gan.metrics.get(key)
        if b is None and g is None:
            continue
        delta = g - b if b is not None and g is not None else None
        rows.append({"metric": key, "label": label, "baseline": b, "gan": g, "delta": delta})
    return {
        "dataset": cfg.dataset_name,
        "seed": cfg.seed,
        "epochs": cfg.optim.epochs,
        "steps": [h.get("steps") for h in gan.history],
        "generator": gan.generator,
        "augment": gan.augment,
        "baseline": {"run_id": base.run_id, "model_uri": base.model_uri, "metrics": base.metrics},
        "gan": {"run_id": gan.run_id, "model_uri": gan.model_uri, "metrics": gan.metrics},
        "table": rows,
    }


def format_table(doc: dict[str, Any]) -> str:
    """Plain-text side-by-side table (goes to `ray job` logs, so no terminal styling)."""

    def f(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    w = max([len(r["label"]) for r in doc["table"]] + [10])
    lines = [
        f"retrieval on {doc['dataset']}: baseline vs GAN augmentation "
        f"({doc['generator']['name']} v{doc['generator']['version']}, seed {doc['seed']}, {doc['epochs']} epochs)",
        f"{'metric':<{w}}  {'baseline':>9}  {'gan':>9}  {'delta':>9}",
        "-" * (w + 33),
    ]
    for r in doc["table"]:
        d = "-" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(f"{r['label']:<{w}}  {f(r['baseline']):>9}  {f(r['gan']):>9}  {d:>9}")
    m = doc["gan"]["metrics"]
    if "eval/queries" in m:
        nq, nn = int(m["eval/queries"]), int(m.get("eval/night_queries", 0))
        lines.append(
            f"evaluation: {nn} night + {nq - nn} other queries against {int(m.get('eval/database', 0))} "
            f"database images (one night query = {1 / max(nn, 1):.3f} of night recall)"
        )
    a = doc.get("augment") or {}
    if a:
        lines.append(
            f"GAN augmentation applied to {int(a.get('applied') or 0)} of {int(a.get('seen') or 0)} training images "
            f"(rate {float(a.get('rate') or 0):.3f})"
        )
    return "\n".join(lines)


def run_job(
    config: str | Path, overrides: list[str], *, compare: bool = False, local: bool = False
) -> tuple[dict[str, Any], str]:
    """What `mdir retrieval train` and jobs/retrieval.py run, so both report the same: load
    the config (`local`: one worker, in this process), train once or `compare`; returns the
    result document and its plain-text summary (the comparison table, or one line per
    metric). Raises `ConfigError` / `LaunchError` before any training."""
    cfg = load_retrieval_config(config, [*overrides, *(["scaling.num_workers=1"] if local else [])])
    if compare:
        doc = run_compare(cfg, local=local)
        return doc, format_table(doc)
    r = run_training(cfg, local=local)
    doc = {
        "run_id": r.run_id,
        "model_uri": r.model_uri,
        "generator": r.generator,
        "augment": r.augment,
        "metrics": r.metrics,
    }
    return doc, "\n".join(f"{k:<32} {v}" for k, v in sorted(r.metrics.items()))
