"""cluster/local.sh: a real 3-node Ray cluster on one machine (head + w1 + w2 on 127.0.0.1).

One cluster per module (starting one costs ~30-100 s on 2 busy cores). The tests check that
token auth is really on, that work pinned with the per-node custom resources lands on different
nodes, and that `down` leaves none of its processes behind. The job / sweep / node-loss tests
run the project's real entrypoints (`jobs/*.py`) through Ray's Jobs SDK and skip with a reason
while those files are not in the tree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "local.sh"
PY = sys.executable

# Variables a session-wide Ray fixture may have exported; the local cluster sets its own.
_RAY_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_TOKEN",
    # the loopback switch: the cluster's `env` sets it for its clients (the nodes keep
    # 127.0.0.1 through cluster/ray_start_loopback.py)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)


@dataclass
class LocalCluster:
    """A running `cluster/local.sh` cluster and the environment its clients need."""

    state: Path
    env: dict[str, str]  # os.environ + MDIR_LOCAL_DIR + the cluster's RAY_* variables

    def sh(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def our_pids(self) -> list[int]:
        """Pids whose command line carries the state dir (what `down` must have stopped)."""
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{self.state}/" in cmd and "local.sh" not in cmd:
                pids.append(int(d.name))
        return pids


def _base_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _RAY_VARS}
    env["MDIR_LOCAL_DIR"] = str(state)
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    env.setdefault("MDIR_RAY", str(Path(PY).parent / "ray"))
    return env


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    # short path under /tmp: Ray's Unix sockets live below it (108-byte limit)
    state = Path(tempfile.mkdtemp(prefix="mdlc", dir="/tmp"))
    cluster = LocalCluster(state=state, env=_base_env(state))
    # 2 logical CPUs per node and 1.5 per training worker: two workers never share a node, and
    # after one worker node is lost the two that remain still fit the restarted group
    cluster.env.update(MDIR_HEAD_CPUS="2", MDIR_WORKER_CPUS="2")
    try:
        t0 = time.monotonic()
        up = cluster.sh("up", timeout=420)
        assert up.returncode == 0, f"local.sh up failed:\n{up.stdout}\n{up.stderr}"
        print(f"local.sh up took {time.monotonic() - t0:.0f} s")
        for line in (state / "cluster.env").read_text().splitlines():
            key, _, value = line.partition("=")
            cluster.env[key] = value
        yield cluster
    finally:
        down = cluster.sh("down", timeout=120)
        left = cluster.our_pids()
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, f"local.sh down failed:\n{down.stdout}\n{down.stderr}"
        assert not left, f"local.sh down left processes running: {left}"


def test_status_lists_three_nodes_with_own_resources(local_cluster: LocalCluster) -> None:
    st = local_cluster.sh("status", timeout=120)
    assert st.returncode == 0, st.stdout + st.stderr
    for res in ("node_head", "node_w1", "node_w2"):
        assert res in st.stdout
    assert st.stdout.count("ALIVE") == 3
    token = local_cluster.state / "token"
    assert token.stat().st_mode & 0o777 == 0o600
    env = local_cluster.env
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert env["RAY_ADDRESS"].startswith("127.0.0.1:")
    assert env["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")


def _listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that `pids` own (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.glob("*") if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                out.append(f[1][:width])
    return out


def test_every_node_listens_on_loopback_only(local_cluster: LocalCluster) -> None:
    """GCS, raylets, agents and dashboard of all three nodes bind 127.0.0.1, nothing else."""
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    addrs = _listening(set(local_cluster.our_pids()))
    assert len(addrs) >= 6, addrs  # at least GCS + 3 raylets + dashboard + agents
    assert set(addrs) <= loopback, sorted(set(addrs) - loopback)


def _http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_token_auth_is_on(local_cluster: LocalCluster) -> None:
    url = local_cluster.env["RAY_API_SERVER_ADDRESS"] + "/api/jobs/"
    token = (local_cluster.state / "token").read_text().strip()
    assert _http_status(url, None) == 401
    assert _http_status(url, "0" * 64) == 403
    assert _http_status(url, token) == 200


PLACE = r"""
import json, ray
ray.init(log_to_driver=False)  # RAY_ADDRESS + token variables come from the environment

@ray.remote(num_cpus=0.01)
class Where:
    def node(self):
        return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=0.01)
def where():
    return ray.get_runtime_context().get_node_id()

actors = [Where.options(resources={r: 0.01}).remote() for r in ("node_w1", "node_w2")]
placed = ray.get([a.node.remote() for a in actors], timeout=180)
tasks = ray.get([where.options(resources={r: 0.01}).remote() for r in ("node_w1", "node_w2")], timeout=180)
nodes = {n["NodeID"]: [k for k in n["Resources"] if k.startswith("node_")] for n in ray.nodes() if n["Alive"]}
print("RESULT " + json.dumps({"actors": placed, "tasks": tasks, "nodes": nodes}))
"""


def test_work_pinned_by_custom_resources_lands_on_different_nodes(
    local_cluster: LocalCluster,
) -> None:
    out = subprocess.run(
        [PY, "-c", PLACE], env=local_cluster.env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line.removeprefix("RESULT "))
    nodes = res["nodes"]
    assert len(nodes) == 3
    for placed in (res["actors"], res["tasks"]):
        w1, w2 = placed
        assert w1 != w2
        assert nodes[w1] == ["node_w1"] and nodes[w2] == ["node_w2"]


JOB_FILES = ["jobs/cyclegan.py", "jobs/configs/test_tiny.yaml", "jobs/tune.py"]
needs_jobs = pytest.mark.skipif(
    not all((REPO / f).is_file() for f in JOB_FILES),
    reason=f"training / tune entrypoints not in the tree yet: {JOB_FILES}",
)
EXCLUDES = json.dumps(
    {"excludes": [".venv", ".git", "demo_out", "bench_out", "runs", "*.egg-info"]}
)
LIST_WORKERS = r"""
import json, os, sys
from ray.util.state import list_actors, list_nodes
api = os.environ["RAY_API_SERVER_ADDRESS"]
names = {n.node_id: [k for k in n.resources_total if k.startswith("node_")][0]
         for n in list_nodes(address=api, detail=True, raise_on_missing_output=False)}
acts = list_actors(address=api, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                   detail=True, raise_on_missing_output=False)
print("RESULT " + json.dumps(sorted(names.get(a.node_id, "?") for a in acts)))
"""


def _submit(cluster: LocalCluster, sub_id: str, entrypoint: list[str]) -> None:
    """Submit through Ray's Jobs SDK (token from the cluster's env), not the `ray` CLI."""
    renv = {"working_dir": str(REPO), **json.loads(EXCLUDES)}
    r = _job_query(cluster, "submit", sub_id, json.dumps(renv), shlex.join(entrypoint))
    assert r.returncode == 0 and f"SUBMITTED {sub_id}" in r.stdout, (
        r.stdout[-2000:] + r.stderr[-2000:]
    )


JOB_QUERY = r"""
import json, os, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"])
if sys.argv[1] == "submit":
    sub = client.submit_job(entrypoint=sys.argv[4], submission_id=sys.argv[2],
                            runtime_env=json.loads(sys.argv[3]))
    print("SUBMITTED " + sub)
elif sys.argv[1] == "status":
    print("STATUS " + str(client.get_job_status(sys.argv[2]).value))
else:
    print(client.get_job_logs(sys.argv[2]))
"""


def _job_query(
    cluster: LocalCluster, what: str, sub_id: str, *args: str
) -> subprocess.CompletedProcess:
    """Run JOB_QUERY (`submit`, `status` or `logs`) for a submission against the cluster's
    dashboard (the client takes the token from the cluster's RAY_AUTH_* variables)."""
    return subprocess.run(
        [PY, "-c", JOB_QUERY, what, sub_id, *args],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _status(cluster: LocalCluster, sub_id: str) -> str:
    out = _job_query(cluster, "status", sub_id)
    lines = [x for x in out.stdout.splitlines() if x.startswith("STATUS ")]
    return lines[-1].removeprefix("STATUS ") if lines else "UNKNOWN"


def _wait(cluster: LocalCluster, sub_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = _status(cluster, sub_id)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    return state


def _logs(cluster: LocalCluster, sub_id: str) -> str:
    out = _job_query(cluster, "logs", sub_id)
    return out.stdout + out.stderr[-2000:]


def _train_workers(cluster: LocalCluster) -> list[str]:
    out = subprocess.run(
        [PY, "-c", LIST_WORKERS], env=cluster.env, capture_output=True, text=True, timeout=120
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[-1].removeprefix("RESULT ")) if line else []


@pytest.fixture(scope="module")
def tiny_data() -> Iterator[Path]:
    from mdir.data.synth import synthesize

    root = Path(tempfile.mkdtemp(prefix="mdlcdata"))
    synthesize(
        str(root / "synth"), places=4, conditions=["day", "night"], size=32, poses_per_place=4
    )
    yield root
    shutil.rmtree(root, ignore_errors=True)


@needs_jobs
def test_training_job_spreads_over_nodes_and_survives_losing_one(
    local_cluster: LocalCluster, tiny_data: Path
) -> None:
    """Submit (Jobs SDK) a 2-worker CycleGAN (32 px, 8-wide nets): the workers sit on two
    different nodes; SIGKILL of a worker node after the first checkpoint; Train restarts the
    group on the nodes left, from that checkpoint, and the job finishes all steps."""
    runs = tiny_data / "runs"
    steps = 60
    entry = [
        "python", "jobs/cyclegan.py", "--config", "jobs/configs/test_tiny.yaml",
        "method.ngf=8", "method.ndf=8", "method.n_blocks=1", "method.n_layers_d=2",
        f"data.uri={tiny_data / 'synth'}", "data.mode=unpaired", "data.domain_a=[day]",
        "data.domain_b=[night]", f"storage.path={runs}", "storage.name=lc-train",
        "storage.max_failures=3", f"train.max_steps={steps}", "train.epochs=1000",
        "train.checkpoint_every=2", "train.log_every=2", "train.loader=memory",
        "scaling.num_workers=2", "scaling.cpus_per_worker=1.5", "mlflow.enabled=false",
    ]  # fmt: skip
    _submit(local_cluster, "lc-train", entry)
    # the first checkpoint = training is under way and there is something to resume from
    deadline = time.monotonic() + 300
    ckpts: list[Path] = []
    while time.monotonic() < deadline and not ckpts:
        ckpts = (
            list((runs / "lc-train").glob("checkpoint_*")) if (runs / "lc-train").exists() else []
        )
        state = _status(local_cluster, "lc-train")
        logs = (
            _logs(local_cluster, "lc-train") if state in ("FAILED", "STOPPED", "SUCCEEDED") else ""
        )
        assert not logs, f"job ended ({state}) before its first checkpoint:\n{logs[-4000:]}"
        time.sleep(2)
    assert ckpts, "no checkpoint within 300 s:\n" + _logs(local_cluster, "lc-train")[-4000:]
    placed = _train_workers(local_cluster)
    assert len(placed) == 2 and len(set(placed)) == 2, placed  # two workers, two nodes
    victim = next(n for n in ("node_w1", "node_w2") if n in placed).removeprefix("node_")
    kill = local_cluster.sh("kill-node", victim, timeout=60)
    assert kill.returncode == 0, kill.stderr
    state = _wait(local_cluster, "lc-train", timeout=480)
    logs = _logs(local_cluster, "lc-train")
    assert state == "SUCCEEDED", logs[-5000:]
    line = next(x for x in reversed(logs.splitlines()) if x.startswith("MDIR_RESULT "))
    result = json.loads(line.removeprefix("MDIR_RESULT "))
    assert result["error"] is None
    assert result["step"] == steps
    # the restarted worker group continued from a checkpoint, not from step 0
    resumed = [int(x) for x in re.findall(r"'resumed_from_step': (\d+)", logs)]
    assert resumed and max(resumed) >= 2, logs[-5000:]


@needs_jobs
def test_tiny_sweep_job_finishes(local_cluster: LocalCluster, tiny_data: Path) -> None:
    """A 2-trial sweep (toy backend: real TorchTrainers, quadratic "FID") submitted as a job."""
    space = tiny_data / "space.yaml"
    space.write_text(
        f"""
name: lc-sweep
backend: toy
storage_path: {tiny_data / "tune"}
cases:
  - {{label: a, set: {{toy.lr: 0.3}}}}
  - {{label: b, set: {{toy.lr: 0.05}}}}
parameters:
  toy.evals: {{grid: [2]}}
max_concurrent_trials: 2
resources_per_trial: {{num_workers: 1, cpus_per_worker: 0.5}}
max_failures: 1
"""
    )
    _submit(local_cluster, "lc-sweep", ["python", "jobs/tune.py", "--space", str(space)])
    state = _wait(local_cluster, "lc-sweep", timeout=420)
    logs = _logs(local_cluster, "lc-sweep")
    assert state == "SUCCEEDED", logs[-5000:]
    summary = json.loads(next(x for x in reversed(logs.splitlines()) if x.startswith("{")))
    assert len(summary["leaderboard"]) == 2
    assert summary["best_trial"].startswith("a")  # lr 0.3 gets closer to the optimum than 0.05
