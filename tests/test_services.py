"""The local services behind the fixtures and the demo: real servers, honest round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdir import runtime
from mdir.dev import procs
from mdir.dev.control import service_from_state, stop_from_state
from mdir.dev.jobs import _lines, submit_and_follow
from mdir.dev.mlflow_server import MLflowServer
from mdir.dev.ray_head import RayHead
from mdir.dev.s3 import S3Server, start_s3
from mdir.dev.service import Service

# ---------------------------------------------------------------- S3


def test_s3_round_trip_s3fs_boto3_pyarrow(s3_server):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint
    uri = s3_server.bucket("svc-roundtrip")
    assert uri == "s3://svc-roundtrip"
    payload = os.urandom(4096)
    fs = s3fs.S3FileSystem()  # endpoint + credentials from the environment only
    with fs.open("svc-roundtrip/blob.bin", "wb") as fh:
        fh.write(payload)
    assert fs.cat("svc-roundtrip/blob.bin") == payload
    # the bytes really are on the moto server (read back with boto3, not s3fs)
    body = s3_server.client().get_object(Bucket="svc-roundtrip", Key="blob.bin")["Body"].read()
    assert body == payload
    # pyarrow's own S3 filesystem reaches the same server through AWS_ENDPOINT_URL
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    pq.write_table(table, f"{uri}/t.parquet")
    assert pq.read_table(f"{uri}/t.parquet").equals(table)
    assert "svc-roundtrip/t.parquet" in fs.ls("svc-roundtrip", refresh=True)


# ---------------------------------------------------------------- Ray


def test_ray_task_runs_with_token_auth_and_forwarded_env(ray_cluster, monkeypatch):
    import ray

    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_ADDRESS"] == ray_cluster.address
    token = Path(ray_cluster.token_path)
    assert token.stat().st_mode & 0o777 == 0o600
    assert len(str(ray_cluster.temp_dir)) <= 40
    monkeypatch.setenv("MDIR_SVC_MARK", "forwarded-42")
    ray_cluster.init()
    try:

        @ray.remote
        def probe() -> tuple[str | None, str]:
            return os.environ.get("MDIR_SVC_MARK"), ray.util.get_node_ip_address()

        mark, ip = ray.get(probe.remote(), timeout=120)
        assert mark == "forwarded-42"  # runtime_env env_vars reached the worker
        assert ip == "127.0.0.1"  # loopback only
        assert ray.cluster_resources()["CPU"] == 4
    finally:
        ray.shutdown()


def test_unauthenticated_clients_are_refused(ray_cluster):
    url = f"{ray_cluster.dashboard_url}/api/jobs/"
    assert procs.http_status(url) == 401  # no token
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert procs.http_status(url, headers=wrong) in (401, 403)
    good = {"Authorization": f"Bearer {ray_cluster.token()}"}
    assert procs.http_status(url, headers=good) == 200


@pytest.mark.slow
def test_job_submitted_through_the_jobs_sdk_streams_its_output(ray_cluster, tmp_path):
    """`mdir.dev.jobs` submits with the head's token header, uploads the working dir, passes
    env_vars, streams the driver's lines and ends with the CLI's outcome line; a failing
    entrypoint is reported as failed; the CLI without the token is refused."""
    (tmp_path / "probe.py").write_text(
        "import os, ray\n"
        "ray.init()\n"
        "f = ray.remote(lambda: os.environ.get('MDIR_SVC_MARK'))\n"
        "print('PROBE', ray.get(f.remote()))\n"
    )
    (tmp_path / "fail.py").write_text("raise SystemExit(3)\n")
    lines: list[str] = []
    rc, job_id = submit_and_follow(
        ray_cluster, tmp_path, ["python", "probe.py"], {"MDIR_SVC_MARK": "via-sdk"}, lines.append
    )
    assert rc == 0, "".join(lines)[-3000:]
    assert "PROBE via-sdk\n" in lines
    assert lines[-1] == f"Job '{job_id}' succeeded\n"
    info = ray_cluster.job_client().get_job_info(job_id)
    assert info.entrypoint == "python probe.py" and info.status.value == "SUCCEEDED"

    failed: list[str] = []
    rc, job_id = submit_and_follow(ray_cluster, tmp_path, ["python", "fail.py"], {}, failed.append)
    assert rc == 3 and failed[-1] == f"Job '{job_id}' failed\n"  # the driver's exit code

    env = ray_cluster.client_env()
    bad_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    bad_env.update(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))  # no ~/.ray/auth_token either
    ray_bin = str(Path(sys.executable).parent / "ray")
    lst = [ray_bin, "job", "list", "--address", ray_cluster.dashboard_url]
    out = subprocess.run(lst, env=bad_env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "authentication" in (out.stdout + out.stderr).lower()


def test_job_client_talks_to_its_head_whatever_the_environment_says(ray_cluster, monkeypatch):
    """Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override a client's address: the head's
    own client must still reach the head (and leave the environment as it was)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")
    client = ray_cluster.job_client()
    assert isinstance(client.list_jobs(), list)  # answered by the head, with the token
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:9"


def test_streamed_chunks_are_split_into_whole_lines():
    assert _lines(["a\nb", "c\n", "d"], "") == (["a\n", "bc\n"], "d")
    assert _lines(["\n"], "tail") == (["tail\n"], "")
    assert _lines([], "") == ([], "")


# ---------------------------------------------------------------- MLflow


def test_mlflow_logs_and_reads_back_a_metric(mlflow_server):
    import mlflow
    from mlflow.tracking import MlflowClient

    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.uri
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) > 0  # bounded, not zero
    mlflow.set_tracking_uri(mlflow_server.uri)
    exp = mlflow.set_experiment("svc-test")
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        for step, v in enumerate([0.5, 0.25, 0.125]):
            mlflow.log_metric("loss", v, step=step)
        mlflow.log_text("hello", "notes/hello.txt")
    client = MlflowClient(mlflow_server.uri)
    hist = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [
        (0, 0.5),
        (1, 0.25),
        (2, 0.125),
    ]
    # artifacts are proxied by the server into its own local store
    local = client.download_artifacts(run.info.run_id, "notes/hello.txt")
    assert Path(local).read_text() == "hello"


# ---------------------------------------------------------------- lifecycle


def _spawn_group(tmp_path: Path, name: str) -> Service:
    """A two-process group (sh + background sleep) as a service with a state file."""
    log = tmp_path / f"{name}.log"
    proc = procs.spawn(["sh", "-c", "sleep 300 & sleep 300"], log, os.environ)
    svc = Service(
        state_file=str(tmp_path / f"{name}.json"), pids=[proc.pid], pgid=proc.pid, log=str(log)
    )
    svc.save()
    t0 = time.monotonic()
    while len(procs.group_pids(proc.pid)) < 2 and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    return svc


def test_stop_kills_the_whole_process_group_and_nothing_else(tmp_path):
    ours = _spawn_group(tmp_path, "ours")
    other = _spawn_group(tmp_path, "other")
    try:
        members = procs.group_pids(ours.pgid)
        assert len(members) >= 2  # the shell and its background child(ren)
        ours.stop(timeout=5)
        assert not [p for p in members if procs.pid_alive(p)]
        assert not Path(ours.state_file).exists()
        assert len(procs.group_pids(other.pgid)) >= 2  # untouched
    finally:
        other.stop(timeout=5)
    assert procs.group_pids(other.pgid) == []


def test_s3_state_file_reuse_and_stop_from_another_process(tmp_path):
    state = tmp_path / "st"
    srv = start_s3(state)
    try:
        again = start_s3(state)  # already running → reused, not a second server
        assert (again.port, again.pids) == (srv.port, srv.pids)
        assert json.loads((state / "s3.json").read_text())["port"] == srv.port
        code = (
            "import sys; from mdir.dev.control import stop_from_state; stop_from_state(sys.argv[1])"
        )
        subprocess.run([sys.executable, "-c", code, str(state / "s3.json")], check=True, timeout=60)
        assert not procs.pid_alive(srv.pids[0])
        assert not procs.port_open(srv.port)
        assert not (state / "s3.json").exists()
    finally:
        srv.stop()


def test_s3_server_runs_moto_in_its_own_module_process(s3_server):
    """The fixture's server is `python -m mdir.dev.s3` (ThreadedMotoServer), not moto's CLI."""
    cmdlines = {pid: cmd for pid, _, cmd in procs.processes()}
    assert "-m mdir.dev.s3 --port" in cmdlines[s3_server.pids[0]]
    assert f"--port {s3_server.port}" in cmdlines[s3_server.pids[0]]


def test_service_from_state_rebuilds_each_kind_and_refuses_others(tmp_path):
    cases = {
        "s3": (S3Server, {"port": 9001, "credentials_file": "/c"}),
        "mlflow": (MLflowServer, {"port": 9002, "backend_uri": "sqlite:///x.db"}),
        "ray": (RayHead, {"gcs_port": 9003, "dashboard_port": 9004, "temp_dir": "/t"}),
    }
    for kind, (cls, extra) in cases.items():
        f = tmp_path / f"{kind}.json"
        f.write_text(json.dumps({"kind": kind, "state_file": str(f), "pids": [1], "pgid": 1,
                                 "from_a_newer_version": True, **extra}))  # fmt: skip
        svc = service_from_state(f)
        assert type(svc) is cls and svc.pids == [1]
        assert all(getattr(svc, k) == v for k, v in extra.items())
    (tmp_path / "odd.json").write_text(json.dumps({"kind": "ftp", "state_file": "x"}))
    (tmp_path / "broken.json").write_text("{not json")
    for name in ("odd.json", "broken.json", "missing.json"):
        assert service_from_state(tmp_path / name) is None
        assert stop_from_state(tmp_path / name) is False


# ---------------------------------------------------------------- demo up / down


class _FakeHealth:
    """A foreign HTTP server answering /health on a port (stands in for a user's MLflow)."""

    def __init__(self, tmp_path: Path):
        self.port = procs.free_port()
        code = (
            "import http.server, sys\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.end_headers(); self.wfile.write(b'OK')\n"
            "    def log_message(self, *a): pass\n"
            "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(self.port)], start_new_session=True
        )
        t0 = time.monotonic()
        while procs.http_status(f"http://127.0.0.1:{self.port}/health") != 200:
            assert time.monotonic() - t0 < 30, "fake health server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.slow
def test_demo_up_then_down_stops_only_what_it_started(tmp_path):
    """`mdir.demo up --skip-job` starts a Ray head and makes the data; `down` stops exactly it.

    An MLflow port that already answers (a stand-in for the user's own server) is reused and
    must survive `down`.
    """
    state, out = tmp_path / "st", tmp_path / "out"
    foreign = _FakeHealth(tmp_path)
    base = [sys.executable, "-m", "mdir.demo"]
    opts = ["--state-dir", str(state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    try:
        r = subprocess.run(
            [
                *base,
                "up",
                *opts,
                "--out",
                str(out),
                "--mlflow-port",
                str(foreign.port),
                "--skip-job",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "reused, not ours" in r.stdout
        ray_state = json.loads((state / "ray.json").read_text())
        assert not (state / "mlflow.json").exists()  # not ours → no state file
        head = RayHead.from_state(ray_state)
        assert head.healthy()
        pids = head.alive_pids()
        assert pids
        # the synthetic data was made and inspected
        manifest = json.loads((out / "synth" / "manifest.json").read_text())
        assert sum(s["rows"] for s in manifest["shards"]) > 0
        assert (out / "synth_grid.png").stat().st_size > 0
        result = json.loads((out / "demo_result.json").read_text())
        assert result["ray_dashboard"] == head.dashboard_url

        r = subprocess.run(
            [*base, "down", *opts], capture_output=True, text=True, timeout=120, env=env
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert not [p for p in pids if procs.pid_alive(p)]
        assert not procs.port_open(head.gcs_port)
        assert not (state / "ray.json").exists()
        assert foreign.proc.poll() is None  # the server we did not start is untouched
        assert procs.http_status(f"http://127.0.0.1:{foreign.port}/health") == 200
    finally:
        subprocess.run([*base, "down", *opts], capture_output=True, timeout=120, env=env)
        foreign.stop()


def test_bytecode_cache_env_only_when_the_driver_writes_no_bytecode(tmp_path):
    import tempfile

    assert runtime.bytecode_cache_env({}) == {}  # bytecode written next to the sources
    default = os.path.join(tempfile.gettempdir(), "mdir-pycache")
    assert runtime.bytecode_cache_env({"PYTHONDONTWRITEBYTECODE": "1"}) == {
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": default,
    }
    own = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path)}
    assert runtime.bytecode_cache_env(own)["PYTHONPYCACHEPREFIX"] == str(tmp_path)
