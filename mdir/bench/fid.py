"""`mdir bench fid`."""

from __future__ import annotations

from mdir.bench.cli import app  # noqa: F401
