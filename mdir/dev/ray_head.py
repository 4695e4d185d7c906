"""A local Ray head for tests and the demo: ``ray start --head`` on 127.0.0.1 with token
authentication, free ports, and a state file so another process can stop exactly it.

- token authentication is always on: ``RAY_AUTH_MODE=token`` and a token file of our own
  (mode 0600) given with ``RAY_AUTH_TOKEN_PATH`` — never ``~/.ray/auth_token``;
- clients need the same two variables: :attr:`RayHead.env` holds them (plus ``RAY_ADDRESS``);
- Ray's processes are found by their command line, which carries our ``--temp-dir``;
  they are stopped raylet first, GCS last (never ``ray stop``, never by name);
- the temp dir must be short: Unix socket paths (``<temp>/session_.../sockets/plasma_store``)
  are limited to ~107 bytes, so long state dirs get a short ``/tmp/mdir-ray-<hash>`` instead;
- env for workers: tasks/actors/Train workers inherit the env of ``ray start`` *plus* the
  job's ``runtime_env`` (`mdir.runtime.forward_env`);
- ``ray start`` runs through `mdir.dev.ray_start` (agent port files written before the
  raylet starts, ray-project/ray#65983).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdir.dev.procs import (
    ServiceError,
    free_ports,
    http_status,
    log_tail,
    pid_alive,
    port_open,
    processes,
    renice,
    spawn,
    terminate,
    wait_until,
)
from mdir.dev.service import Service
from mdir.runtime import (
    LOOPBACK_ENV,
    UV_HOOK_ENV,
    forward_env,
    pin_interpreter,
    refresh_ray_auth_config,
    use_loopback,
    uv_hook_wanted,
)

#: Longest Ray temp dir we use as is (socket paths append ~60 bytes; limit is ~107).
MAX_RAY_TEMP_LEN = 40


@dataclass
class RayHead(Service):
    """A local Ray head with token auth (GCS ``address``, dashboard for the Jobs API)."""

    temp_dir: str = ""
    token_path: str = ""
    gcs_port: int = 0
    dashboard_port: int = 0
    num_cpus: float = 0
    loopback_only: bool = True
    kind: str = "ray"

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Jobs API / dashboard URL (`job_client`, ``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def url(self) -> str:
        return self.dashboard_url

    @property
    def env(self) -> dict[str, str]:
        """Client variables: RAY_ADDRESS + token auth (never rely on ~/.ray/auth_token)."""
        env = {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
        }
        if self.loopback_only:
            env[LOOPBACK_ENV] = "0"
        return env

    def runtime_env(self, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``{"env_vars": forward_env(extra_env)}`` for ``ray.init`` / a submitted job."""
        return {"env_vars": forward_env(extra_env)}

    def token(self) -> str:
        return Path(self.token_path).read_text().strip()

    def auth_headers(self) -> dict[str, str]:
        """The header Ray 2.60's token auth wants on every Jobs API / dashboard request."""
        return {"Authorization": f"Bearer {self.token()}"}

    def job_client(self):
        """A ``ray.job_submission.JobSubmissionClient`` for this head, token header set
        explicitly (an explicit Authorization header wins over Ray's cached auth config).

        Ray lets ``RAY_API_SERVER_ADDRESS``, then ``RAY_ADDRESS``, override the address given
        to the client (``ray.dashboard.utils.get_address_for_submission_client``): a process
        connected to another cluster, or holding a GCS address, would be sent elsewhere or
        through an unauthenticated GCS lookup. The first is pinned to this head while the
        client resolves its address (once, in its constructor)."""
        from ray.job_submission import JobSubmissionClient

        key = "RAY_API_SERVER_ADDRESS"
        old = os.environ.get(key)
        os.environ[key] = self.dashboard_url
        try:
            return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers())
        finally:
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with this cluster's client variables applied."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_AUTH_TOKEN", None)
        env.update(self.env)
        return env

    def healthy(self) -> bool:
        if not port_open(self.gcs_port):
            return False
        hdr = self.auth_headers() if Path(self.token_path).exists() else {}
        return http_status(f"{self.dashboard_url}/api/version", headers=hdr) == 200

    def ray_pids(self) -> list[tuple[int, str]]:
        """(pid, cmdline) of processes whose command line carries our temp dir."""
        return [(p, c) for p, _, c in processes() if self.temp_dir in c and pid_alive(p)]

    def _stop_pids(self) -> list[int]:
        # raylet first (it takes its workers down), GCS last (others reconnect to it)
        procs = self.ray_pids()

        def rank(cmd: str) -> int:
            if "raylet/raylet" in cmd:
                return 0
            if "gcs_server" in cmd:
                return 2
            return 1

        return [p for p, c in sorted(procs, key=lambda pc: rank(pc[1]))]

    def alive_pids(self) -> list[int]:
        pids = super().alive_pids()
        return pids + [p for p, _ in self.ray_pids() if p not in pids]

    def stop(self, timeout: float = 20.0) -> None:
        if not self.owned:
            return
        ordered = self._stop_pids()
        gcs = [p for p, c in self.ray_pids() if "gcs_server" in c]
        # raylet first and give it a moment, then the rest while the GCS still runs (the
        # autoscaler monitor reports its SIGTERM to the GCS and, with the GCS gone, hangs in
        # reconnect retries until SIGKILLed: 20 s per session), GCS last
        if ordered:
            terminate(ordered[:1], None, timeout=5.0)
        terminate([p for p in ordered[1:] if p not in gcs], None, timeout=5.0)
        terminate(ordered[1:], self.pgid, timeout=timeout)
        left = [p for p, _ in self.ray_pids()]
        terminate(left, None, timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            Path(self.state_file).unlink()

    def worker_watch(self) -> WorkerStartWatch:
        """A watch on this head's raylet for worker processes that die while starting
        (e.g. a Python without Ray): tests that wait for workers call ``check()`` in their
        wait loop and fail at once with the raylet's reason instead of timing out."""
        return WorkerStartWatch(Path(self.temp_dir) / "session_latest" / "logs" / "raylet.err")

    def init(self, runtime_env: Mapping[str, Any] | None = None, **kwargs):
        """``ray.init`` against this head with token auth and :func:`forward_env` env vars.

        Re-initializes when a driver is already connected in this process.
        """
        import ray

        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(self.env)
        refresh_ray_auth_config()
        pin_interpreter()
        if self.loopback_only:
            use_loopback()
        if ray.is_initialized():
            ray.shutdown()
        env = dict(runtime_env or {})
        env_vars = forward_env()
        env_vars.update(env.get("env_vars", {}))
        env["env_vars"] = env_vars
        kwargs.setdefault("log_to_driver", False)
        return ray.init(address=self.address, runtime_env=env, **kwargs)


def _ray_temp_dir(state_dir: Path) -> Path:
    cand = state_dir / "ray"
    if len(str(cand)) <= MAX_RAY_TEMP_LEN:
        return cand
    h = hashlib.sha1(str(state_dir).encode()).hexdigest()[:10]
    return Path("/tmp") / f"mdir-ray-{h}"


def _ray_start_once(
    state_file: Path,
    temp_dir: Path,
    token_path: Path,
    num_cpus: float,
    num_gpus: int | None,
    object_store_memory: int,
    env: Mapping[str, str] | None,
    loopback_only: bool,
    timeout: float,
    log: Path,
) -> RayHead:
    """One ``ray start --head`` attempt with fresh free ports; cleans up after itself on failure."""
    (gcs, dash, client, agent_listen, agent_grpc, rt_agent, metrics, nm, om) = free_ports(9)
    cmd = [
        sys.executable,
        "-m",
        "mdir.dev.ray_start",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_agent}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--object-store-memory={object_store_memory}",
        "--disable-usage-stats",
    ]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    run_env = dict(os.environ)
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        run_env.pop(k, None)
    # job drivers run `python` from the head's PATH: make it this interpreter's venv
    venv_bin = str(Path(sys.executable).parent)
    run_env["PATH"] = venv_bin + os.pathsep + run_env.get("PATH", "")
    run_env.update(env or {})
    run_env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
    # Ray's state API inside workers (e.g. Train's PlacementGroupCleaner) otherwise looks for
    # "the" local cluster and fails when several run on the machine: point it at ours.
    run_env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    if loopback_only:
        # Ray resolves --node-ip-address=127.0.0.1 to the machine's other address on Linux
        # unless multi-node support is off; a single-node local head then really binds
        # and advertises 127.0.0.1 only.
        run_env[LOOPBACK_ENV] = "0"
    # a loaded 2-core machine can take >30 s to start the dashboard agent: be patient
    run_env.setdefault("RAY_agent_register_timeout_ms", "180000")
    run_env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")  # default 60 s
    run_env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Job drivers inherit this: Ray's "uv run" hook must not re-point their workers at
    # `uv run` in a directory without mdir's project (mdir.runtime.pin_interpreter)
    if not uv_hook_wanted(run_env):
        run_env[UV_HOOK_ENV] = "0"
    # `ray start` daemonizes its processes and exits; in its own session they share its pgid.
    # The raylet gives the dashboard agent a hard-coded ~15 s to write its port file and
    # aborts otherwise (ray-project/ray#65983); on a busy 2-core machine the agent's Python
    # start-up takes longer. Start with a CPU priority boost (where permitted) and drop it
    # back to normal once the head is up.
    proc = spawn(cmd, log, run_env, nice=-15)
    head = RayHead(
        state_file=str(state_file),
        pids=[],
        pgid=proc.pid,
        log=str(log),
        temp_dir=str(temp_dir),
        token_path=str(token_path),
        gcs_port=gcs,
        dashboard_port=dash,
        num_cpus=num_cpus,
        loopback_only=loopback_only,
    )
    head.save()
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            raise ServiceError(f"`ray start` failed (exit {rc}); see {log}\n{log_tail(log)}")
        wait_until(head.healthy, timeout, "Ray head (GCS + dashboard)", log)
    except (ServiceError, subprocess.TimeoutExpired) as e:
        head.stop()
        raise ServiceError(str(e)) from e
    renice([p for p, _ in head.ray_pids()], os.getpriority(os.PRIO_PROCESS, 0))
    return head


def start_ray_head(
    state_dir: str | Path,
    *,
    num_cpus: float = 4,
    num_gpus: int | None = None,
    object_store_memory: int = 500 * 1024**2,
    env: Mapping[str, str] | None = None,
    loopback_only: bool = True,
    timeout: float = 420.0,
    attempts: int = 3,
) -> RayHead:
    """Start (or reuse) ``ray start --head`` on 127.0.0.1 with token auth and free ports.

    ``num_cpus`` is *logical*: the default 4 on a 2-core machine lets 2 Train workers
    (0.5–1 CPU each) plus Ray Data tasks and a Tune driver be scheduled at once; the OS
    time-slices the real cores. ``env`` is added to the environment of ``ray start`` —
    every Ray process and worker inherits it (e.g. AWS_* / MLFLOW_TRACKING_URI), in addition
    to what a job passes in its ``runtime_env``. Started with this interpreter's ``ray``
    (the venv), so submitted job drivers run in the same venv. ``ray start`` gives the
    raylet a hard-coded 30 s to register, which a loaded 2-core machine can miss (the
    dashboard agent is slow to start): up to ``attempts`` tries, each cleaned up by pid.
    """
    state_dir = Path(state_dir).absolute()
    state_file = state_dir / "ray.json"
    head = RayHead.reuse(state_file)
    if head is not None:
        return head
    temp_dir = _ray_temp_dir(state_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    token_dir = state_dir / "auth"
    token_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(token_dir, 0o700)
    token_path = token_dir / "ray_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    os.chmod(token_path, 0o600)

    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            head = _ray_start_once(
                state_file,
                temp_dir,
                token_path,
                num_cpus,
                num_gpus,
                object_store_memory,
                env,
                loopback_only,
                timeout,
                state_dir / "ray_start.log",
            )
            break
        except ServiceError as e:  # typically the hard-coded 30 s raylet wait under load
            last = e
            if attempt < attempts:
                print(
                    f"[mdir.dev.ray_head] ray start attempt {attempt} failed, retrying",
                    file=sys.stderr,
                )
    else:
        raise ServiceError(f"Ray head did not start after {attempts} attempts: {last}")
    head.pids = [p for p, _ in head.ray_pids()]
    head.save()
    return head


class WorkerStartWatch:
    """Reads what a raylet wrote to ``raylet.err`` since the watch was made. A worker whose
    interpreter fails before it connects (``ModuleNotFoundError: No module named 'ray'``
    under a wrong ``py_executable``) writes its traceback there, and Ray then retries it
    for as long as the task waits — minutes of silence for the waiting driver."""

    #: Lines that mean a worker process could not start.
    MARKERS = ("ModuleNotFoundError", "ImportError", "workers/default_worker.py")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode(errors="replace")

    def errors(self) -> list[str]:
        """The lines since the watch began that mark a failed worker start."""
        return [ln for ln in self.new_text().splitlines() if any(m in ln for m in self.MARKERS)]

    def check(self, what: str = "Ray workers") -> None:
        """Raise ``ServiceError`` naming the raylet's reason if a worker failed to start."""
        errs = self.errors()
        if errs:
            tail = "\n".join(self.new_text().splitlines()[-15:])
            raise ServiceError(f"{what} cannot start; the raylet ({self.path}) says:\n{tail}")
