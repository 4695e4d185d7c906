"""`mdir retrieval` commands: `train` (fine-tune GeM on Ray Train, optionally `--compare` with
and without GAN augmentation) and `eval` (a registered network on a dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


@app.command()
def train(
    config: Path = typer.Option(
        ..., "--config", "-c", help="RetrievalJobConfig YAML (see jobs/configs/retrieval*.yaml)."
    ),
    override: list[str] = typer.Option(
        [], "--set", "-o", help="key.sub=value overrides, repeatable."
    ),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Train with and without augment.generator and print the comparison.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print only one JSON object with the result."
    ),
    local: bool = typer.Option(
        False, "--local", help="Run in this process without Ray (one worker; debugging)."
    ),
) -> None:
    """Fine-tune the retrieval network (GeM + contrastive loss, hard negatives, Lw) with Ray Train.

    Tracks the run in MLflow (MLFLOW_TRACKING_URI) and registers `mdir-retrieval-<dataset>`
    with alias `candidate`. A missing dataset or unresolvable generator alias fails before
    any Ray resources are requested."""
    from mdir.config import ConfigError
    from mdir.retrieval.experiment import run_job
    from mdir.retrieval.train import LaunchError

    try:
        doc, text = run_job(config, list(override), compare=compare, local=local)
    except (ConfigError, LaunchError) as e:
        _fail(str(e))
    if text and not as_json:
        typer.echo(text)
    typer.echo(json.dumps(doc, default=str))


@app.command()
def compare(
    config: Path = typer.Option(
        ..., "--config", "-c", help="RetrievalJobConfig YAML with augment.generator set."
    ),
    override: list[str] = typer.Option(
        [], "--set", "-o", help="key.sub=value overrides, repeatable."
    ),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds; each trains both arms."),
    out: Path = typer.Option(
        Path("retrieval_compare"), "--out", help="Folder for compare.json, compare.md, recall.png."
    ),
    local: bool = typer.Option(
        False, "--local", help="Run in this process without Ray (one worker)."
    ),
) -> None:
    """Baseline vs GAN-augmented retrieval over several seeds (the thesis's Table 5.1).

    For each seed: the same config, data order and steps with augment.generator off
    (baseline) and on; evaluated on night and day queries (mAP, recall@1/5/10). Prints the
    table mean ± std over seeds and a verdict (a night gain counts only when it exceeds the
    seeds' spread); writes JSON, markdown and a recall@N plot to --out and logs them to an
    MLflow summary run when MLFLOW_TRACKING_URI is set."""
    from mdir.config import ConfigError
    from mdir.retrieval.config import load_retrieval_config
    from mdir.retrieval.experiment import recall_plot, run_seeds, seeds_markdown
    from mdir.retrieval.train import LaunchError

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        _fail(f"--seeds must be comma-separated integers, got {seeds!r}")
    if not seed_list:
        _fail("--seeds is empty")
    try:
        cfg = load_retrieval_config(
            config, [*override, *(["scaling.num_workers=1"] if local else [])]
        )
        doc = run_seeds(cfg, seed_list, local=local, progress=typer.echo)
    except (ConfigError, LaunchError) as e:
        _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    summary = doc["summary"]
    md = seeds_markdown(summary, f"Retrieval on {cfg.dataset_name}: baseline vs GAN augmentation")
    (out / "compare.md").write_text(md + "\n")
    (out / "compare.json").write_text(json.dumps(doc, indent=2, default=str))
    plot = recall_plot(summary, out / "recall.png")
    typer.echo("\n" + md)
    typer.echo(f"\nwritten: {out / 'compare.md'}, {out / 'compare.json'}, {plot}")
    _log_summary_run(cfg, summary, out)
    typer.echo(json.dumps({"summary": summary, "out": str(out)}, default=str))


def _log_summary_run(cfg, summary: dict, out: Path) -> None:
    """One MLflow run holding the multi-seed table and plot (each arm has its own runs)."""
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    try:
        import mlflow

        mlflow.set_experiment(cfg.mlflow.experiment)
        with mlflow.start_run(run_name=f"{cfg.dataset_name}-compare-seeds") as run:
            mlflow.set_tags(
                {"mdir.compare": "summary", "mdir.seeds": ",".join(map(str, summary["seeds"]))}
            )
            for r in summary["rows"]:
                k = r["metric"].replace("/", "_")
                mlflow.log_metrics({f"baseline_mean/{k}": r["baseline"][0], f"baseline_std/{k}": r["baseline"][1],
                                    f"gan_mean/{k}": r["gan"][0], f"gan_std/{k}": r["gan"][1],
                                    f"delta_mean/{k}": r["delta"][0]})  # fmt: skip
            for name in ("compare.md", "compare.json", "recall.png"):
                mlflow.log_artifact(str(out / name), "compare")
            typer.echo(f"MLflow summary run {run.info.run_id}")
    except Exception as e:  # noqa: BLE001 — the files are the result
        typer.echo(f"(could not log the summary to MLflow: {e})")


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="models:/NAME@ALIAS (or /VERSION), or a local model directory."
    ),
    data: list[str] = typer.Option(
        ...,
        "--data",
        "-d",
        help="Dataset URI (local path or s3://) with Parquet shards; repeat for several "
        "(e.g. roxford5k, rparis6k and tokyo247 ingests for the papers' table).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Optional YAML for the eval/data sections (conditions, thresholds).",
    ),
    override: list[str] = typer.Option(
        [], "--set", "-o", help="key.sub=value overrides, repeatable."
    ),
    split: str | None = typer.Option(None, help="Evaluation split (default: eval.split, 'test')."),
    max_side: int | None = typer.Option(
        None,
        "--max-side",
        help="Longer side of the test images, aspect kept (default: data.test_max_side, 1024).",
    ),
    multiscale: bool = typer.Option(
        False,
        "--multiscale",
        help="Multi-scale descriptors at scales 1, 1/√2, 1/2 (GeM-p average, as cirtorch).",
    ),
    localization: bool = typer.Option(
        False,
        "--localization",
        help="Also print the localization table (MDUIT Table 1: recall at (0.25 m, 2°), "
        "(0.5 m, 5°), (5 m, 10°), Day / Night); needs posed queries and database.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for table.md and table.json (written atomically)."
    ),
    device: str = typer.Option("cpu", help="torch device."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the metrics."),
) -> None:
    """Evaluate a registered embedding network on one or more datasets.

    Prints every metric (recall@N, mAP, localization recall Day/Night) per dataset, then the
    papers' table (ROxf / RPar Easy / Medium / Hard mAP, Tokyo 24/7 mAP and recall@1/5/10 at
    25 m, ×100) as markdown; with --out also table.md / table.json; with MLFLOW_TRACKING_URI set
    the table is logged to an MLflow run (experiment mlflow.experiment). Revisited queries are
    cropped to their bounding boxes; images keep their aspect ratio."""
    from mdir.config import ConfigError, apply_overrides, read_yaml, validate
    from mdir.data.io import DataPathError
    from mdir.registry.uri import ModelNotFoundError
    from mdir.retrieval.config import RetrievalJobConfig
    from mdir.retrieval.descriptors import MULTISCALE
    from mdir.retrieval.evaluate import evaluate_registered
    from mdir.retrieval.table import (
        dataset_key,
        finite,
        localization_markdown,
        localization_row,
        paper_row,
        to_markdown,
    )

    docs = []
    try:
        base = read_yaml(config) if config else {}
        ov = list(override)
        if split:
            ov.append(f"eval.split={split}")
        if max_side:
            ov.append(f"data.test_max_side={max_side}")
        if multiscale:
            ov.append("eval.scales=[" + ",".join(str(s) for s in MULTISCALE) + "]")
        for k, uri in enumerate(data, 1):
            base.setdefault("data", {})["uri"] = uri
            cfg = validate(
                RetrievalJobConfig, apply_overrides(base, ov), source=str(config or "eval options")
            )
            typer.echo(f"[{k}/{len(data)}] evaluating on {uri} ...", err=True)
            docs.append(evaluate_registered(model, uri, cfg, device, _Progress()))
    except (ConfigError, DataPathError, ModelNotFoundError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    named = {d["dataset"]: d["metrics"] for d in docs if dataset_key(d["dataset"])}
    row = paper_row(named)
    table = {
        "model_uri": model,
        "model_version": docs[0]["model_version"],
        "datasets": {d["dataset"]: d["data"] for d in docs if d["dataset"]},
        "scales": docs[0]["scales"],
        "max_side": docs[0]["max_side"],
        "columns": finite(row),
    }
    label = _label(model, docs[0]["model_version"])
    md = to_markdown([(label, row)]) if named or not localization else ""
    if localization:
        try:
            loc = {
                (d["dataset"] or Path(d["data"]).name): localization_row(d["metrics"]) for d in docs
            }
        except ValueError as e:
            _fail(f"--localization: {e}")
        table["localization"] = {k: finite(v) for k, v in loc.items()}
        loc_md = localization_markdown(
            [(label if len(loc) == 1 else f"{label} on {k}", v) for k, v in loc.items()]
        )
        md = f"{md}\n\nLocalization recall (%):\n\n{loc_md}" if md else loc_md
    if out is not None:
        _write_table(out, md, table)
    _log_table_run(cfg, table, md, docs)
    doc = {**docs[0], "results": docs, "table": table}
    if as_json:
        typer.echo(json.dumps(doc, default=str))
        return
    for d in docs:
        typer.echo(
            f"model {d['model_uri']} (version {d['model_version']}) on {d['data']} "
            f"[{d['dataset'] or d['split']}]"
        )
        for k, v in sorted(d["metrics"].items()):
            typer.echo(f"  {k:<32} {v:.4f}")
    typer.echo("\n" + md)
    if out is not None:
        typer.echo(f"\nwritten: {out / 'table.md'}, {out / 'table.json'}")


class _Progress:
    """Prints extraction progress to stderr every ~10 % (stdout stays one JSON with --json)."""

    def __init__(self) -> None:
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != self.shown:
            self.shown = tenth
            typer.echo(f"  descriptors {done}/{total}", err=True)


def _label(model: str, version) -> str:
    return f"{model} (v{version})" if version else model


def _write_table(out: Path, md: str, table: dict) -> None:
    """table.md and table.json, each replaced atomically (never half a file)."""
    from mdir.data.io import write_bytes_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(str(out / "table.md"), (md + "\n").encode())
    write_bytes_atomic(str(out / "table.json"), json.dumps(table, indent=2).encode())


def _log_table_run(cfg, table: dict, md: str, docs: list[dict]) -> None:
    """One MLflow run with the table's cells as metrics (``table/<column>``), each dataset's
    metrics (``<dataset>/<metric>``) and table.md / table.json as artifacts."""
    import math
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    try:
        import mlflow

        mlflow.set_experiment(cfg.mlflow.experiment)
        with mlflow.start_run(run_name=f"eval-{table['model_uri']}") as run:
            mlflow.set_tags({"mdir.job": "retrieval-eval", "mdir.model_uri": table["model_uri"]})
            mlflow.log_params(
                {
                    "model_uri": table["model_uri"],
                    "model_version": str(table["model_version"]),
                    "scales": ",".join(f"{s:g}" for s in table["scales"]),
                    "max_side": table["max_side"],
                    **{f"data.{k}": v for k, v in table["datasets"].items()},
                }
            )
            mlflow.log_metrics({f"table/{k}": v for k, v in table["columns"].items()})
            for name, cells in table.get("localization", {}).items():
                mlflow.log_metrics({f"localization/{name}/{k}": v for k, v in cells.items()})
            for d in docs:
                name = d["dataset"] or d["split"]
                mlflow.log_metrics(
                    {
                        f"{name}/{k}": float(v)
                        for k, v in d["metrics"].items()
                        if math.isfinite(float(v))
                    }
                )
            mlflow.log_text(md + "\n", "table/table.md")
            mlflow.log_text(json.dumps(table, indent=2), "table/table.json")
            typer.echo(f"MLflow run {run.info.run_id}", err=True)
    except Exception as e:  # noqa: BLE001 — the printed / written table is the result
        typer.echo(f"(could not log the table to MLflow: {e})", err=True)
