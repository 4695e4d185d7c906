"""Every use of Ray's private modules (``ray._private``, ``ray._raylet``) in mdir, in one place.

Ray 2.60 offers no public way to do these things; each function says what it touches and
why. ``tests/test_raypatch.py`` is the canary: it checks that the names, parameters and
behaviour relied on here still exist, so a Ray upgrade that changes them fails there first
instead of as a hang in a training job. Nothing here imports ``ray`` at module import time.

Used by the product (``mdir.runtime``: loopback, the uv-run hook, auth config refresh) and by
the local-services harness (``mdir.dev.ray_start``: the agent port files, patience in
``ray start``). ``cluster/prewrite_ports.py`` and ``cluster/ray_start_loopback.py`` use the
same names from a shell-started interpreter and are checked by the same canary.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Mapping
from typing import Any

#: ``start_raylet`` parameters whose values name the agents' ports (bound by name below).
AGENT_PORT_PARAMS = (
    "dashboard_agent_listen_port",
    "metrics_agent_port",
    "metrics_export_port",
    "runtime_env_agent_port",
)
#: ``start_raylet`` parameters that locate a node's port files.
NODE_PARAMS = ("session_dir", "node_id")


def _loaded_constants():
    """``ray._private.ray_constants`` when ``ray`` was already imported, else None (a later
    import reads the environment variables the callers set first)."""
    return sys.modules.get("ray._private.ray_constants")


def set_cluster_mode(enabled: bool) -> None:
    """Update ``ray_constants.ENABLE_RAY_CLUSTER``, which Ray computes once at import from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``; when False, Ray keeps 127.0.0.1 addresses."""
    mod = _loaded_constants()
    if mod is not None:
        mod.ENABLE_RAY_CLUSTER = enabled


def set_uv_hook(enabled: bool) -> None:
    """Update ``ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV`` (read once at import)."""
    mod = _loaded_constants()
    if mod is not None:
        mod.RAY_ENABLE_UV_RUN_RUNTIME_ENV = enabled


def refresh_auth_config() -> None:
    """Make an already-imported ``ray`` re-read ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN*``:
    ``ray._raylet`` caches both the config (``Config``) and the token
    (``AuthenticationTokenLoader``) on first use, and a client that set the variables later
    would otherwise connect as 'disabled'."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def agent_port_names() -> dict[str, str]:
    """``start_raylet`` parameter → the port-file name the agent writes for it."""
    from ray._raylet import (
        DASHBOARD_AGENT_LISTEN_PORT_NAME,
        METRICS_AGENT_PORT_NAME,
        METRICS_EXPORT_PORT_NAME,
        RUNTIME_ENV_AGENT_PORT_NAME,
    )

    return {
        "dashboard_agent_listen_port": DASHBOARD_AGENT_LISTEN_PORT_NAME,
        "metrics_agent_port": METRICS_AGENT_PORT_NAME,
        "metrics_export_port": METRICS_EXPORT_PORT_NAME,
        "runtime_env_agent_port": RUNTIME_ENV_AGENT_PORT_NAME,
    }


def persist_agent_ports(session_dir: str, node_id: str, ports: Mapping[str, int]) -> None:
    """Write the agents' port files (``ray._raylet.persist_port``, the function the agents
    use themselves) for ``ports`` keyed like :data:`AGENT_PORT_PARAMS`; falsy ports skipped."""
    from ray._raylet import persist_port

    names = agent_port_names()
    for param, port in ports.items():
        if port:
            persist_port(session_dir, node_id, names[param], int(port))


def prewrite_agent_ports_before_raylet() -> None:
    """Patch ``ray._private.services.start_raylet`` so that, before the raylet starts, the
    agents' port files already hold the fixed ports ``ray start`` was given.

    The raylet aborts the node when the dashboard agent has not written them within a
    hard-coded ~15 s (ray-project/ray#65983), which a busy 2-core machine regularly misses;
    the agents bind exactly these ports and rewrite the same values once they are up.
    Only for ``ray start`` with every agent port fixed on the command line."""
    import ray._private.services as svc

    orig = svc.start_raylet
    sig = inspect.signature(orig)

    def start_raylet(*a: Any, **kw: Any):
        bound = sig.bind(*a, **kw).arguments
        ports = {p: bound.get(p) for p in AGENT_PORT_PARAMS}
        persist_agent_ports(bound["session_dir"], bound["node_id"], ports)
        return orig(*a, **kw)

    svc.start_raylet = start_raylet


def patient_get_node(timeout_s: float = 240.0) -> None:
    """Patch ``ray._private.services.get_node`` to retry its ``RuntimeError`` for up to
    ``timeout_s``: ``ray start`` gives the new raylet a hard-coded 30 s to register with the
    GCS, which a loaded machine misses while the node itself comes up fine."""
    import ray._private.services as svc

    orig = svc.get_node

    def get_node(*a: Any, **kw: Any):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return orig(*a, **kw)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    svc.get_node = get_node


def keep_loopback_in_ray_start() -> None:
    """For ``ray start`` of one node of a one-machine cluster (``cluster/local.sh``): let a
    worker node join (``ENABLE_RAY_CLUSTER = True``, this process only) while 127.0.0.1
    stays 127.0.0.1 (``services.resolve_ip_for_localhost`` would rewrite it to the machine's
    other address). Ray links both to ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` on Linux."""
    import ray._private.ray_constants as ray_constants
    import ray._private.services as svc

    resolve = svc.resolve_ip_for_localhost
    loopback = ("127.0.0.1", "localhost", "::1")

    def keep(host: str) -> str:
        return host if host in loopback else resolve(host)

    ray_constants.ENABLE_RAY_CLUSTER = True
    svc.resolve_ip_for_localhost = keep


def uv_run_cmdline() -> list[str] | None:
    """The ``uv run`` command line among this process's ancestors, as Ray's uv-run hook
    sees it (None when there is none)."""
    from ray._private.runtime_env.uv_runtime_env_hook import _get_uv_run_cmdline

    return _get_uv_run_cmdline()
