"""Connect to Ray for data work outside Ray Train (CLI, benchmark, tests).

`RAY_ADDRESS` set → connect to that cluster (token auth variables come from the env).
Otherwise start a PRIVATE local instance: ``address="local"`` (never attach to someone
else's running cluster, which a bare ``ray.init()`` does), its own temp dir, and token auth
with an in-memory token (no ``~/.ray/auth_token`` file is written; writing it would
silently switch every other local cluster on the machine to token auth).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

from mdir.services import bytecode_cache_env


def init_ray(
    num_cpus: int = 2, temp_dir: str | None = None, object_store_memory: int | None = None
) -> bool:
    """Initialise Ray if needed; returns True when this call started a private instance."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return False
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
    os.environ["RAY_AUTH_MODE"] = "token"
    # On a loaded 2-core machine the agents need longer than the default to come up.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    # Without bytecode caches every Ray process (agents, workers) recompiles torch and ray
    # from source (~5 s each here) and the raylet gives up waiting for its agents.
    os.environ.update(bytecode_cache_env())
    with contextlib.suppress(Exception):  # ray may have been imported before the env was set
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    last: Exception | None = None
    for _attempt in range(3):  # on an overloaded machine the raylet may give up on its agents
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=object_store_memory,
                _temp_dir=temp_dir or tempfile.mkdtemp(prefix="mdir-ray-", dir="/tmp"),
            )
            return True
        except Exception as e:  # "node timed out during startup"
            last = e
            with contextlib.suppress(Exception):
                ray.shutdown()
    raise RuntimeError(f"could not start a local Ray instance after 3 attempts: {last}") from last
