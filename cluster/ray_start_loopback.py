"""`ray start` for a node of a one-machine cluster that stays on 127.0.0.1 (cluster/local.sh).

Ray 2.60 on Linux links two things to one switch, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``:
whether a worker node may join at all, and whether ``127.0.0.1`` is rewritten to the machine's
other address (for ``--node-ip-address`` and the GCS address). With the switch on, every node
advertises and binds the host address, so the GCS and raylets listen on the network; with it
off, worker nodes refuse to start. This shim runs ``ray start`` with the switch off in the
environment (so the raylet, agents and workers keep the loopback address) and allows the
join in this process only, keeping ``127.0.0.1`` as given. Private Ray API, isolated in
`mdir.raypatch`;
``tests/test_cluster_local.py`` checks that no process of the cluster listens beyond
127.0.0.1, so a change in Ray's behaviour fails there.

Usage: python cluster/ray_start_loopback.py start [ray start arguments...]
"""

from __future__ import annotations

import sys
from pathlib import Path

# the project's own package, whichever Python $MDIR_RAY names
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mdir.raypatch import keep_loopback_in_ray_start  # noqa: E402

keep_loopback_in_ray_start()  # private Ray API, isolated (and canary-tested) in mdir.raypatch

if __name__ == "__main__":
    from ray.scripts.scripts import main

    sys.argv = ["ray", *sys.argv[1:]]
    sys.exit(main())
