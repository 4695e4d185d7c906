"""The `mdir bench` Typer app; each benchmark module registers its command on it (the
modules are imported by `mdir.bench.cli`).

Every benchmark measures the candidate and its baseline side by side in one run (these
machines are noisy), prints the ratio and writes JSON.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
