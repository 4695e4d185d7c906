"""Fault drills on the local services (``make drills``): what an operator would try, measured.

Each drill starts from the same place — a private Ray head (token auth, 127.0.0.1), an MLflow
server (SQLite) and a moto S3 server, all from :mod:`mdir.dev` in a temporary state dir,
and a small synthetic dataset — injects one fault into a real run of a tiny CycleGAN job
(``jobs/cyclegan.py``, 2 Ray Train workers), and records what happened in numbers. The table
goes to ``docs/reliability.md`` (and JSON beside it); the README links to it.

    python -m mdir.dev.drills                 # all drills, ~10 min on 2 cores
    python -m mdir.dev.drills --only worker_kill --only secret_leak

Not part of ``make test``: the tests cover each behaviour on its own; this measures them
together, the way the README reports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from mdir import runtime
from mdir.dev.mlflow_server import MLflowServer, start_mlflow
from mdir.dev.ray_head import RayHead, start_ray_head
from mdir.dev.s3 import S3Server, start_s3

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "jobs" / "configs" / "test_tiny.yaml"
STEP_RE = re.compile(r"step (\d+)/(\d+) epoch")
RESUME_RE = re.compile(r"resumed from checkpoint at step (\d+)")
#: Tiny CycleGAN on 32 px synthetic data: the drills measure the system, not the model.
TINY_CYCLEGAN = [
    "method.name=cyclegan", "method.ngf=8", "method.ndf=8", "method.n_blocks=1",
    "data.mode=unpaired", "train.loader=memory", "train.log_every=1", "train.epochs=1000",
    "mlflow.dataset_name=drills", "mlflow.experiment=mdir-drills",
]  # fmt: skip

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@dataclass
class Row:
    """One drill's outcome: what was done, what happened, and the measured numbers."""

    drill: str
    fault: str
    outcome: str = ""
    ok: bool = False
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Lab:
    """The services and data every drill uses."""

    state: Path
    head: RayHead
    mlflow: MLflowServer
    s3: S3Server
    data: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = self.head.client_env()
        env.update(self.mlflow.env)
        env.update(self.s3.env)
        env["PYTHONPATH"] = str(ROOT)
        env.update(extra or {})
        return env


@dataclass
class JobRun:
    """A job subprocess whose output lines are timestamped as they arrive."""

    proc: subprocess.Popen
    lines: list[tuple[float, str]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def steps(self) -> list[tuple[float, int]]:
        return [(t, int(m.group(1))) for t, ln in self.lines if (m := STEP_RE.search(ln))]

    def text(self) -> str:
        return "\n".join(ln for _, ln in self.lines)

    def result(self) -> dict[str, Any] | None:
        from mdir.training.job import parse_result_line

        return parse_result_line(self.text())


def start_job(lab: Lab, overrides: list[str], env: dict[str, str] | None = None) -> JobRun:
    cmd = [sys.executable, str(ROOT / "jobs" / "cyclegan.py"), "--config", str(TINY)]
    proc = subprocess.Popen(
        [*cmd, f"data.uri={lab.data}", *TINY_CYCLEGAN, *overrides],
        env=env or lab.env(),
        cwd=lab.state,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    run = JobRun(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append((time.monotonic(), line.rstrip("\n")))

    threading.Thread(target=pump, daemon=True).start()
    return run


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not reached after {timeout:.0f} s")
        time.sleep(0.2)


def finish(run: JobRun, timeout: float = 900) -> int:
    try:
        return run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.proc.pid, signal.SIGKILL)
        return run.proc.wait()


def reached(run: JobRun, step: int) -> Callable[[], bool]:
    return lambda: any(s >= step for _, s in run.steps()) or run.proc.poll() is not None


def train_worker_pids(head: RayHead) -> list[int]:
    """Pids of this head's Ray Train worker processes (children of its raylet)."""
    raylets = {p for p, c in head.ray_pids() if "raylet/raylet" in c}
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if ppid in raylets and "RayTrainWorker" in cmd:
                out.append(int(d.name))
    return sorted(out)


# ------------------------------------------------------------------ the drills


def drill_worker_kill(lab: Lab) -> Row:
    row = Row("worker_kill", "SIGKILL one of 2 Ray Train workers at step 25 (checkpoint every 10)")
    run = start_job(
        lab,
        ["train.max_steps=60", "train.checkpoint_every=10", "storage.max_failures=2",
         f"storage.path={lab.state}/ckpt", f"storage.name=wk-{uuid.uuid4().hex[:6]}"],
    )  # fmt: skip
    wait_until(reached(run, 25), 600, "step 25")
    pids = train_worker_pids(lab.head)
    last_before = max(s for _, s in run.steps())
    t_kill = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    rc = finish(run)
    res = run.result() or {}
    after = [(t, s) for t, s in run.steps() if t > t_kill]
    resumed = [int(m.group(1)) for t, ln in run.lines if t > t_kill and (m := RESUME_RE.search(ln))]
    first_after = after[0][0] - t_kill if after else None
    row.numbers = {
        "workers_found": len(pids),
        "last_step_before_kill": last_before,
        "resumed_from_step": resumed[0] if resumed else None,
        "steps_replayed": last_before - resumed[0] if resumed else None,
        "s_to_first_resumed_step": round(first_after, 1) if first_after else None,
        "final_step": res.get("step"),
    }
    row.ok = rc == 0 and res.get("error") is None and res.get("step") == 60 and bool(resumed)
    row.outcome = (
        f"worker group restarted from the step-{row.numbers['resumed_from_step']} checkpoint, "
        f"finished at step {res.get('step')}"
        if row.ok
        else f"run failed (rc {rc}): {res.get('error')}"
    )
    return row


def drill_driver_kill(lab: Lab) -> Row:
    row = Row("driver_kill", "SIGKILL the job driver at step 25, then re-submit the same name")
    name = f"dk-{uuid.uuid4().hex[:6]}"
    common = ["train.max_steps=50", "train.checkpoint_every=10", f"storage.path={lab.state}/ckpt",
              f"storage.name={name}"]  # fmt: skip
    run = start_job(lab, common)
    wait_until(reached(run, 25), 600, "step 25")
    last_before = max(s for _, s in run.steps())
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait()
    t_restart = time.monotonic()
    run2 = start_job(lab, common)
    rc = finish(run2)
    res = run2.result() or {}
    first = run2.steps()[0][0] - t_restart if run2.steps() else None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(lab.mlflow.uri)
    exp = client.get_experiment_by_name("mdir-drills")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mdir.storage_name` = '{name}'"
    )
    resumed = [int(m.group(1)) for _, ln in run2.lines if (m := RESUME_RE.search(ln))]
    row.numbers = {
        "last_step_before_kill": last_before,
        "resumed_from_step": resumed[0] if resumed else None,
        "s_from_resubmit_to_first_step": round(first, 1) if first else None,
        "mlflow_runs_for_the_name": len(runs),
        "final_step": res.get("step"),
    }
    row.numbers["steps_replayed"] = (
        last_before - row.numbers["resumed_from_step"]
        if row.numbers["resumed_from_step"] is not None
        else None
    )
    row.ok = rc == 0 and res.get("step") == 50 and len(runs) == 1 and bool(resumed)
    row.outcome = (
        "re-submission resumed from the last checkpoint and kept logging to the same MLflow run"
        if row.ok
        else f"rc {rc}, runs {len(runs)}: {res.get('error')}"
    )
    return row


def drill_mlflow_outage(lab: Lab, outage_s: float = 30.0) -> Row:
    row = Row(
        "mlflow_outage",
        f"MLflow server frozen (SIGSTOP) for {outage_s:.0f} s at step 10, then killed and "
        "restarted on the same port",
    )
    steps = 300
    run = start_job(
        lab,
        [f"train.max_steps={steps}", "train.checkpoint_every=0", f"storage.path={lab.state}/ckpt",
         f"storage.name=mo-{uuid.uuid4().hex[:6]}"],
    )  # fmt: skip
    wait_until(reached(run, 10), 600, "step 10")
    pgid = lab.mlflow.pgid
    assert pgid
    os.killpg(pgid, signal.SIGSTOP)
    t_stop = time.monotonic()
    time.sleep(outage_s)
    os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(-pgid, os.WNOHANG)
    lab.mlflow = start_mlflow(lab.state / "mlflow", lab.mlflow.port, reuse_foreign=False)
    t_back = time.monotonic()
    rc = finish(run)
    res = run.result() or {}
    times = [t for t, _ in run.steps()]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    during = [s for t, s in run.steps() if t_stop <= t <= t_back]
    points = None
    if res.get("run_id"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(lab.mlflow.uri)
        keys = [k for k in client.get_run(res["run_id"]).data.metrics if k.startswith("loss/")]
        if keys:
            points = len(client.get_metric_history(res["run_id"], sorted(keys)[0]))
    row.numbers = {
        "outage_s": outage_s,
        "steps_trained_during_outage": len(during),
        "longest_step_gap_s": round(max(gaps), 2) if gaps else None,
        "steps": res.get("step"),
        "metric_points_in_mlflow": points,
    }
    row.ok = rc == 0 and res.get("step") == steps and points == steps
    row.outcome = (
        f"training never waited on MLflow; all {points} points of a loss arrived"
        if row.ok
        else f"rc {rc}, points {points} of {steps}: {res.get('error')}"
    )
    return row


def drill_bad_inputs(lab: Lab) -> Row:
    import io as _io

    import numpy as np
    from PIL import Image

    from mdir.data.ingest import ingest

    row = Row("bad_inputs", "ingest a folder with 12 kinds of bad or odd files beside 4 good ones")
    src = lab.state / "bad" / "src"
    day, night = src / "day", src / "night"
    day.mkdir(parents=True, exist_ok=True)
    night.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)

    def img(mode: str = "RGB", fmt: str = "JPEG", size: int = 48) -> bytes:
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        b = _io.BytesIO()
        Image.fromarray(a).convert(mode).save(b, fmt)
        return b.getvalue()

    for i in range(4):
        (day / f"good{i}.jpg").write_bytes(img())
    j = img()
    (day / "truncated.jpg").write_bytes(j[: len(j) // 2])
    (day / "empty.jpg").write_bytes(b"")
    (day / "notes.jpg").write_text("not an image")
    (day / "tiny.png").write_bytes(img(fmt="PNG", size=4))
    (day / "dup.jpg").write_bytes((day / "good0.jpg").read_bytes())
    os.symlink(str(day / "absent.jpg"), str(day / "dangling.jpg"))
    os.symlink("loop.jpg", str(day / "loop.jpg"))
    bomb = _io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, "PNG")  # ~110 KB file, 900 Mpixel claimed
    (day / "bomb.png").write_bytes(bomb.getvalue())
    (night / "gray.png").write_bytes(img("L", "PNG"))
    (night / "rgba.png").write_bytes(img("RGBA", "PNG"))
    (night / "cmyk.jpg").write_bytes(img("CMYK"))
    deep = _io.BytesIO()
    Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16)).save(deep, "PNG")
    (night / "deep.png").write_bytes(deep.getvalue())
    expected_skipped, expected_converted, expected_rows = 8, 4, 8
    m = ingest(str(src), str(lab.state / "bad" / "out"), "folders", min_size=16)
    row.numbers = {
        "files_tried": 16,
        "skipped": dict(m.skipped),
        "converted": dict(m.converted),
        "rows_written": m.rows,
    }
    row.ok = (
        sum(m.skipped.values()) == expected_skipped
        and sum(m.converted.values()) == expected_converted
        and m.rows == expected_rows
    )
    row.outcome = (
        f"{sum(m.skipped.values())} skipped and {sum(m.converted.values())} converted, each "
        f"counted by reason; {m.rows} rows written"
    )
    return row


def drill_secret_leak(lab: Lab) -> Row:
    row = Row("secret_leak", "a sentinel AWS secret in the driver's environment during a job")
    sentinel = f"SENTINEL{uuid.uuid4().hex}"
    env = lab.env({"AWS_ACCESS_KEY_ID": "drill", "AWS_SECRET_ACCESS_KEY": sentinel})
    run = start_job(
        lab,
        ["train.max_steps=4", f"storage.path={lab.state}/ckpt",
         f"storage.name=sl-{uuid.uuid4().hex[:6]}"],
        env=env,
    )  # fmt: skip
    rc = finish(run)
    hits = 0
    session = Path(lab.head.temp_dir) / "session_latest" / "logs"
    for p in session.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                hits += p.read_bytes().count(sentinel.encode())
    hits += run.text().count(sentinel)
    row.numbers = {"occurrences_in_ray_logs_and_job_output": hits, "job_rc": rc}
    row.ok = rc == 0 and hits == 0
    row.outcome = "the secret appeared nowhere" if row.ok else f"{hits} occurrences (rc {rc})"
    return row


def drill_corrupt_checkpoint(lab: Lab) -> Row:
    from mdir.training import checkpoint as ckpt

    row = Row(
        "corrupt_checkpoint",
        "latest checkpoint's networks.safetensors truncated to half (what ENOSPC leaves) and a "
        "newer 0-byte partial checkpoint dir, then the run is re-submitted",
    )
    name = f"cc-{uuid.uuid4().hex[:6]}"
    common = ["train.checkpoint_every=10", "storage.max_failures=2",
              f"storage.path={lab.state}/ckpt", f"storage.name={name}"]  # fmt: skip
    first = start_job(lab, [*common, "train.max_steps=20"])
    rc1 = finish(first)
    run_dir = lab.state / "ckpt" / name
    by_step = {
        int(json.loads((d / ckpt.META_FILE).read_text())["step"]): d
        for d in sorted(run_dir.glob("checkpoint_*"))
        if (d / ckpt.META_FILE).exists()
    }
    latest = by_step[max(by_step)]
    net = latest / ckpt.NETWORKS_FILE
    net.write_bytes(net.read_bytes()[: net.stat().st_size // 2])
    partial = run_dir / "checkpoint_2999-01-01_00-00-00.000000"
    partial.mkdir()
    (partial / ckpt.NETWORKS_FILE).write_bytes(b"")
    t0 = time.monotonic()
    second = start_job(lab, [*common, "train.max_steps=30"])
    rc2 = finish(second)
    res = second.result() or {}
    resumed = [int(m.group(1)) for _, ln in second.lines if (m := RESUME_RE.search(ln))]
    warned = any("intact" in ln.lower() for _, ln in second.lines)
    row.numbers = {
        "checkpoints_before": sorted(by_step),
        "resumed_from_step": resumed[0] if resumed else None,
        "warned": warned,
        "attempts_failed": sum("Traceback" in ln for _, ln in second.lines),
        "final_step": res.get("step"),
        "s_rerun": round(time.monotonic() - t0, 1),
    }
    row.ok = (
        rc1 == 0 and rc2 == 0 and res.get("step") == 30 and bool(resumed)
        and resumed[0] == sorted(by_step)[-2]
    )  # fmt: skip
    row.outcome = (
        f"resumed from the intact step-{resumed[0]} checkpoint with a warning and finished"
        if row.ok
        else f"rc {rc1}/{rc2}, resumed {resumed}: {res.get('error')}"
    )
    return row


def drill_plan_too_big(lab: Lab) -> Row:
    row = Row(
        "plan_too_big",
        "4 training workers × 1 CPU on the 4-CPU head, data through Ray Data (its tasks need "
        "CPUs too)",
    )
    t0 = time.monotonic()
    run = start_job(
        lab,
        ["scaling.num_workers=4", "scaling.cpus_per_worker=1", "train.max_steps=4",
         "train.loader=ray_data",
         f"storage.path={lab.state}/ckpt", f"storage.name=pb-{uuid.uuid4().hex[:6]}"],
    )  # fmt: skip
    rc = finish(run, timeout=300)
    dt = time.monotonic() - t0
    err = next((ln for _, ln in run.lines if "config error" in ln), "")
    row.numbers = {
        "exit_code": rc,
        "s_to_refusal": round(dt, 1),
        "steps_run": len(run.steps()),
        "names_fields": all(f in err for f in ("scaling.num_workers", "data.")),
    }
    row.ok = rc == 2 and not run.steps() and row.numbers["names_fields"]
    row.outcome = (
        "refused before launch: " + err.split("config error:", 1)[-1].strip()[:160]
        if row.ok
        else f"rc {rc}, {len(run.steps())} steps: {err or run.text()[-300:]}"
    )
    return row


def drill_silent_s3(lab: Lab, deadline_s: float = 10.0) -> Row:
    row = Row(
        "silent_s3",
        f"storage.path on an S3 endpoint that accepts connections and never answers "
        f"(storage.check_timeout_s = {deadline_s:g})",
    )
    sock, port = _silent_listener()
    try:
        env = lab.env({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        t0 = time.monotonic()
        run = start_job(
            lab,
            ["train.max_steps=2", "storage.path=s3://drill-bucket/runs", "storage.name=silent",
             f"storage.check_timeout_s={deadline_s}"],
            env=env,
        )  # fmt: skip
        rc = finish(run, timeout=600)
        dt = time.monotonic() - t0
    finally:
        sock.close()
    err = next((ln for _, ln in run.lines if "config error" in ln), "")
    row.numbers = {"exit_code": rc, "s_to_error": round(dt, 1), "deadline_s": deadline_s}
    row.ok = rc == 2 and "storage.path" in err and "unreachable" in err
    row.outcome = (
        "refused before launch, naming storage.path and the unreachable endpoint"
        if row.ok
        else f"rc {rc}: {err or run.text()[-300:]}"
    )
    return row


DRILLS: dict[str, Callable[[Lab], Row]] = {
    "worker_kill": drill_worker_kill,
    "driver_kill": drill_driver_kill,
    "mlflow_outage": drill_mlflow_outage,
    "bad_inputs": drill_bad_inputs,
    "secret_leak": drill_secret_leak,
    "corrupt_checkpoint": drill_corrupt_checkpoint,
    "plan_too_big": drill_plan_too_big,
    "silent_s3": drill_silent_s3,
}


# ------------------------------------------------------------------ lab and report


def _silent_listener() -> tuple[socket.socket, int]:
    """A TCP socket on 127.0.0.1 that accepts connections and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s, int(s.getsockname()[1])


def open_lab(state: Path) -> Lab:
    from mdir.data.synth import synthesize

    s3 = start_s3(state / "s3")
    mlflow = start_mlflow(state / "mlflow", reuse_foreign=False)
    head = start_ray_head(state / "ray", num_cpus=4, env=s3.env)
    data = str(state / "data")
    synthesize(data, conditions=["day", "night"], size=32, places=4, poses_per_place=4, seed=0)
    return Lab(state=state, head=head, mlflow=mlflow, s3=s3, data=data)


def markdown(rows: list[Row], machine: str) -> str:
    out = [
        "# Reliability drills",
        "",
        f"`make drills` ({time.strftime('%Y-%m-%d')}, {machine}): tiny CycleGAN, 2 Ray Train "
        "workers, local Ray head with token auth, MLflow (SQLite), moto S3.",
        "",
        "| drill | fault | what happens | measured | ok |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        nums = ", ".join(f"{k} = {v}" for k, v in r.numbers.items())
        out.append(
            f"| {r.drill} | {r.fault} | {r.outcome} | {nums} | {'yes' if r.ok else '**no**'} |"
        )
    return "\n".join(out) + "\n"


@app.command()
def main(
    only: list[str] = typer.Option(None, help=f"Run only these drills: {', '.join(DRILLS)}."),
    out: Path = typer.Option(
        ROOT / "docs" / "reliability.md", help="Markdown table (JSON beside)."
    ),
    keep: bool = typer.Option(False, help="Keep the services' state dir (logs) afterwards."),
) -> None:
    """Run the fault drills and write the reliability table."""
    names = list(only or DRILLS)
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        raise typer.BadParameter(f"unknown drill(s) {unknown}; valid: {', '.join(DRILLS)}")
    runtime.pin_interpreter()
    state = Path(tempfile.mkdtemp(prefix="mdd", dir="/tmp"))
    print(f"[drills] services and logs in {state}", flush=True)
    lab = open_lab(state)
    rows: list[Row] = []
    try:
        for n in names:
            print(f"[drills] {n} ...", flush=True)
            t0 = time.monotonic()
            try:
                row = DRILLS[n](lab)
            except Exception as e:  # a drill that breaks is a finding, not a crash
                row = Row(n, "", outcome=f"drill raised {type(e).__name__}: {e}", ok=False)
            row.seconds = round(time.monotonic() - t0, 1)
            rows.append(row)
            print(f"[drills] {n}: {'ok' if row.ok else 'FAILED'} {row.numbers}", flush=True)
    finally:
        for svc in (lab.head, lab.mlflow, lab.s3):
            with contextlib.suppress(Exception):
                svc.stop()
    machine = f"{os.cpu_count()} cores"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, machine))
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(markdown(rows, machine))
    if not keep:
        import shutil

        shutil.rmtree(state, ignore_errors=True)
    raise typer.Exit(0 if all(r.ok for r in rows) else 1)


if __name__ == "__main__":
    app()
