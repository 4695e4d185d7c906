"""The runtime layer every mdir driver uses to reach Ray: one way to connect, one list of
what travels to the workers, and a deliberate Python interpreter for them.

- :func:`connect` — the single entry to ``ray.init`` for training, Tune, retrieval, metrics
  and data work: ``RAY_ADDRESS`` (or an explicit address) → that cluster; otherwise a
  private local instance (never someone else's cluster, token auth on).
- :func:`forward_env` — the variables a job's workers need (``AWS_*``, ``MLFLOW_*``,
  ``MDIR_*`` …) **without secret values**: access keys, session tokens and passwords are
  never put into a Ray ``runtime_env`` or on a command line, because Ray writes runtime
  envs into its logs (``runtime_env_agent.log``, mode 0644), returns them from the Jobs API
  and shows ``ray job submit`` arguments in ``ps``. Workers take credentials from their
  node: its environment (what ``ray start`` was given), an instance role / Kubernetes
  Secret, or a credentials file named by ``AWS_SHARED_CREDENTIALS_FILE`` (a path, which is
  forwarded).
- :func:`pin_interpreter` — Ray 2.60 has a "uv run" hook: a driver with ``uv run`` among its
  ancestor processes gets ``py_executable = "uv run … python"`` and the driver's current
  directory as working dir, so workers start through ``uv run`` *in that directory*. In a
  directory without mdir's ``pyproject.toml`` (a Tune sweep's, a test's temp dir) they
  start in a Python without Ray and never come up (``ModuleNotFoundError: No module named
  'ray'`` in ``raylet.err``). mdir's workers use the interpreter the cluster's nodes were
  started with, so the hook is switched off (``RAY_ENABLE_UV_RUN_RUNTIME_ENV=0``) unless
  ``MDIR_RAY_UV_HOOK=1`` asks for Ray's behaviour.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from mdir import raypatch

log = logging.getLogger("mdir.runtime")

#: Ray's switch for its "uv run" runtime-env hook (read when ``ray`` is imported).
UV_HOOK_ENV = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
#: Set to 1 to keep Ray's hook (workers start through ``uv run`` in the job's working dir).
UV_HOOK_OPT_IN = "MDIR_RAY_UV_HOOK"

#: On Linux Ray turns 127.0.0.1 (in ``--node-ip-address`` *and* in a client's
#: ``ray.init(address="127.0.0.1:port")``) into the machine's other address, unless
#: multi-node support is off ("0"). Set for single-node loopback heads and their clients.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: Prefixes / names of variables that :func:`forward_env` copies into a Ray runtime_env.
FORWARD_PREFIXES = ("AWS_", "MLFLOW_", "MDIR_")
FORWARD_NAMES = ("RAY_DATA_DISABLE_PROGRESS_BARS", "CI", "TORCH_HOME", UV_HOOK_ENV)

#: Variables whose *values* are secrets (or half of a credential pair): never forwarded.
SECRET_NAMES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
    }
)
_SECRET_MARKERS = ("SECRET", "PASSWORD", "TOKEN", "PRIVATE_KEY")
_PATH_SUFFIXES = ("_FILE", "_PATH", "_DIR")


def is_secret(name: str) -> bool:
    """True for variables whose value must not leave the process (keys, tokens, passwords);
    names of files or directories (``…_FILE``, ``…_PATH``) are not secrets."""
    if name in SECRET_NAMES:
        return True
    if name.endswith(_PATH_SUFFIXES):
        return False
    return any(m in name for m in _SECRET_MARKERS)


_warned_secrets: set[str] = set()


def forward_env(
    extra: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The non-secret variables a job's workers need (``AWS_*``, ``MLFLOW_*``, ``MDIR_*``, …)
    from ``environ`` (default ``os.environ``) plus ``extra``; secrets are dropped with one
    warning naming them (not their values). Ray auth variables are never forwarded: the
    cluster's processes hold them already."""
    environ = os.environ if environ is None else environ
    out = {k: v for k, v in environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}
    out.update(extra or {})
    dropped = sorted(k for k in out if is_secret(k))
    for k in dropped:
        del out[k]
    new = [k for k in dropped if k not in _warned_secrets]
    if new:
        _warned_secrets.update(new)
        log.warning(
            "not sent to Ray workers (secret values never travel in a runtime_env): %s; "
            "workers use their node's credentials (its environment, an instance role or "
            "Secret, or the file AWS_SHARED_CREDENTIALS_FILE names)",
            ", ".join(new),
        )
    return out


def mlflow_client_env(timeout_s: float = 10.0, max_retries: int = 2) -> dict[str, str]:
    """The MLflow client settings every mdir process uses: bounded HTTP retries and never
    unpickling a model file.

    MLflow's defaults are 7 retries x 120 s (~4 min per failing call, ~20 min against a hung
    server). Some retries stay (0 would make async logging drop metrics on a blip) but
    bounded: backoff 1 s (sleeps ~1 s, 2 s + jitter <= 0.5 s) and ``timeout_s`` per request,
    so with the defaults a down server costs ~4 s per call and a hung one ~35 s."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(round(timeout_s)))),
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }


#: Client defaults that hold unless the process set them: never unpickle, and no artifact
#: progress bars (they interleave with job logs and ``--json`` output).
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def mlflow_client_defaults() -> None:
    """Apply :data:`MLFLOW_CLIENT_DEFAULTS` where unset: called where mdir loads or logs
    models, never at import."""
    for k, v in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(k, v)


def configure_mlflow_client(timeout_s: float = 10.0, max_retries: int = 2) -> None:
    """Apply :func:`mlflow_client_env` to this process (MLflow reads them at call time)."""
    os.environ.update(mlflow_client_env(timeout_s, max_retries))


def bytecode_cache_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Env vars that give Ray's processes a bytecode cache when the driver has none.

    Every trial starts ~6 fresh Python processes (trial actor, Train controller, placement
    group cleaner, synchronization actor, dataset manager, worker) that each import ray.train
    and torch. With ``PYTHONDONTWRITEBYTECODE`` set and no cache in the venv each of them
    compiles those packages from source again: ~4 s of CPU per process instead of ~1.5 s.
    Caches go under /tmp (``PYTHONPYCACHEPREFIX``); the venv is not touched. A driver that
    has its own ``PYTHONPYCACHEPREFIX`` shares it with the workers. Empty when the driver
    writes bytecode normally (next to the sources).
    """
    env = os.environ if environ is None else environ
    prefix = env.get("PYTHONPYCACHEPREFIX")
    if not prefix:
        if not env.get("PYTHONDONTWRITEBYTECODE"):
            return {}
        prefix = os.path.join(tempfile.gettempdir(), "mdir-pycache")
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": prefix}


def uv_hook_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user asked to keep Ray's "uv run" hook (``MDIR_RAY_UV_HOOK=1``)."""
    env = os.environ if environ is None else environ
    return env.get(UV_HOOK_OPT_IN, "").strip().lower() in ("1", "true", "yes")


def pin_interpreter() -> None:
    """Switch Ray's "uv run" hook off for this process and its children (module docstring),
    unless ``MDIR_RAY_UV_HOOK=1``. Also updates an already-imported ``ray``."""
    if uv_hook_wanted():
        return
    os.environ[UV_HOOK_ENV] = "0"
    raypatch.set_uv_hook(False)


def use_loopback() -> None:
    """Make this process's Ray client keep 127.0.0.1 addresses (see :data:`LOOPBACK_ENV`).

    Sets the variable for child processes and updates the constant that an
    already-imported ``ray`` computed from it at import time.
    """
    os.environ[LOOPBACK_ENV] = "0"
    raypatch.set_cluster_mode(False)


def refresh_ray_auth_config() -> None:
    """Make an already-imported ray see RAY_AUTH_MODE / RAY_AUTH_TOKEN* changes."""
    with contextlib.suppress(Exception):  # private API; ray.init reads the env anyway
        raypatch.refresh_auth_config()


def job_env_keys(environ: Mapping[str, str] | None = None) -> set[str]:
    """Variables the enclosing Ray job's runtime_env sets (empty outside ``ray job submit``).

    Ray merges a driver's ``ray.init(runtime_env=…)`` with the job's and refuses any variable
    both set, even to the same value."""
    raw = (os.environ if environ is None else environ).get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return set()
    return set((runtime_env.get("env_vars") or {}).keys())


def job_env_vars(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a driver's ``ray.init`` passes as ``runtime_env.env_vars``: forwarded variables
    and a bytecode cache, minus what an enclosing job already sets."""
    env = {**bytecode_cache_env(), **forward_env(extra)}
    skip = job_env_keys()
    return {k: v for k, v in env.items() if k not in skip}


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].split(":")[0]
    return host in ("127.0.0.1", "localhost")


def connect(
    address: str | None = None,
    *,
    local: Literal["head", "inprocess"] = "head",
    num_cpus: float | None = None,
    object_store_memory: int | None = None,
    temp_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    log_to_driver: bool = True,
) -> bool:
    """Connect this process to Ray unless it already is; True when a private local instance
    was started here (it ends with this process).

    ``address`` / ``RAY_ADDRESS`` → that cluster, with :func:`job_env_vars` as the driver's
    runtime env. Without one, a private instance on 127.0.0.1 through ``ray.init(address=
    "local")`` (public API), token held in memory (no ``~/.ray/auth_token`` is written: that
    would switch every other local cluster on the machine to token auth):
    ``local="head"`` with its dashboard (Jobs and State API; Ray Train's placement-group
    cleaner queries the State API, pointed at this instance through
    ``RAY_API_SERVER_ADDRESS``), ``local="inprocess"`` without one (faster start, for data
    work). A long-lived local head for several drivers is ``mdir.dev.ray_head`` (tests,
    demo) or ``cluster/local.sh``."""
    pin_interpreter()
    # MLflow's telemetry thread pops an env var while requests iterates os.environ for
    # proxies: a KeyError that fails tracking calls at random in actors. Off everywhere.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    if ray.is_initialized():
        return False
    addr = address or os.environ.get("RAY_ADDRESS")
    if addr:
        if _is_loopback(addr):
            use_loopback()  # keep the loopback address the head advertises
        # RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH may have been set after `ray` was imported
        # (and its auth config cached): without this the client connects as 'disabled'
        refresh_ray_auth_config()
        env_vars = job_env_vars(env)
        ray.init(
            address=addr,
            runtime_env={"env_vars": env_vars} if env_vars else None,
            log_to_driver=log_to_driver,
        )
        return False
    _start_local(
        num_cpus,
        object_store_memory,
        temp_dir,
        log_to_driver,
        dashboard=local == "head",
        env=env,
    )
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_local(
    num_cpus: float | None,
    object_store_memory: int | None,
    temp_dir: str | None,
    log_to_driver: bool,
    *,
    dashboard: bool,
    env: Mapping[str, str] | None,
) -> None:
    """``ray.init(address="local")`` with token auth on 127.0.0.1 (see :func:`connect`)."""
    import ray

    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
    os.environ["RAY_AUTH_MODE"] = "token"
    use_loopback()  # a private instance: bind and advertise 127.0.0.1 only
    # On a loaded 2-core machine the agents need longer than the default to come up.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    # Without bytecode caches every Ray process (agents, workers) recompiles torch and ray
    # from source (~5 s each here) and the raylet gives up waiting for its agents.
    os.environ.update(bytecode_cache_env())
    refresh_ray_auth_config()
    env_vars = forward_env(env) if env else {}
    last: Exception | None = None
    for _attempt in range(3):  # on an overloaded machine the raylet may give up on its agents
        kwargs: dict[str, Any] = {"include_dashboard": dashboard}
        if dashboard:
            port = free_port()
            kwargs.update(dashboard_host="127.0.0.1", dashboard_port=port)
            # the raylet and its workers inherit this process's environment
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                log_to_driver=log_to_driver,
                object_store_memory=object_store_memory,
                runtime_env={"env_vars": env_vars} if env_vars else None,
                _temp_dir=temp_dir or tempfile.mkdtemp(prefix="mdir-ray-", dir="/tmp"),
                **kwargs,
            )
            return
        except Exception as e:  # "node timed out during startup"
            last = e
            with contextlib.suppress(Exception):
                ray.shutdown()
    raise RuntimeError(f"could not start a local Ray instance after 3 attempts: {last}") from last


def worker_runtime_env(extra: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """``RunConfig(worker_runtime_env=…)`` for Ray Train: the forwarded variables."""
    env = forward_env(extra)
    return {"env_vars": env} if env else None
