"""`mdir models translate` and `mdir models list` (registered generators in MLflow)."""

from __future__ import annotations

from mdir.models.cli import app  # noqa: F401
