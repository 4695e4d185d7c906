"""mdir.runtime: secrets never travel to Ray, and workers start whatever launched the driver.

The launch-style tests run a driver under a real ``uv run`` (the binary named ``uv``, as
``make test`` does on every machine) from a directory without a ``pyproject.toml``, with
uv's ``--python`` pointing at an interpreter that has no Ray — the situation where Ray's
"uv run" hook starts the workers in a Python without Ray and they never come up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from launch import bare_python, hook_env, under_uv_run

from mdir import runtime

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ unit: what is forwarded


def test_forward_env_drops_secret_values_keeps_settings():
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SHARED_CREDENTIALS_FILE": "/run/creds",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_SESSION_TOKEN": "tok",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "MLFLOW_TRACKING_TOKEN": "tok2",
        "MDIR_SOME_SECRET": "x",
        "MDIR_VGG16_WEIGHTS": "/w/vgg.safetensors",
        "RAY_AUTH_TOKEN": "ray-token",
        "HOME": "/root",
    }
    out = runtime.forward_env(environ=env)
    assert out == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SHARED_CREDENTIALS_FILE": "/run/creds",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MDIR_VGG16_WEIGHTS": "/w/vgg.safetensors",
    }
    # an extra secret passed explicitly is dropped too
    assert "AWS_SECRET_ACCESS_KEY" not in runtime.forward_env({"AWS_SECRET_ACCESS_KEY": "x"}, {})


def test_is_secret_by_name():
    assert runtime.is_secret("AWS_SECRET_ACCESS_KEY") and runtime.is_secret("MDIR_API_TOKEN")
    assert runtime.is_secret("MLFLOW_TRACKING_USERNAME")  # half of a credential pair
    assert not runtime.is_secret("AWS_SHARED_CREDENTIALS_FILE")
    assert not runtime.is_secret("RAY_AUTH_TOKEN_PATH") and not runtime.is_secret("AWS_REGION")


def test_pin_interpreter_switches_rays_uv_hook_off(monkeypatch):
    import ray._private.ray_constants as rc

    monkeypatch.delenv(runtime.UV_HOOK_OPT_IN, raising=False)
    monkeypatch.setenv(runtime.UV_HOOK_ENV, "1")
    monkeypatch.setattr(rc, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", True)
    runtime.pin_interpreter()
    assert os.environ[runtime.UV_HOOK_ENV] == "0" and rc.RAY_ENABLE_UV_RUN_RUNTIME_ENV is False
    # opting in keeps Ray's behaviour
    monkeypatch.setenv(runtime.UV_HOOK_OPT_IN, "1")
    monkeypatch.setenv(runtime.UV_HOOK_ENV, "1")
    monkeypatch.setattr(rc, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", True)
    runtime.pin_interpreter()
    assert os.environ[runtime.UV_HOOK_ENV] == "1" and rc.RAY_ENABLE_UV_RUN_RUNTIME_ENV is True


def test_mlflow_client_env_is_bounded_and_never_unpickles(monkeypatch):
    env = runtime.mlflow_client_env(timeout_s=7.4, max_retries=3)
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert runtime.mlflow_client_env(timeout_s=0.2)["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    runtime.configure_mlflow_client(timeout_s=4, max_retries=1)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "4"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    runtime.mlflow_client_defaults()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # an explicit choice
    runtime.mlflow_client_defaults()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"


def test_importing_mdir_sets_no_mlflow_variables():
    """No module sets the MLflow client environment at import time (only when used)."""
    code = (
        "import os, mdir.registry.generators, mdir.training.tracking, mdir.retrieval.train\nimport mdir.retrieval.registry, mdir.registry.cli, mdir.cli, mdir.demo\n"
        "print(sorted(k for k in os.environ if k.startswith('MLFLOW_')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ launch styles (real Ray)


DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    from mdir.raypatch import uv_run_cmdline
    under_uv = uv_run_cmdline() is not None
    if sys.argv[1] == "mdir":
        from mdir.runtime import connect
        connect()
    else:
        import ray
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    import ray

    @ray.remote(num_cpus=0.1)
    def where():
        return sys.executable

    t0 = time.monotonic()
    ready, _ = ray.wait([where.remote()], timeout=float(sys.argv[2]))
    print(json.dumps({"under_uv": under_uv, "worker_python": ray.get(ready[0]) if ready else None,
                      "seconds": round(time.monotonic() - t0, 1)}))
    """
)


def _run_under_uv(tmp_path: Path, mode: str, wait_s: float) -> dict:
    work = tmp_path / f"work-{mode}"  # no pyproject.toml here or above (/tmp)
    work.mkdir()
    (work / "driver.py").write_text(DRIVER)
    env = hook_env(dict(os.environ))
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        under_uv_run([sys.executable, "driver.py", mode, str(wait_s)], tmp_path),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=wait_s + 120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_driver_under_uv_run_gets_working_workers(tmp_path: Path, ray_cluster):
    """mdir's connect() under `uv run` (hook conditions met) → workers run the cluster's
    Python; Ray's plain init in the same place → workers cannot start, and the raylet watch
    reports why within seconds (the control that shows the test can fail)."""
    bare = bare_python(tmp_path)
    got = _run_under_uv(tmp_path, "mdir", 60)
    assert got["under_uv"] is True  # Ray's hook would have engaged
    assert got["worker_python"] is not None, got
    # the venv's interpreter (compare paths unresolved: both venvs link the base Python)
    assert Path(got["worker_python"]).parent == Path(sys.executable).parent
    assert Path(got["worker_python"]).parent != bare.parent

    watch = ray_cluster.worker_watch()
    t0 = time.monotonic()
    control = _run_under_uv(tmp_path, "plain", 20)
    assert control["under_uv"] is True and control["worker_python"] is None, control
    with pytest.raises(Exception, match="No module named 'ray'"):
        watch.check()
    assert time.monotonic() - t0 < 60 + 120


PRIVATE_DRIVER = textwrap.dedent(
    """
    import json, os, urllib.request, urllib.error
    from mdir.runtime import connect
    started = connect(num_cpus=1, log_to_driver=False)
    import ray
    from ray.util.state import list_nodes

    @ray.remote(num_cpus=0.1)
    def probe():
        return ray.util.get_node_ip_address(), os.environ.get("RAY_API_SERVER_ADDRESS")

    ip, api_in_worker = ray.get(probe.remote(), timeout=300)
    api = os.environ["RAY_API_SERVER_ADDRESS"]
    def status(headers):
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    api + "/api/version", headers=headers), timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    token = os.environ["RAY_AUTH_TOKEN"]
    print(json.dumps({"started": started, "ip": ip, "api": api, "api_in_worker": api_in_worker,
                      "nodes": len(list_nodes(address=api)), "no_token": status({}),
                      "token": status({"Authorization": "Bearer " + token}),
                      "home_token": os.path.exists(os.path.expanduser("~/.ray/auth_token"))}))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_connect_without_a_cluster_starts_a_private_instance_with_public_apis(tmp_path: Path):
    """No RAY_ADDRESS: `connect()` starts its own instance through `ray.init` — token auth
    on (the dashboard refuses a request without the token), 127.0.0.1 only, and the State
    API that Ray Train's cleaner uses reachable from workers via RAY_API_SERVER_ADDRESS."""
    (tmp_path / "driver.py").write_text(PRIVATE_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "driver.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=540)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["started"] is True and got["ip"] == "127.0.0.1"
    assert got["api"].startswith("http://127.0.0.1:") and got["api_in_worker"] == got["api"]
    assert got["nodes"] == 1
    assert got["no_token"] == 401 and got["token"] == 200
    assert got["home_token"] is False  # the token stays in memory


# ------------------------------------------------------------------ no secret reaches Ray


def _grep_tree(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if needle.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits


CYCLEGAN_TINY = [
    "method.ngf=8", "method.ndf=8", "method.n_blocks=1", "data.mode=unpaired",
    "train.loader=ray_data", "train.max_steps=2", "mlflow.dataset_name=sentinel",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sentinel_secret_never_reaches_ray_logs_jobs_api_or_mlflow(
    tmp_path: Path, ray_cluster, mlflow_server, s3_server
):
    """A sentinel AWS secret in the environment of (1) a training driver that reads S3 data
    through Ray Data and Ray Train workers, and (2) the demo's `ray job submit`: the job
    still works (workers read the credentials file), and the sentinel appears nowhere in
    Ray's session logs, the Jobs API's job info, the submit command line, or MLflow."""
    from mlflow.tracking import MlflowClient

    from mdir import demo
    from mdir.data.synth import synthesize
    from mdir.training.job import parse_result_line

    sentinel = f"SENTINEL{uuid.uuid4().hex}"
    bucket = s3_server.bucket(f"sec-{uuid.uuid4().hex[:6]}")
    synthesize(
        f"{bucket}/data", conditions=["day", "night"], size=32, places=2, poses_per_place=2, seed=0
    )
    env = dict(os.environ)
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": sentinel})
    env["PYTHONPATH"] = str(ROOT)
    tiny = str(ROOT / "jobs" / "configs" / "test_tiny.yaml")
    overrides = [f"data.uri={bucket}/data", f"storage.path={bucket}/ckpt", "storage.name=sentinel"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "cyclegan.py"), "--config", tiny,
         *CYCLEGAN_TINY, *overrides],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    result = parse_result_line(out.stdout)
    assert out.returncode == 0 and result and result["error"] is None, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )
    assert sentinel not in out.stdout + out.stderr

    # (2) the demo's submission path, with the sentinel in the submitter's environment
    old = os.environ.get("AWS_SECRET_ACCESS_KEY")
    os.environ["AWS_SECRET_ACCESS_KEY"] = sentinel
    try:
        env_vars = demo._job_env(None, None)
    finally:
        if old is None:
            os.environ.pop("AWS_SECRET_ACCESS_KEY")
        else:
            os.environ["AWS_SECRET_ACCESS_KEY"] = old
    assert sentinel not in json.dumps(env_vars)
    work = tmp_path / "job"
    work.mkdir()
    (work / "hello.py").write_text("print('hello from the job')\n")
    rc, text = demo.submit_job(
        ray_cluster, work, ["python", "hello.py"], env_vars, tmp_path / "submit.log"
    )
    assert rc == 0 and "hello from the job" in text, text[-2000:]
    req = urllib.request.Request(
        f"{ray_cluster.dashboard_url}/api/jobs/",
        headers={"Authorization": f"Bearer {ray_cluster.token()}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # the Jobs API, as any client sees it
        jobs = r.read().decode()
    assert "hello.py" in jobs and "runtime_env" in jobs
    assert sentinel not in jobs

    session = Path(ray_cluster.temp_dir) / "session_latest"
    assert _grep_tree(session / "logs", sentinel) == []
    run = MlflowClient(mlflow_server.uri).get_run(result["run_id"])
    assert sentinel not in json.dumps(
        {"params": run.data.params, "tags": run.data.tags}, default=str
    )
