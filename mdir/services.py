"""Local services for tests and the demo: a moto S3 server, a Ray head with token auth, MLflow.

One small library used by ``tests/conftest.py`` (session fixtures) and by ``mdir.demo``
(``make demo`` / ``make demo-down``). Every service:

- binds to 127.0.0.1 only, on ports the OS hands out (or a fixed port you pass);
- is started in its own process group (``start_new_session=True``) so ``stop()`` can kill
  the whole group — and only that group: we never call ``ray stop`` or kill by name;
- writes a JSON *state file* (pids, pgid, ports, token path, ...) so another process
  (``python -m mdir.demo down``) can stop exactly what was started;
- is *reused* when its state file says it is up and it answers its health check.

Ray specifics (see DESIGN.md pitfalls):

- token authentication is always on: ``RAY_AUTH_MODE=token`` and a token file of our own
  (mode 0600) given with ``RAY_AUTH_TOKEN_PATH`` — never ``~/.ray/auth_token``;
- clients need the same two variables: :attr:`RayHead.env` holds them (plus ``RAY_ADDRESS``);
- Ray's processes are found by their command line, which carries our ``--temp-dir``;
  they are stopped raylet first, GCS last;
- the temp dir must be short: Unix socket paths (``<temp>/session_.../sockets/plasma_store``)
  are limited to ~107 bytes, so long state dirs get a short ``/tmp/mdir-ray-<hash>`` instead;
- env for workers: tasks/actors/Train workers inherit the env of ``ray start`` *plus* the
  job's ``runtime_env``. Use :func:`forward_env` to build ``runtime_env={"env_vars": ...}``
  with AWS_*, MLFLOW_*, MDIR_* and ``RAY_DATA_DISABLE_PROGRESS_BARS`` from the caller's env
  (``ray.init(address, runtime_env=...)`` or ``ray job submit --runtime-env-json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdir.runtime import (
    LOOPBACK_ENV,
    UV_HOOK_ENV,
    forward_env,
    pin_interpreter,
    refresh_ray_auth_config,
    use_loopback,
    uv_hook_wanted,
)

__all__ = [
    "MLFLOW_CLIENT_ENV",
    "MLflowServer",
    "RayHead",
    "S3Server",
    "ServiceError",
    "WorkerStartWatch",
    "forward_env",
    "pin_interpreter",
    "free_port",
    "load_state",
    "use_loopback",
    "start_mlflow",
    "start_ray_head",
    "start_s3",
    "stop_from_state",
]

#: Bounded MLflow client retries. Defaults are 7 retries x 120 s timeout (~4 min per failing
#: call, ~20 min against a hung server). We keep *some* retries (0 would make async logging
#: drop metrics silently on a blip) but bound them: 2 retries, backoff 1 s (sleeps ~1 s, 2 s
#: + jitter <= 0.5 s), 10 s per request → a down server costs ~4 s per call, a hung one ~35 s.
MLFLOW_CLIENT_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
}

_AWS_TEST_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: Longest Ray temp dir we use as is (socket paths append ~60 bytes; limit is ~107).
_MAX_RAY_TEMP_LEN = 40


class ServiceError(RuntimeError):
    """A service failed to start or to answer its health check (message names the log file)."""


# ------------------------------------------------------------------ small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (sockets held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def http_status(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> int:
    """HTTP status of a GET (0 when nothing answers)."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback URL)
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return 0


def _wait(pred, timeout: float, what: str, log: Path | None, proc=None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode}; see {log}\n{_tail(log)}"
            )
        time.sleep(0.3)
    raise ServiceError(f"{what} not ready after {timeout:.0f} s; see {log}\n{_tail(log)}")


def _tail(log: Path | None, n: int = 30) -> str:
    if log is None or not Path(log).exists():
        return ""
    lines = Path(log).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def _bin(name: str) -> str:
    """Console script ``name`` next to this interpreter (the venv), else from PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"`{name}` not found next to {sys.executable} nor on PATH")
    return found


def _processes() -> list[tuple[int, int, str]]:
    """(pid, pgid, command line) of every process (``ps`` works on Linux and macOS)."""
    out = subprocess.run(
        ["ps", "-axww", "-o", "pid=,pgid=,command="],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        with contextlib.suppress(OSError, IndexError):
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def group_pids(pgid: int) -> list[int]:
    """Live pids of process group ``pgid``."""
    return [p for p, g, _ in _processes() if g == pgid and pid_alive(p)]


def _signal_pids(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def _terminate(pids: list[int], pgid: int | None, timeout: float = 10.0) -> None:
    """SIGTERM ``pids`` in order (and the group), wait, then SIGKILL whatever is left."""
    _signal_pids(pids, signal.SIGTERM)
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = [p for p in pids if pid_alive(p)] + (group_pids(pgid) if pgid else [])
        if not left:
            return
        time.sleep(0.2)
    _signal_pids([p for p in pids if pid_alive(p)], signal.SIGKILL)
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    # reap direct children so they do not linger as zombies of this process
    for p in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p, os.WNOHANG)


def _spawn(
    cmd: list[str], log: Path, env: Mapping[str, str], nice: int | None = None
) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)

    def _pre() -> None:  # runs in the child before exec
        if nice is not None:
            with contextlib.suppress(OSError):  # negative values need privileges
                os.setpriority(os.PRIO_PROCESS, 0, nice)

    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,  # own process group → stop() kills the whole group
            preexec_fn=_pre if nice is not None else None,
        )


def _renice(pids: Iterable[int], value: int) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, p, value)


def _write_state(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The JSON state file at ``path`` or None."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------ base class


@dataclass
class _Service:
    """Common fields: what we started (pids, pgid), where it logs, whether we own it."""

    state_file: str
    pids: list[int] = field(default_factory=list)
    pgid: int | None = None
    log: str = ""
    owned: bool = True  # False: found running, not started by us → stop() leaves it alone
    kind: str = ""

    def save(self) -> None:
        """Write the state file (only for services we own)."""
        if self.owned:
            _write_state(Path(self.state_file), {"kind": self.kind, **asdict(self)})

    def alive_pids(self) -> list[int]:
        """Pids of this service that are still running (own pids and process group)."""
        pids = [p for p in self.pids if pid_alive(p)]
        if self.pgid:
            pids += [p for p in group_pids(self.pgid) if p not in pids]
        return pids

    def _stop_pids(self) -> list[int]:
        return list(self.pids)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop what we started (nothing if ``owned`` is False) and remove the state file."""
        if not self.owned:
            return
        _terminate(self._stop_pids(), self.pgid, timeout=timeout)
        with contextlib.suppress(FileNotFoundError):
            Path(self.state_file).unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------ S3 (moto)


@dataclass
class S3Server(_Service):
    """A moto S3 server on 127.0.0.1 (``endpoint`` = ``http://127.0.0.1:<port>``)."""

    port: int = 0
    credentials_file: str = ""
    kind: str = "s3"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point boto3 / s3fs / pyarrow at this server. The (test) keys are
        in a credentials file, not in the environment: only its path travels to Ray workers
        (`mdir.runtime.forward_env` never forwards key values)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_SHARED_CREDENTIALS_FILE": self.credentials_file,
            "AWS_DEFAULT_REGION": _AWS_TEST_CREDS["AWS_DEFAULT_REGION"],
        }

    def healthy(self) -> bool:
        return http_status(f"{self.endpoint}/moto-api/") == 200

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=_AWS_TEST_CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_AWS_TEST_CREDS["AWS_SECRET_ACCESS_KEY"],
            region_name=_AWS_TEST_CREDS["AWS_DEFAULT_REGION"],
        )

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (idempotent) and return ``s3://name``."""
        c = self.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=name)
        return f"s3://{name}"


def _write_credentials_file(path: Path) -> Path:
    """An AWS shared-credentials file (mode 0600) with the local server's test keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "[default]\n"
            f"aws_access_key_id = {_AWS_TEST_CREDS['AWS_ACCESS_KEY_ID']}\n"
            f"aws_secret_access_key = {_AWS_TEST_CREDS['AWS_SECRET_ACCESS_KEY']}\n"
        )
    return path


def start_s3(state_dir: str | Path, port: int | None = None, timeout: float = 60.0) -> S3Server:
    """Start (or reuse) a moto S3 server; state in ``<state_dir>/s3.json``, log ``s3.log``."""
    state_dir = Path(state_dir).absolute()
    state_file = state_dir / "s3.json"
    old = load_state(state_file)
    if old:
        srv = S3Server(**{k: v for k, v in old.items() if k != "kind"})
        if srv.healthy():
            return srv
        srv.stop()  # stale: kill leftovers of the group, drop the file
    port = port or free_port()
    log = state_dir / "s3.log"
    creds = _write_credentials_file(state_dir / "aws_credentials")
    proc = _spawn([_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, os.environ)
    srv = S3Server(
        state_file=str(state_file),
        pids=[proc.pid],
        pgid=proc.pid,
        log=str(log),
        port=port,
        credentials_file=str(creds),
    )
    srv.save()
    try:
        _wait(srv.healthy, timeout, "moto S3 server", log, proc)
    except ServiceError:
        srv.stop()
        raise
    return srv


# ------------------------------------------------------------------ MLflow


@dataclass
class MLflowServer(_Service):
    """An MLflow tracking server (SQLite backend, proxied local artifacts) on 127.0.0.1."""

    port: int = 0
    backend_uri: str = ""
    artifacts: str = ""
    kind: str = "mlflow"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Client variables: tracking URI + bounded retries + no pickle (see MLFLOW_CLIENT_ENV)."""
        return {"MLFLOW_TRACKING_URI": self.uri, **MLFLOW_CLIENT_ENV}

    def healthy(self) -> bool:
        return http_status(f"{self.uri}/health") == 200


def start_mlflow(
    state_dir: str | Path,
    port: int | None = None,
    *,
    timeout: float = 180.0,
    reuse_foreign: bool = True,
) -> MLflowServer:
    """Start (or reuse) ``mlflow server --workers 1`` with SQLite + local artifacts.

    ``port=None`` picks a free port. With a fixed port that already answers ``/health``
    but is not ours (no matching state file), the server is reused with ``owned=False``
    when ``reuse_foreign`` (the demo), else a :class:`ServiceError` is raised.
    Job execution is disabled (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): 2 processes,
    ~0.5 GB, ready in ~20 s on 2 cores instead of ~14 processes.
    """
    state_dir = Path(state_dir).absolute()
    state_file = state_dir / "mlflow.json"
    old = load_state(state_file)
    if old:
        srv = MLflowServer(**{k: v for k, v in old.items() if k != "kind"})
        if srv.healthy() and (port is None or srv.port == port):
            return srv
        srv.stop()
    if port is not None and port_open(port):
        foreign = MLflowServer(state_file=str(state_file), port=port, owned=False)
        if reuse_foreign and foreign.healthy():
            return foreign
        raise ServiceError(
            f"port {port} on 127.0.0.1 is taken"
            + (" by something that is not an MLflow server" if reuse_foreign else "")
            + " (set MDIR_MLFLOW_PORT to another port)"
        )
    port = port or free_port()
    db = state_dir / "mlflow.db"
    artifacts = state_dir / "mlartifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = state_dir / "mlflow.log"
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        _bin("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = _spawn(cmd, log, env)
    srv = MLflowServer(
        state_file=str(state_file),
        pids=[proc.pid],
        pgid=proc.pid,
        log=str(log),
        port=port,
        backend_uri=f"sqlite:///{db}",
        artifacts=str(artifacts),
    )
    srv.save()
    try:
        _wait(srv.healthy, timeout, "MLflow server", log, proc)
    except ServiceError:
        srv.stop()
        raise
    return srv


# ------------------------------------------------------------------ Ray


@dataclass
class RayHead(_Service):
    """A local Ray head with token auth (GCS ``address``, dashboard for ``ray job submit``)."""

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
        """Jobs API / dashboard URL for ``ray job submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

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
        """``{"env_vars": forward_env(extra_env)}`` for ``ray.init`` / ``ray job submit``."""
        return {"env_vars": forward_env(extra_env)}

    def token(self) -> str:
        return Path(self.token_path).read_text().strip()

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with this cluster's client variables applied."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_AUTH_TOKEN", None)
        env.update(self.env)
        return env

    def healthy(self) -> bool:
        if not port_open(self.gcs_port):
            return False
        hdr = {"Authorization": f"Bearer {self.token()}"} if Path(self.token_path).exists() else {}
        return http_status(f"{self.dashboard_url}/api/version", headers=hdr) == 200

    def ray_pids(self) -> list[tuple[int, str]]:
        """(pid, cmdline) of processes whose command line carries our temp dir."""
        return [(p, c) for p, _, c in _processes() if self.temp_dir in c and pid_alive(p)]

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
            _terminate(ordered[:1], None, timeout=5.0)
        _terminate([p for p in ordered[1:] if p not in gcs], None, timeout=5.0)
        _terminate(ordered[1:], self.pgid, timeout=timeout)
        left = [p for p, _ in self.ray_pids()]
        _terminate(left, None, timeout=2.0)
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


#: ``ray start`` run through this shim: before the raylet starts, the agents' port files are
#: written with the fixed ports we pass on the command line. The raylet otherwise aborts
#: when the dashboard agent has not written them within a hard-coded ~15 s
#: (ray-project/ray#65983), which a busy 2-core machine regularly misses; the agents bind
#: exactly these ports and rewrite the same values when they are up. The raylet's
#: registration wait (30 s, hard-coded in ``ray start``) is stretched the same way.
_RAY_START_SHIM = """
import inspect, sys
import ray._private.services as svc
from ray._raylet import (DASHBOARD_AGENT_LISTEN_PORT_NAME, METRICS_AGENT_PORT_NAME,
    METRICS_EXPORT_PORT_NAME, RUNTIME_ENV_AGENT_PORT_NAME, persist_port)
_orig = svc.start_raylet
_names = {"dashboard_agent_listen_port": DASHBOARD_AGENT_LISTEN_PORT_NAME,
          "metrics_agent_port": METRICS_AGENT_PORT_NAME,
          "metrics_export_port": METRICS_EXPORT_PORT_NAME,
          "runtime_env_agent_port": RUNTIME_ENV_AGENT_PORT_NAME}
def start_raylet(*a, **kw):
    b = inspect.signature(_orig).bind(*a, **kw).arguments
    for arg, name in _names.items():
        port = b.get(arg)
        if port:
            persist_port(b["session_dir"], b["node_id"], name, int(port))
    return _orig(*a, **kw)
svc.start_raylet = start_raylet
# `ray start` then gives the raylet a hard-coded 30 s to register with the GCS; be patient
import time
_orig_get_node = svc.get_node
def get_node(*a, **kw):
    deadline = time.monotonic() + 240
    while True:
        try:
            return _orig_get_node(*a, **kw)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
svc.get_node = get_node
from ray.scripts.scripts import main
sys.argv = ["ray"] + sys.argv[1:]
sys.exit(main())
"""


def _ray_temp_dir(state_dir: Path) -> Path:
    cand = state_dir / "ray"
    if len(str(cand)) <= _MAX_RAY_TEMP_LEN:
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
    (gcs, dash, client, agent_listen, agent_grpc, rt_agent, metrics, nm, om) = _free_ports(9)
    cmd = [
        sys.executable,
        "-c",
        _RAY_START_SHIM,
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
    proc = _spawn(cmd, log, run_env, nice=-15)
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
            raise ServiceError(f"`ray start` failed (exit {rc}); see {log}\n{_tail(log)}")
        _wait(head.healthy, timeout, "Ray head (GCS + dashboard)", log)
    except (ServiceError, subprocess.TimeoutExpired) as e:
        head.stop()
        raise ServiceError(str(e)) from e
    _renice([p for p, _ in head.ray_pids()], os.getpriority(os.PRIO_PROCESS, 0))
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
    (the venv), so ``ray job submit`` drivers run in the same venv. ``ray start`` gives the
    raylet a hard-coded 30 s to register, which a loaded 2-core machine can miss (the
    dashboard agent is slow to start): up to ``attempts`` tries, each cleaned up by pid.
    """
    state_dir = Path(state_dir).absolute()
    state_file = state_dir / "ray.json"
    old = load_state(state_file)
    if old:
        head = RayHead(**{k: v for k, v in old.items() if k != "kind"})
        if head.healthy():
            return head
        head.stop()
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
                    f"[mdir.services] ray start attempt {attempt} failed, retrying", file=sys.stderr
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


# ------------------------------------------------------------------ by state file


def stop_from_state(state_file: str | Path) -> bool:
    """Stop the service described by a state file (used by ``mdir.demo down``)."""
    data = load_state(state_file)
    if not data:
        return False
    kind = data.pop("kind", "")
    cls = {"s3": S3Server, "mlflow": MLflowServer, "ray": RayHead}.get(kind)
    if cls is None:
        return False
    cls(**data).stop()
    return True
