"""A local MLflow tracking server (SQLite backend, proxied local artifacts) on 127.0.0.1 for
tests and the demo. Clients get the bounded retries of `mdir.runtime.mlflow_client_env`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mdir.dev.procs import (
    ServiceError,
    free_port,
    http_status,
    port_open,
    spawn,
    venv_bin,
    wait_until,
)
from mdir.dev.service import Service
from mdir.runtime import mlflow_client_env


@dataclass
class MLflowServer(Service):
    """An MLflow tracking server on 127.0.0.1 (``uri`` = ``http://127.0.0.1:<port>``)."""

    port: int = 0
    backend_uri: str = ""
    artifacts: str = ""
    kind: str = "mlflow"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Client variables: tracking URI, bounded retries, no unpickling."""
        return {"MLFLOW_TRACKING_URI": self.uri, **mlflow_client_env()}

    @property
    def url(self) -> str:
        return self.uri

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
    srv = MLflowServer.reuse(state_file, lambda s: port is None or s.port == port)
    if srv is not None:
        return srv
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
        venv_bin("mlflow"),
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
    proc = spawn(cmd, log, env)
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
        wait_until(srv.healthy, timeout, "MLflow server", log, proc)
    except ServiceError:
        srv.stop()
        raise
    return srv
