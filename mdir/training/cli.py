"""`mdir train` command."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount `mdir train` on the root app (a command, not a group)."""
