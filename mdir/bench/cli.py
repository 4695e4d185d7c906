"""`mdir bench ...`: each benchmark lives in its own module and registers on `app`.

Every benchmark measures the candidate and its baseline side by side in one run (these
machines are noisy), prints the ratio and writes JSON.
"""

from __future__ import annotations

# Importing the modules registers their commands on `app` (defined in `mdir.bench.app`, so
# that the benchmark modules and this one do not import each other).
from mdir.bench import (  # noqa: F401
    data,
    evaluation,
    fid,
    gpu,
    scaling,
    step,
    train,
    translate,
    tune,
)
from mdir.bench.app import app

__all__ = ["app"]
