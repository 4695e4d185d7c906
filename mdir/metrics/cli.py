"""`mdir eval` commands: image-quality metrics of translated images.

`mdir eval gan --real DIR|URI --fake DIR|URI` compares two image sets;
`mdir eval gan --model models:/NAME@ALIAS --data URI --source day --target night`
translates the evaluation split with a registered generator, logs the metrics and the PRD
plot to the model's MLflow run and prints a table (`--json`: one JSON object).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Image-quality metrics (FID, KID, IS, PRD, SSIM).")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@app.command("gan")
def gan_cmd(
    real: str | None = typer.Option(
        None,
        "--real",
        help="Real images: a folder of image files or an mdir dataset URI (local or s3://).",
    ),
    fake: str | None = typer.Option(
        None, "--fake", help="Generated images: folder or dataset URI (compared with --real)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Registered generator, e.g. models:/mdir-cyclegan-synth@champion (needs --data, --source, --target).",
    ),
    data: str | None = typer.Option(
        None, "--data", help="Dataset URI whose evaluation split is translated (with --model)."
    ),
    source: str | None = typer.Option(
        None,
        "--source",
        help="Comma-separated source conditions to translate (with --model), e.g. day.",
    ),
    target: str | None = typer.Option(
        None, "--target", help="Comma-separated real target conditions (with --model), e.g. night."
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Evaluation split (default: EvalConfig.split = val; use test only for the final report).",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file with an EvalConfig mapping."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="EvalConfig override key=value, repeatable (e.g. --set kid_subsets=50)."
    ),
    inception_weights: str | None = typer.Option(
        None,
        "--inception-weights",
        help="Local FID Inception weights (pt_inception-2015-12-05 .pth/.safetensors); default $MDIR_INCEPTION_WEIGHTS or the torch hub cache.",
    ),
    allow_random_features: bool = typer.Option(
        False,
        "--allow-random-features",
        help="Without standard weights, use a random Inception; metric names get the _random_inception suffix.",
    ),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Comma-separated subset of fid,kid,is,prd,ssim,ms_ssim."
    ),
    num_images: int | None = typer.Option(
        None, "--num-images", help="Use at most this many images per set."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per forward pass."),
    num_workers: int | None = typer.Option(
        None, "--num-workers", help="Ray workers for feature extraction (0 = in this process)."
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="With --model: resize source/target images to this square size before translating.",
    ),
    device: str = typer.Option("cpu", "--device", help="Device of the generator (with --model)."),
    mlflow_run_id: str | None = typer.Option(
        None,
        "--mlflow-run-id",
        help="Log to this MLflow run (default with --model: the model's run).",
    ),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    prd_plot: Path | None = typer.Option(
        None, "--prd-plot", help="Also write the PRD curve to this PNG."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON object with the metric values instead of a table."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON result to this file."),
) -> None:
    """FID / KID / IS / PRD (+ SSIM / MS-SSIM for paired sets) of generated images."""
    from mdir.config import ConfigError, load_config
    from mdir.metrics.config import EvalConfig
    from mdir.metrics.runner import evaluate_folders, evaluate_model, log_to_mlflow, result_json

    sets = []
    for key, val in (
        ("inception_weights", inception_weights),
        ("num_images", num_images),
        ("batch_size", batch_size),
        ("num_workers", num_workers),
        ("split", split),
    ):
        if val is not None:
            sets.append(f"{key}={json.dumps(val)}")
    if allow_random_features:
        sets.append("allow_random_features=true")
    if metrics:
        sets.append(f"metrics={json.dumps(_csv(metrics))}")
    try:
        cfg = load_config(EvalConfig, config, [*overrides, *sets])
    except ConfigError as e:
        _fail(str(e))
    if model is None and (real is None or fake is None):
        _fail("give --real and --fake, or --model with --data")
    if model is not None and (real or fake):
        _fail("--model and --real/--fake are exclusive")
    try:
        if model is not None:
            if not data:
                _fail("--model needs --data URI (the dataset whose evaluation split is translated)")
            res, info = evaluate_model(
                model, data, cfg, _csv(source), _csv(target), image_size, device
            )
            run_id = mlflow_run_id or info.get("run_id")
        else:
            res, info = evaluate_folders(real, fake, cfg)  # type: ignore[arg-type]
            run_id = mlflow_run_id
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e))
    if prd_plot is not None and res.prd is not None:
        from mdir.metrics.prd import plot_prd

        prd_plot.parent.mkdir(parents=True, exist_ok=True)
        plot_prd({"fake vs real": res.prd}, str(prd_plot), title=f"PRD ({res.extractor_label})")
    if run_id and not no_mlflow:
        try:
            log_to_mlflow(res, run_id)
            info["mlflow_run_id"] = run_id
        except Exception as e:  # tracking problems must not hide the numbers
            typer.secho(f"warning: MLflow logging failed: {e}", fg=typer.colors.YELLOW, err=True)
    payload = result_json(res, info)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if json_out:
        print(json.dumps(payload, default=str))
        return
    _print_table(payload)


def _print_table(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"GAN metrics ({payload.get('feature_extractor') or 'no features'})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in payload["metrics"].items():
        t.add_row(k, f"{v:.6g}")
    t.add_row("real images", str(payload["num_real"]))
    t.add_row("fake images", str(payload["num_fake"]))
    c = Console()
    c.print(t)
    for w in payload["warnings"]:
        c.print(f"[yellow]warning:[/yellow] {w}")
    if payload.get("feature_extractor_source"):
        c.print(f"features: {payload['feature_extractor_source']}")
