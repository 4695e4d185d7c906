"""`mdir models`: `summary` (a method's networks), `translate` and `list` (registered
generators in MLflow). The one CLI of the registry; nothing below it imports this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

#: = mdir.methods.anysize.DEFAULT_MAX_PIXELS, spelled here so `mdir --help` imports no torch
DEFAULT_MAX_PIXELS = 1024 * 1024

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


@app.command("translate")
def translate_cmd(
    model_uri: Annotated[
        str, typer.Argument(help="Registered model, e.g. models:/mdir-mduit-synth@candidate.")
    ],
    images: Annotated[
        list[Path],
        typer.Argument(help="Source images (JPEG/PNG/…; any size, 8/16-bit, gray, RGBA)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created).")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", "-r", help="Target-appearance image (MDUIT needs one)."),
    ] = None,
    reference_condition: Annotated[
        str | None,
        typer.Option(
            "--reference-condition",
            help="MDUIT: draw the reference from this condition of --dataset (seeded by --seed).",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="mdir dataset URI that --reference-condition draws from."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the reference draw.")] = 0,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels",
            min=1,
            help="Images above this many pixels are translated in overlapping, blended tiles.",
        ),
    ] = DEFAULT_MAX_PIXELS,
    tile: Annotated[int, typer.Option("--tile", min=1, help="Tile side in pixels.")] = 512,
    overlap: Annotated[
        int, typer.Option("--overlap", min=0, help="Pixels shared by neighbouring tiles.")
    ] = 64,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, …")] = "cpu",
) -> None:
    """Translate images at their own size and aspect ratio (EXIF orientation applied) with a
    registered generator; writes `<name>_translated.png` files. Inputs are reflection-padded
    to the network's stride multiple and cropped back; large ones are tiled."""
    from PIL import Image

    from mdir.data.images import BadInput
    from mdir.registry.generators import load_translator
    from mdir.registry.inputs import draw_reference, photo_tensor, to_uint8_hwc

    if tile <= overlap:
        raise typer.BadParameter(f"--overlap ({overlap}) must be smaller than --tile ({tile})")
    if reference is not None and reference_condition is not None:
        raise typer.BadParameter("give --reference or --reference-condition, not both")
    if reference_condition is not None and dataset is None:
        raise typer.BadParameter("--reference-condition needs --dataset URI (an mdir dataset)")
    tr = load_translator(model_uri, device=device)
    if tr.needs_reference and reference is None and reference_condition is None:
        raise typer.BadParameter(
            f"{tr.method} translates towards a reference appearance: give --reference IMAGE "
            "or --reference-condition NAME --dataset URI"
        )
    ref = None
    if tr.needs_reference:
        if reference is not None:
            try:
                ref = photo_tensor(reference)
            except (OSError, BadInput) as e:
                raise typer.BadParameter(f"--reference {reference}: {e}") from None
            typer.echo(f"reference: {reference}")
        else:
            assert reference_condition is not None and dataset is not None
            try:
                ref, row = draw_reference(dataset, reference_condition, seed)
            except (KeyError, ValueError, OSError) as e:  # unknown condition, no such dataset
                raise typer.BadParameter(f"--reference-condition: {e}") from None
            typer.echo(f"reference: row {row} of {dataset} ({reference_condition}, seed {seed})")
    out.mkdir(parents=True, exist_ok=True)
    written = bad = 0
    for k, p in enumerate(images, 1):
        try:
            x = photo_tensor(p)
        except (OSError, BadInput) as e:  # unreadable input: skip and count, never crash
            typer.echo(f"skipped {p}: {e}", err=True)
            bad += 1
            continue
        y = tr.translate_image(x, ref, max_pixels=max_pixels, tile=tile, overlap=overlap)
        dest = out / f"{p.stem}_translated.png"
        tmp = dest.with_name(f".{dest.name}.tmp")
        Image.fromarray(to_uint8_hwc(y)).save(tmp, format="PNG")
        tmp.replace(dest)  # atomic: a reader never sees half a file
        written += 1
        h, w = x.shape[-2:]
        how = f"tiled {tile} px" if h * w > max_pixels else "whole"
        typer.echo(f"[{k}/{len(images)}] {p} ({w}×{h}, {how}) → {dest}")
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
