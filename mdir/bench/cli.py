"""`mdir bench ...`: each benchmark lives in its own module and registers on `app`.

Every benchmark measures the candidate and its baseline side by side in one run (these
machines are noisy), prints the ratio and writes JSON.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)

# Importing the modules registers their commands on `app`.
from mdir.bench import data, fid, step, train, tune  # noqa: E402,F401
