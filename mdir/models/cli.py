"""`mdir models` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)

# `mdir models translate` / `mdir models list` live with the registry code in mdir/training.
from mdir.training import registry_cli  # noqa: E402,F401
