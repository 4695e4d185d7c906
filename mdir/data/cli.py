"""`mdir data` commands: synth, ingest, inspect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Create, ingest and inspect image shards.")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("synth")
def synth_cmd(
    out: str = typer.Argument(..., help="Output dataset root (local path or s3://bucket/prefix)."),
    places: int = typer.Option(6, help="Number of places (streets), 1 km apart."),
    conditions: str = typer.Option(
        "day,night,dusk,snow,rain", help="Comma-separated conditions to render."
    ),
    size: int = typer.Option(
        64, help="Image side in pixels (e.g. 64 for tests, 256 for benchmarks)."
    ),
    seed: int = typer.Option(0, help="Random seed; same seed → identical shards."),
    poses: int = typer.Option(
        4, help="Camera poses per place (< 3 m and < 3.5° from the place centre)."
    ),
    paired: str = typer.Option(
        "", help="Write a paired dataset instead, e.g. 'day,night' (pix2pix)."
    ),
    held_out: int = typer.Option(
        0,
        "--held-out-places",
        help="Keep the last N places out of train/val/test: splits 'query' (their last pose) "
        "and 'database' (the other poses), for retrieval on places training never saw.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest summary as JSON."),
) -> None:
    """Render the synthetic multi-condition dataset (nothing downloaded)."""
    from mdir.data.inspect import summary
    from mdir.data.io import DataPathError
    from mdir.data.synth import synthesize

    pair = tuple(p.strip() for p in paired.split(",") if p.strip()) if paired else None
    if pair is not None and len(pair) != 2:
        _fail("--paired needs exactly two conditions, e.g. day,night")
    try:
        synthesize(
            out,
            places=places,
            conditions=[c.strip() for c in conditions.split(",") if c.strip()],
            size=size,
            seed=seed,
            poses_per_place=poses,
            paired=pair,
            held_out_places=held_out,
        )  # type: ignore[arg-type]
    except (ValueError, DataPathError) as e:
        _fail(str(e))
    _print_summary(summary(out), json_out)


@app.command("ingest")
def ingest_cmd(
    src: str = typer.Argument(..., help="Source: folder, list file or s3:// URI."),
    out: str = typer.Argument(..., help="Output dataset root (local path or s3://)."),
    layout: str = typer.Option(
        "folders",
        help="folders | paired | list | a dataset layout (robotcar_seasons, aachen, transient_attributes, tokyo247, revisited, retrieval_sfm).",
    ),
    rows_per_shard: int = typer.Option(256, help="Input files per Parquet shard."),
    min_size: int = typer.Option(16, help="Images with a shorter side are skipped as too_small."),
    workers: int = typer.Option(2, help="Threads validating / converting images."),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="Layout option KEY=VALUE, repeatable (e.g. condition_a=day; the thesis's sets: "
        "robotcar_seasons camera=rear conditions=day_night val_fraction=0.1, aachen "
        "val_fraction=0.1, retrieval_sfm labels=list:FILE, transient_attributes output=images).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Convert images into validated shards; bad inputs are skipped and counted per reason.
    Re-running finishes an interrupted ingest without duplicates."""
    from mdir.data.ingest import ingest
    from mdir.data.inspect import summary
    from mdir.data.io import DataPathError

    opts = {}
    for o in option:
        if "=" not in o:
            _fail(f"--option {o!r} must be KEY=VALUE")
        k, v = o.split("=", 1)
        opts[k.strip()] = v
    bar = None
    if sys.stderr.isatty() and not json_out:
        from tqdm import tqdm

        bar = tqdm(desc="shards", unit="shard")

    def progress(i: int, n: int) -> None:
        if bar is not None:
            bar.total = n
            bar.update(1)

    try:
        ingest(
            src,
            out,
            layout,
            rows_per_shard=rows_per_shard,
            min_size=min_size,
            workers=workers,
            layout_options=opts,
            progress=progress,
        )
    except (ValueError, DataPathError, TypeError) as e:
        _fail(str(e))
    finally:
        if bar is not None:
            bar.close()
    _print_summary(summary(out), json_out)


@app.command("inspect")
def inspect_cmd(
    uri: str = typer.Argument(..., help="Dataset root (local path or s3://)."),
    json_out: bool = typer.Option(
        False, "--json", help="One JSON object (keys rows, conditions, skipped, splits, ...)."
    ),
    grid: Path | None = typer.Option(
        None, "--grid", help="Write a PNG contact sheet of samples per condition."
    ),
    per_condition: int = typer.Option(8, help="Samples per condition in the grid."),
) -> None:
    """Rows, counts per condition and split, skipped inputs per reason."""
    from mdir.data.inspect import contact_sheet, summary
    from mdir.data.io import DataPathError

    try:
        s = summary(uri)
        if grid is not None:
            from PIL import Image

            grid.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(contact_sheet(uri, per_condition)).save(grid)
            s["grid"] = str(grid)
    except DataPathError as e:
        _fail(str(e))
    _print_summary(s, json_out)


def _print_summary(s: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(s, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"[bold]{s['uri']}[/]  rows={s['rows']}  shards={s['shards']}  layout={s['layout']}  paired={s['paired']}"
    )
    t = Table("condition", *sorted(s["splits"]), "total")
    for c, n in s["conditions"].items():
        t.add_row(
            c, *[str(s["counts"].get(sp, {}).get(c, 0)) for sp in sorted(s["splits"])], str(n)
        )
    con.print(t)
    con.print("skipped: " + (", ".join(f"{k}={v}" for k, v in s["skipped"].items()) or "none"))
    if s.get("converted"):
        con.print("converted: " + ", ".join(f"{k}={v}" for k, v in s["converted"].items()))
    if s.get("grid"):
        con.print(f"grid: {s['grid']}")
