"""``ray start`` with two start-up workarounds for loaded machines (``python -m
mdir.dev.ray_start start --head ...``), used by `mdir.dev.ray_head`.

Before the raylet starts, the agents' port files are written with the fixed ports given on
the command line (the raylet otherwise aborts when the dashboard agent is not up within a
hard-coded ~15 s, ray-project/ray#65983), and ``ray start``'s hard-coded 30 s wait for the
raylet to register is stretched. Both patch private Ray functions: see `mdir.raypatch`.
"""

from __future__ import annotations

import sys

from mdir import raypatch

#: How long ``ray start`` waits for its raylet to register (Ray's own: 30 s).
REGISTER_TIMEOUT_S = 240.0


def main(argv: list[str] | None = None) -> int:
    raypatch.prewrite_agent_ports_before_raylet()
    raypatch.patient_get_node(REGISTER_TIMEOUT_S)
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *(sys.argv[1:] if argv is None else argv)]
    return ray_main()


if __name__ == "__main__":
    sys.exit(main())
