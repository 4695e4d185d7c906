"""Shared helpers for benchmarks: JSON output and peak-memory readings."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory (MiB) of this process or of its waited-for children."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def write_json(result: dict[str, Any], out: Path | None, echo: bool) -> None:
    """Write the benchmark result to `out` (if given) and print it as JSON when `echo`."""
    result = {**result, "machine": machine_info()}
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if echo:
        print(text)
