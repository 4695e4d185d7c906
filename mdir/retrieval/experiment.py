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
        "plan": {"baseline": base.plan, "gan": gan.plan},
        "same_plan": same_plan(base.plan, gan.plan),
    }


def same_plan(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Both arms drew the same queries and pools with the same seed and took the same steps
    in every epoch (mined negatives differ: they depend on each arm's network)."""
    keys = ("epoch", "seed", "draw", "steps")
    return len(a) == len(b) and all(
        [x.get(k) for k in keys] == [y.get(k) for k in keys] for x, y in zip(a, b, strict=True)
    )


#: rows of the multi-seed thesis table (Table 5.1 of the thesis: night vs day, mAP, recall@N)
SEED_ROWS: tuple[tuple[str, str], ...] = (
    ("map/night", "night mAP"),
    ("recall_at_1/night", "night recall@1"),
    ("recall_at_5/night", "night recall@5"),
    ("recall_at_10/night", "night recall@10"),
    ("map/day", "day mAP"),
    ("recall_at_1/day", "day recall@1"),
    ("recall_at_5/day", "day recall@5"),
    ("recall_at_10/day", "day recall@10"),
)


def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize_seeds(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std over seeds of each arm and of the paired difference (gan − baseline),
    and a verdict: augmentation helps night retrieval only when the mean night gain exceeds
    the seeds' spread (the larger of the two arms' stds and the difference's std)."""
    rows = []
    for key, label in SEED_ROWS:
        b = [d["baseline"]["metrics"].get(key) for d in docs]
        g = [d["gan"]["metrics"].get(key) for d in docs]
        if any(x is None for x in b + g):
            continue
        (bm, bs), (gm, gs) = _mean_std(b), _mean_std(g)
        dm, ds = _mean_std([y - x for x, y in zip(b, g, strict=True)])
        rows.append({"metric": key, "label": label, "baseline": [bm, bs], "gan": [gm, gs],
                     "delta": [dm, ds], "baseline_per_seed": b, "gan_per_seed": g})  # fmt: skip
    verdict = "no night metric"
    for r in rows:
        if r["metric"] == "map/night":
            spread = max(r["baseline"][1], r["gan"][1], r["delta"][1])
            gain = r["delta"][0]
            if len(docs) < 2:
                verdict = f"night mAP changes by {gain:+.3f} on one seed: no spread, no verdict (use ≥ 3 seeds)"
            elif gain > spread:
                verdict = f"augmentation lifts night mAP by {gain:+.3f}, more than the seeds' spread ({spread:.3f})"
            else:
                verdict = f"no clear effect: night mAP changes by {gain:+.3f}, within the seeds' spread ({spread:.3f})"
    return {
        "seeds": [d["seed"] for d in docs],
        "same_plan": all(d.get("same_plan") for d in docs),
        "rows": rows,
        "verdict": verdict,
        "augment": [d.get("augment") for d in docs],
        "generator": docs[0].get("generator") if docs else None,
        "eval": {k: v for k, v in docs[0]["gan"]["metrics"].items() if k.startswith("eval/")}
        if docs
        else {},
    }


def seeds_markdown(summary: dict[str, Any], title: str = "") -> str:
    """The thesis-style table: baseline vs GAN-augmented, mean ± std over seeds."""
    n = len(summary["seeds"])
    lines = [title] if title else []
    lines += [
        "| metric | baseline | GAN-augmented | difference |",
        "|---|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in (r["baseline"], r["gan"])]
        lines.append(
            f"| {r['label']} | {cells[0]} | {cells[1]} | {r['delta'][0]:+.3f} ± {r['delta'][1]:.3f} |"
        )
    ev = summary.get("eval") or {}
    applied = [int((a or {}).get("applied") or 0) for a in summary["augment"]]
    lines += [
        "",
        f"Mean ± sample std over {n} seeds {summary['seeds']}; difference = GAN − baseline per seed. "
        f"{int(ev.get('eval/night_queries', 0))} night and "
        f"{int(ev.get('eval/queries', 0) - ev.get('eval/night_queries', 0))} day queries against "
        f"{int(ev.get('eval/database', 0))} database images. Images translated per augmented run: "
        f"{applied}. Same plan in both arms: {summary['same_plan']}.",
        f"Verdict: {summary['verdict']}.",
    ]
    return "\n".join(lines)


def recall_plot(summary: dict[str, Any], path: str | Path) -> str:
    """Recall@N (night and day) of both arms with ±std error bars, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, cond in zip(axes, ("night", "day"), strict=True):
        rows = [
            r
            for r in summary["rows"]
            if r["metric"].startswith("recall_at_") and r["metric"].endswith(cond)
        ]
        ns = [int(r["metric"].split("_")[2].split("/")[0]) for r in rows]
        for arm, style in (("baseline", "o-"), ("gan", "s--")):
            ax.errorbar(ns, [r[arm][0] for r in rows], yerr=[r[arm][1] for r in rows], fmt=style,
                        capsize=3, label="GAN-augmented" if arm == "gan" else "baseline")  # fmt: skip
        ax.set_title(f"{cond} queries")
        ax.set_xlabel("N")
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@N")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def run_seeds(
    cfg: RetrievalJobConfig, seeds: list[int], local: bool = False, progress: Any = print
) -> dict[str, Any]:
    """`run_compare` once per seed (each seed: the same seed in both arms)."""
    docs = []
    for i, seed in enumerate(seeds, 1):
        progress(f"seed {seed} ({i}/{len(seeds)}): baseline, then GAN-augmented")
        c = cfg.model_copy(update={"seed": seed})
        docs.append(run_compare(c, local=local))
        progress(format_table(docs[-1]))
    return {"per_seed": docs, "summary": summarize_seeds(docs)}


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
