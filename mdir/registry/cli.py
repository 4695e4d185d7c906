"""`mdir models`: `summary` (a method's networks), `translate` and `list` (registered
generators in MLflow). The one CLI of the registry; nothing below it imports this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("summary")
def summary(
    method: str = typer.Argument(
        ..., help="A method of the table (pix2pix, cyclegan, …) or retrieval."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    size: int = typer.Option(256, "--size", min=32, help="Input image side for the output shapes."),
) -> None:
    """Build a method's default networks (random init, CPU, shape-only forward) and print
    each network's parameter count and output shape for a SIZE×SIZE input."""
    from mdir.methods.summary import format_summary, summarize, summary_methods

    valid = summary_methods()
    if method not in valid:
        raise typer.BadParameter(f"unknown method {method!r}; valid: {', '.join(valid)}")
    result = summarize(method, size)
    typer.echo(json.dumps(result) if as_json else format_summary(result))


def _load_image(path: Path, size: int):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0


@app.command("translate")
def translate_cmd(
    model_uri: Annotated[
        str, typer.Argument(help="Registered model, e.g. models:/mdir-mduit-synth@candidate.")
    ],
    images: Annotated[list[Path], typer.Argument(help="Source images (JPEG/PNG).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created).")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", "-r", help="Target-appearance image (MDUIT needs one)."),
    ] = None,
    size: Annotated[
        int, typer.Option("--size", help="Images are resized to size × size (the training size).")
    ] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
) -> None:
    """Translate images with a registered generator and write `<name>_translated.png` files."""
    import torch
    from PIL import Image

    from mdir.registry.generators import load_translator

    tr = load_translator(model_uri)
    if tr.needs_reference and reference is None:
        raise typer.BadParameter(
            f"{tr.method} translates towards a reference appearance: give --reference IMAGE"
        )
    ref = _load_image(reference, size).unsqueeze(0) if reference is not None else None
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    bad = 0
    for i in range(0, len(images), batch_size):
        chunk, names = [], []
        for p in images[i : i + batch_size]:
            try:
                chunk.append(_load_image(p, size))
                names.append(p)
            except Exception as e:  # unreadable input: skip and count, never crash the batch
                typer.echo(f"skipped {p}: {e}", err=True)
                bad += 1
        if not chunk:
            continue
        x = torch.stack(chunk)
        y = tr.translate(x, None if ref is None else ref.expand(len(x), -1, -1, -1))
        arr = (
            ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        )
        for p, a in zip(names, arr, strict=True):
            Image.fromarray(a).save(out / f"{p.stem}_translated.png")
            written += 1
    typer.echo(
        f"{written} translated images in {out} ({tr.method}, {tr.model_uri}, version {tr.version}); {bad} skipped"
    )


@app.command("list")
def list_cmd(
    prefix: Annotated[
        str, typer.Option("--prefix", help="Only registered models whose name starts with this.")
    ] = "mdir-",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Registered models (MLFLOW_TRACKING_URI): name, version, aliases, run and metrics."""
    from mdir.registry.generators import list_models

    rows = list_models(prefix=prefix)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "version", "aliases", "run", "metrics")
    for r in rows:
        metrics = ", ".join(f"{k}={v}" for k, v in sorted(r["metrics"].items()))
        t.add_row(r["name"], r["version"], ",".join(r["aliases"]), str(r["run_id"])[:12], metrics)
    Console().print(t)


@app.command("export")
def export_cmd(
    model_uri: Annotated[
        str, typer.Argument(help="Registered model, e.g. models:/mdir-cyclegan-synth@champion.")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="onnx (ONNX Runtime and friends) or pt2 (a torch.export program; load it "
            "with torch.export.load).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created).")],
    log_to_run: Annotated[
        bool,
        typer.Option("--log-to-run", help="Also log the file to the model version's MLflow run."),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Measure parity: max |exported − eager| at 256×256 and 512×384.",
        ),
    ] = True,
) -> None:
    """Export a registered generator with dynamic height and width (MDUIT: inputs images +
    reference). Writes `<name>-v<version>.<format>` and `export.json` into OUT and prints
    the parity measured against eager PyTorch."""
    from mdir.registry.export import FORMATS, ExportError, export_model
    from mdir.registry.uri import ModelNotFoundError

    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    typer.echo(f"exporting {model_uri} to {fmt} …", err=True)
    try:
        res = export_model(model_uri, fmt, out, check=check, log_to_run=log_to_run)  # type: ignore[arg-type]
    except (ExportError, ModelNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    dims = "; ".join(f"{k}: {', '.join(v)}" for k, v in res.dynamic.items())
    typer.echo(f"{res.path} ({res.method}, version {res.version}; dynamic {dims}; {res.seconds} s)")
    for size, diff in res.parity.items():
        shown = f"{diff:.3g}" if isinstance(diff, float) else diff
        typer.echo(f"  parity {size}: max |exported − eager| = {shown}")
    if res.logged_to:
        typer.echo(f"  logged to {res.logged_to}")
