"""`mdir models` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("summary")
def summary(
    method: str = typer.Argument(..., help="pix2pix | cyclegan | mduit | retrieval"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    size: int = typer.Option(256, "--size", min=32, help="Input image side for the output shapes."),
) -> None:
    """Build a method's default networks (random init, CPU, shape-only forward) and print
    each network's parameter count and output shape for a SIZE×SIZE input."""
    import json

    from mdir.models.summary import SUMMARY_METHODS, format_summary, summarize

    if method not in SUMMARY_METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; valid: {', '.join(SUMMARY_METHODS)}")
    result = summarize(method, size)
    typer.echo(json.dumps(result) if as_json else format_summary(result))


# `mdir models translate` / `mdir models list` live with the registry code in mdir/training.
from mdir.training import registry_cli  # noqa: E402,F401
