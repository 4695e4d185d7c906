"""Connect to Ray for data work outside Ray Train (CLI, benchmark, tests).

`RAY_ADDRESS` set → connect to that cluster (token auth variables come from the env).
Otherwise start a PRIVATE local instance (see `mdir.runtime.connect`, ``local="inprocess"``).
"""

from __future__ import annotations

from mdir.runtime import connect


def init_ray(
    num_cpus: int = 2, temp_dir: str | None = None, object_store_memory: int | None = None
) -> bool:
    """Initialise Ray if needed; returns True when this call started a private instance."""
    return connect(
        local="inprocess",
        num_cpus=num_cpus,
        temp_dir=temp_dir,
        object_store_memory=object_store_memory,
        log_to_driver=False,
    )
