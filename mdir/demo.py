"""`make demo`: local Ray + MLflow, synthetic data, a tiny MDUIT job, and where to look.

    python -m mdir.demo up         # services (reused if running) → data → MDUIT job → results
    python -m mdir.demo status     # what the demo started and whether it is up
    python -m mdir.demo tune       # after `up`: tiny Tune sweep → leaderboard + champion
    python -m mdir.demo retrieval  # after `up`: retrieval with vs without GAN augmentation
    python -m mdir.demo down       # stop exactly what `up` started (by pid / process group)

State (pids, ports, token, logs, MLflow DB and artifacts) lives in ``.mdir/demo/`` of the
repository (``--state-dir`` / ``MDIR_DEMO_STATE``); data and run outputs in ``demo_out/``.
The services come from :mod:`mdir.dev`: a Ray head with token auth on 127.0.0.1 and an
MLflow server (SQLite + local artifacts) on ``MDIR_MLFLOW_PORT`` (default 5000). An MLflow
server that already answers on that port is used but never stopped by ``down``.

Each job is submitted through Ray's Jobs SDK (``JobSubmissionClient`` with the head's token
header, `mdir.dev.jobs`) with the repository as working dir (``.venv``, ``.git``, ``.mdir``,
``demo_out``... excluded from the upload) and env_vars carrying MLFLOW_* / AWS_* /
MDIR_DEMO_DATA; the head runs job drivers with the venv's Python, and their output is
streamed back (``tail_job_logs``). The jobs print a final result line (``MDIR_RESULT {...}``
for training, a JSON line for tune/retrieval) that the demo reads to show the model URI and
the sample grid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import typer

from mdir.dev.control import service_from_state, stop_from_state
from mdir.dev.jobs import submit_and_follow
from mdir.dev.mlflow_server import MLflowServer, start_mlflow
from mdir.dev.procs import ServiceError
from mdir.dev.ray_head import RayHead, start_ray_head
from mdir.dev.service import load_state
from mdir.runtime import forward_env, mlflow_client_env

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The local demo: Ray head + MLflow on 127.0.0.1, synthetic data, tiny jobs.",
)

#: Paths never uploaded with ``--working-dir`` (Ray also honours .gitignore).
UPLOAD_EXCLUDES = [
    ".venv",
    ".git",
    ".mdir",
    "demo_out",
    "bench_out",
    "runs",
    "tune_results",
    "mlruns",
    "mlartifacts",
    ".pytest_cache",
    ".ruff_cache",
    "__pycache__",
    "*.pyc",
]

#: What `up --method M` submits: (job file, config). CycleGAN is the default because it
#: translates visibly within the demo's ~8 minutes on 2 cores; MDUIT does not yet (README).
DEMO_JOBS: dict[str, tuple[str, str]] = {
    "cyclegan": ("jobs/cyclegan.py", "jobs/configs/cyclegan_demo.yaml"),
    "mduit": ("jobs/mduit.py", "jobs/configs/mduit_demo.yaml"),
}
TUNE_JOB = "jobs/tune.py"
TUNE_SPACE = "tune_spaces/demo.yaml"
RETRIEVAL_JOB = "jobs/retrieval.py"
RETRIEVAL_CONFIG = "jobs/configs/retrieval_demo.yaml"

#: Synthetic demo dataset: 64 px, 64 places x 5 poses x 5 conditions (1600 images); per
#: condition 192 train, 64 val and 64 test images (one pose per place in val and test).
SYNTH_ARGS: dict[str, Any] = {"places": 64, "size": 64, "seed": 0, "poses_per_place": 5}


# ------------------------------------------------------------------ small helpers


def _say(msg: str) -> None:
    print(msg, flush=True)


def _step(i: int, n: int, msg: str) -> None:
    _say(f"\n[{i}/{n}] {msg}")


def _repo_root() -> Path:
    """The checkout: the current dir when it holds the project, else the package's parent."""
    cwd = Path.cwd()
    if (cwd / "pyproject.toml").exists() and (cwd / "mdir").is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent


def _state_dir(state_dir: Path | None, root: Path) -> Path:
    if state_dir is not None:
        return state_dir.absolute()
    env = os.environ.get("MDIR_DEMO_STATE")
    return Path(env).absolute() if env else root / ".mdir" / "demo"


def _out_dir(out: Path | None, root: Path) -> Path:
    return out.absolute() if out is not None else root / "demo_out"


def _mlflow_port(port: int | None) -> int:
    if port is not None:
        return port
    return int(os.environ.get("MDIR_MLFLOW_PORT", "5000"))


def _timed(fn, *a, **kw):
    t0 = time.monotonic()
    out = fn(*a, **kw)
    return out, time.monotonic() - t0


# ------------------------------------------------------------------ services


def ensure_services(state: Path, mlflow_port: int) -> tuple[RayHead, MLflowServer]:
    """Start (or reuse) MLflow and the Ray head side by side; returns both handles."""
    uri = f"http://127.0.0.1:{mlflow_port}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(_timed, start_mlflow, state, mlflow_port)
        # workers inherit the head's env: point them at MLflow with bounded retries
        head_env = {"MLFLOW_TRACKING_URI": uri, **mlflow_client_env()}
        head, dt = _timed(start_ray_head, state, num_cpus=4, env=head_env)
        _say(f"  Ray head     {head.dashboard_url}  (GCS {head.address}, token auth)  [{dt:.0f} s]")
        mlflow, dt = fut.result()
    who = "reused, not ours" if not mlflow.owned else f"{dt:.0f} s"
    _say(f"  MLflow       {mlflow.uri}  [{who}]")
    return head, mlflow


def _job_env(mlflow: MLflowServer | None, data_uri: str | None) -> dict[str, str]:
    extra: dict[str, str] = {}
    if mlflow is not None:
        extra.update(mlflow.env)
    if data_uri:
        extra["MDIR_DEMO_DATA"] = data_uri
    extra.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    return forward_env(extra)


def submit_job(
    head: RayHead,
    root: Path,
    entrypoint: list[str],
    env_vars: dict[str, str],
    log_file: Path,
) -> tuple[int, str]:
    """Submit a job through Ray's Jobs SDK (`mdir.dev.jobs`), wait, and stream the driver's
    output: every line to ``log_file``, the :func:`shown_line` ones to the screen."""
    _say(f"  submitting to {head.dashboard_url} (working dir .): " + " ".join(entrypoint))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(log_file, "w") as log:

        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            lines.append(line)
            _show(_prefixed("  | ", shown_line(line)))

        rc, _ = submit_and_follow(
            head, root, entrypoint, env_vars, on_line, excludes=UPLOAD_EXCLUDES
        )
    return rc, "".join(lines)


def _show(text: str | None) -> None:
    if text is not None:
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()


def _prefixed(prefix: str, text: str | None) -> str | None:
    return None if text is None else prefix + text


def run_logged(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log_file: Path,
    show: Callable[[str], str | None],
) -> tuple[int, str]:
    """Run `cmd`, writing every output line to `log_file` and `show(line)` (None = log
    only) to the screen; returns the exit code and the whole output."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            _show(show(line))
        rc = proc.wait()
    return rc, "".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_PREFIX = re.compile(r"^\((\w+) pid=\d+\)\s*")
_RAY_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+")


def shown_line(line: str) -> str | None:
    """What the demo prints of a job-output line (the job log keeps every line): mdir's own
    log lines without Ray's actor prefix, the job's outcome, and anything that looks like a
    failure. None = log only (Ray's start-up, packaging, deprecation and type-hint noise)."""
    text = _ANSI.sub("", line).rstrip()
    text = _RAY_PREFIX.sub("", text)
    if " mdir" in text and any(f" {lvl} " in text for lvl in ("INFO", "WARNING", "ERROR")):
        return _RAY_STAMP.sub("", text)
    if text.startswith("MDIR_RESULT") or text.startswith("{"):
        return None  # the result is summarised at the end
    if re.search(r"Job '\S+' (succeeded|failed|stopped)", text):
        return _RAY_STAMP.sub("", text).split(" -- ", 1)[-1]
    if "Traceback" in text or re.match(r"^\w*(Error|Exception)\b", text):
        return text
    return None


def _last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that parses as a JSON object (``MDIR_RESULT`` prefix ok)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("MDIR_RESULT "):
            line = line[len("MDIR_RESULT ") :]
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# ------------------------------------------------------------------ data


def make_data(out: Path) -> tuple[str, str | None]:
    """Synthesize (or reuse) the demo dataset and inspect it: (dataset uri, grid path)."""
    from mdir.data.manifest import read_manifest
    from mdir.data.synth import synthesize

    data = out / "synth"
    try:
        manifest = read_manifest(str(data)) if (data / "manifest.json").exists() else None
    except Exception:  # noqa: BLE001 — unreadable old manifest: regenerate
        manifest = None
    wanted = {"size": SYNTH_ARGS["size"], "poses_per_place": SYNTH_ARGS["poses_per_place"]}
    if manifest is not None and (
        any(manifest.extra.get(k) != v for k, v in wanted.items())
        or f"-p{SYNTH_ARGS['places']}-" not in manifest.name
    ):
        _say(f"  {data} was made with other settings ({manifest.name}): rendering it again")
        manifest = None
    if manifest is None or manifest.rows == 0:
        args = ", ".join(f"{k}={v}" for k, v in SYNTH_ARGS.items())
        _say(f"  rendering synthetic places ({args}) → {data}")
        manifest, dt = _timed(synthesize, str(data), **SYNTH_ARGS)
        _say(f"  wrote {manifest.rows} images in {len(manifest.shards)} shard(s) [{dt:.0f} s]")
    else:
        _say(f"  reusing {data} ({manifest.rows} images)")
    counts = manifest.condition_counts()
    if counts:
        _say("  per condition: " + ", ".join(f"{c}={n}" for c, n in counts.items()))
    grid_path: str | None = None
    try:
        from PIL import Image

        from mdir.data.inspect import contact_sheet

        grid = out / "synth_grid.png"
        Image.fromarray(contact_sheet(str(data), per_condition=6)).save(grid)
        grid_path = str(grid)
        _say(f"  contact sheet (one row per condition): {grid}")
    except Exception as e:  # noqa: BLE001 — inspection is a nicety
        _say(f"  (no contact sheet: {e})")
    return str(data), grid_path


# ------------------------------------------------------------------ commands


StateOpt = typer.Option(
    None, "--state-dir", help="Where pids, ports, token, logs, MLflow DB live (default .mdir/demo)."
)
OutOpt = typer.Option(None, "--out", help="Data and run outputs (default demo_out/).")
PortOpt = typer.Option(
    None, "--mlflow-port", help="MLflow port (default $MDIR_MLFLOW_PORT or 5000)."
)


MethodOpt = typer.Option(
    "cyclegan",
    "--method",
    help="cyclegan (default: translates within the demo's ~8 min on 2 cores) or mduit "
    "(the thesis method; still a blur in that budget, see the README).",
)


@app.command()
def up(
    state_dir: Path | None = StateOpt,
    out: Path | None = OutOpt,
    mlflow_port: int | None = PortOpt,
    method: str = MethodOpt,
    skip_job: bool = typer.Option(
        False, "--skip-job", help="Start services and make the data, but submit no training job."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Override train.max_steps (shorter runs, e.g. for a smoke test)."
    ),
) -> None:
    """Start Ray + MLflow (unless running), make the data, train day→night, show results."""
    if method not in DEMO_JOBS:
        raise typer.BadParameter(f"--method must be one of {sorted(DEMO_JOBS)}, not {method!r}")
    job_file, job_config = DEMO_JOBS[method]
    root = _repo_root()
    state = _state_dir(state_dir, root)
    outd = _out_dir(out, root)
    outd.mkdir(parents=True, exist_ok=True)
    port = _mlflow_port(mlflow_port)
    n = 5
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    _step(1, n, f"services (state in {state})")
    try:
        (head, mlflow), phases["services"] = _timed(ensure_services, state, port)
    except ServiceError as e:
        _say(f"  could not start the services: {e}")
        raise typer.Exit(1) from e
    _step(2, n, "synthetic dataset")
    (data_uri, grid), phases["data"] = _timed(make_data, outd)
    result: dict[str, Any] = {
        "ray_dashboard": head.dashboard_url,
        "ray_address": head.address,
        "mlflow_ui": mlflow.uri,
        "dataset": data_uri,
        "dataset_grid": grid,
        "method": method,
        "phases_s": phases,
    }
    _step(3, n, f"{method} training job (Ray Jobs API; Ray's full output: the job log)")
    if skip_job:
        _say("  skipped (--skip-job). The dataset above is ready for it.")
        _write_result(outd, result)
        return
    run_name = time.strftime(f"demo-{method}-%Y%m%d-%H%M%S")
    entry = ["python", job_file, "--config", job_config, f"data.uri={data_uri}",
             f"storage.path={outd / 'runs'}", f"storage.name={run_name}"]  # fmt: skip
    if steps:
        entry.append(f"train.max_steps={steps}")
    log_file = outd / f"{method}_job.log"
    (rc, text), phases["training job"] = _timed(
        submit_job, head, root, entry, _job_env(mlflow, data_uri), log_file
    )
    job = _last_json(text) or {}
    grid_src = job.get("sample_grid")
    if grid_src and Path(grid_src).is_file():  # keep a copy next to the other outputs
        shutil.copyfile(grid_src, outd / "sample_grid.png")
        job["sample_grid"] = str(outd / "sample_grid.png")
        job["sample_grid_origin"] = grid_src
    result["job"] = {"rc": rc, "log": str(log_file), **job}
    if rc != 0 or job.get("error"):
        _write_result(outd, result)
        _say(f"\n  the training job failed (exit {rc}): see {log_file}")
        raise typer.Exit(1)
    _step(4, n, "did it translate? held-out test images, untranslated vs translated")
    report, phases["report"] = _timed(_held_out_report, job, data_uri, outd, mlflow)
    if report:
        result["report"] = report
    _step(5, n, f"done in {time.monotonic() - t0:.0f} s — where to look")
    result["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    _say("  phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
    _write_result(outd, result)
    _print_summary(result, head, state)


def _held_out_report(
    job: dict[str, Any], data_uri: str, outd: Path, mlflow: MLflowServer
) -> dict[str, Any] | None:
    """FID/KID + luminance + colour histograms of real day vs real night and translated day
    vs real night on the test split; a labelled grid of places; both logged to the run."""
    model_uri = job.get("model_uri")
    if not model_uri:
        _say("  no registered model (MLflow unreachable?): no report")
        return None
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow.uri)
    from PIL import Image

    from mdir.evaluation.model import report_model
    from mdir.metrics.config import EvalConfig
    from mdir.viz import labelled_grid

    cfg = EvalConfig(metrics=["fid", "kid"], split="test", allow_random_features=True,
                     batch_size=32, kid_subsets=50, kid_subset_size=32, device="cpu")  # fmt: skip
    rep, rows, info = report_model(model_uri, data_uri, cfg, ["day"], ["night"], examples=8)
    md = rep.markdown("day", "night")
    _say("\n" + "\n".join("  " + line for line in md.splitlines()))
    grid = labelled_grid(
        rows,
        ["day (source)", "translated", "night (real)"],
        row_titles=[f"place {i + 1}" for i in range(len(rows))],
        title=f"{info['method']} {model_uri}: held-out test poses, same place and pose per row",
    )
    grid_path = outd / "heldout_grid.png"
    Image.fromarray(grid).save(grid_path)
    (outd / "heldout_report.md").write_text(md + "\n")
    out = {
        **rep.as_dict(),
        "grid": str(grid_path),
        "model_uri": model_uri,
        "run_id": info["run_id"],
    }
    (outd / "heldout_report.json").write_text(json.dumps(out, indent=2, default=str))
    _say(f"  grid: {grid_path}")
    run_id = info.get("run_id")
    if run_id:
        try:
            from mlflow import MlflowClient

            c = MlflowClient(mlflow.uri)
            c.log_artifact(run_id, str(grid_path), "report")
            c.log_text(run_id, md + "\n", "report/heldout_report.md")
            for row, vals in rep.rows.items():
                for key, v in vals.items():
                    c.log_metric(run_id, f"heldout/{row}/{key}", float(v))
        except Exception as e:  # noqa: BLE001 — the files above are the result
            _say(f"  (could not log the report to MLflow: {e})")
    return out


def _write_result(outd: Path, result: dict[str, Any]) -> None:
    (outd / "demo_result.json").write_text(json.dumps(result, indent=2, default=str))


def _print_summary(result: dict[str, Any], head: RayHead, state: Path) -> None:
    job = result.get("job") or {}
    _say(f"  MLflow UI         {result['mlflow_ui']}  (experiment mdir-demo)")
    _say(f"  Ray dashboard     {head.dashboard_url}  (token: {head.token_path})")
    if job:
        _say(
            f"  registered model  {job.get('model_uri') or '(not registered: MLflow unreachable?)'}"
        )
        _say(f"  sample grid       {job.get('sample_grid') or '(none)'}")
        rep = result.get("report") or {}
        if rep.get("grid"):
            _say(f"  held-out grid     {rep['grid']}  (table: heldout_report.md)")
        metrics = job.get("metrics") or {}
        if metrics:
            shown = ", ".join(
                f"{k}={v:.4g}" for k, v in list(metrics.items())[:6] if isinstance(v, float | int)
            )
            _say(f"  metrics           {shown}")
    _say(f"  dataset           {result['dataset']}  (grid: {result.get('dataset_grid')})")
    _say(f"  summary           {Path(result['dataset']).parent / 'demo_result.json'}")
    _say(
        "\nServices keep running. Next: `make demo-tune`, `make demo-retrieval`; stop with `make demo-down`."
    )
    _say(
        "From a shell: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="
        f"{head.token_path}; ray job list --address {head.dashboard_url}"
    )


@app.command()
def down(state_dir: Path | None = StateOpt) -> None:
    """Stop exactly what `up` started (state files in --state-dir); nothing else."""
    state = _state_dir(state_dir, _repo_root())
    stopped = []
    for name in ("ray.json", "mlflow.json", "s3.json"):
        f = state / name
        data = load_state(f)
        if data and stop_from_state(f):
            stopped.append(f"{data.get('kind', name)} (pgid {data.get('pgid')})")
    if stopped:
        _say("stopped: " + ", ".join(stopped))
    else:
        _say(f"nothing to stop (no state files in {state})")


@app.command()
def status(state_dir: Path | None = StateOpt) -> None:
    """Show what the demo started and whether it answers."""
    state = _state_dir(state_dir, _repo_root())
    any_ = False
    for name in ("ray.json", "mlflow.json", "s3.json"):
        svc = service_from_state(state / name)
        if svc is None:
            continue
        any_ = True
        ok = svc.healthy()
        _say(f"{name[:-5]:7s} {'up' if ok else 'DOWN'}  {svc.url}  pids={svc.alive_pids()}")
    if not any_:
        _say(f"the demo has started nothing (no state files in {state})")


def _ensure_for_followup(
    state_dir: Path | None, out: Path | None, mlflow_port: int | None
) -> tuple[Path, Path, RayHead, MLflowServer, str]:
    root = _repo_root()
    state = _state_dir(state_dir, root)
    outd = _out_dir(out, root)
    outd.mkdir(parents=True, exist_ok=True)
    _step(1, 3, "services")
    head, mlflow = ensure_services(state, _mlflow_port(mlflow_port))
    _step(2, 3, "synthetic dataset")
    data_uri, _ = make_data(outd)
    return root, outd, head, mlflow, data_uri


@app.command()
def tune(
    state_dir: Path | None = StateOpt,
    out: Path | None = OutOpt,
    mlflow_port: int | None = PortOpt,
) -> None:
    """Run the tiny Tune sweep (tune_spaces/demo.yaml): leaderboard + champion model URI."""
    root, outd, head, mlflow, data_uri = _ensure_for_followup(state_dir, out, mlflow_port)
    _step(3, 3, "Tune sweep (Ray Jobs API)")
    entry = ["python", TUNE_JOB, "--space", TUNE_SPACE, "--storage", str(outd / "tune")]
    rc, text = submit_job(head, root, entry, _job_env(mlflow, data_uri), outd / "tune_job.log")
    res = _last_json(text) or {}
    (outd / "tune_result.json").write_text(json.dumps(res, indent=2, default=str))
    if rc != 0:
        _say(f"\nthe sweep failed (exit {rc}): see {outd / 'tune_job.log'}")
        raise typer.Exit(1)
    md = Path(res.get("path") or "", "leaderboard.md")
    if res.get("path") and md.is_file():  # the table the sweep wrote (ranked by its metric)
        _say(f"\nleaderboard ({res.get('metric')}, {res.get('mode')}):\n{md.read_text()}")
    else:
        for i, row in enumerate((res.get("leaderboard") or [])[:10], 1):
            _say(f"  {i:2d}. " + json.dumps(row, default=str)[:160])
    champ = res.get("champion_uri")
    _say(f"champion: {champ or 'none (no trial registered a generator; see the job log)'}")
    _say(f"MLflow UI: {mlflow.uri}   result: {outd / 'tune_result.json'}")


@app.command()
def retrieval(
    state_dir: Path | None = StateOpt,
    out: Path | None = OutOpt,
    mlflow_port: int | None = PortOpt,
) -> None:
    """Retrieval fine-tuning with vs without the demo's generator as augmentation."""
    root, outd, head, mlflow, data_uri = _ensure_for_followup(state_dir, out, mlflow_port)
    _step(3, 3, "retrieval comparison (Ray Jobs API)")
    entry = [
        "python",
        RETRIEVAL_JOB,
        "--compare",
        "--config",
        RETRIEVAL_CONFIG,
        "--set",
        f"data.uri={data_uri}",
        "--set",
        f"storage.path={outd / 'runs'}",
    ]
    rc, text = submit_job(head, root, entry, _job_env(mlflow, data_uri), outd / "retrieval_job.log")
    res = _last_json(text) or {}
    (outd / "retrieval_result.json").write_text(json.dumps(res, indent=2, default=str))
    if rc == 2:
        _say(
            "\nthe retrieval job refused its config (exit 2) — did `make demo` register a generator?"
        )
        raise typer.Exit(1)
    if rc != 0:
        _say(f"\nthe retrieval job failed (exit {rc}): see {outd / 'retrieval_job.log'}")
        raise typer.Exit(1)
    _say(f"\nresult: {outd / 'retrieval_result.json'}   MLflow UI: {mlflow.uri}")


#: The thesis experiment's data: other places than the generator's (seed 1), 200 of them held
#: out of retrieval training (queries + database), day and night only.
THESIS_SYNTH: dict[str, Any] = {"places": 360, "size": 64, "seed": 1, "poses_per_place": 4,
                                "conditions": ["day", "night"], "held_out_places": 200}  # fmt: skip
THESIS_CONFIG = "jobs/configs/retrieval_thesis.yaml"


@app.command()
def thesis(
    state_dir: Path | None = StateOpt,
    out: Path | None = OutOpt,
    mlflow_port: int | None = PortOpt,
    seeds: str = typer.Option("0,1,2", help="Seeds (each trains a baseline and an augmented net)."),
    generator: str = typer.Option(
        "models:/mdir-cyclegan-synth@candidate", help="Registered day→night generator to use."
    ),
) -> None:
    """After `up`: the thesis experiment — does GAN augmentation lift night retrieval?"""
    root = _repo_root()
    state = _state_dir(state_dir, root)
    outd = _out_dir(out, root)
    outd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _step(1, 3, "services")
    head, mlflow = ensure_services(state, _mlflow_port(mlflow_port))
    _step(2, 3, "held-out-places dataset (seed 1: places the generator never saw)")
    data = outd / "thesis"
    from mdir.data.manifest import read_manifest
    from mdir.data.synth import synthesize

    want = f"held_out={THESIS_SYNTH['held_out_places']}"
    m = read_manifest(str(data)) if (data / "manifest.json").exists() else None
    if m is None or want not in m.source or f"places={THESIS_SYNTH['places']}," not in m.source:
        _say(f"  rendering {THESIS_SYNTH} → {data}")
        m, dt = _timed(synthesize, str(data), **THESIS_SYNTH)
        _say(f"  wrote {m.rows} images [{dt:.0f} s]")
    _say("  splits: " + ", ".join(f"{sp}={sum(c.values())}" for sp, c in m.counts.items()))
    _step(3, 3, f"baseline vs augmented retrieval, seeds {seeds} (in this process)")
    cmd = [sys.executable, "-m", "mdir.cli", "retrieval", "compare", "--config", THESIS_CONFIG,
           "--seeds", seeds, "--local", "--out", str(outd / "thesis_compare"),
           "--set", f"data.uri={data}", "--set", f"augment.generator={generator}"]  # fmt: skip
    env = {**os.environ, **mlflow.env}
    log_file = outd / "thesis.log"
    rc, _ = run_logged(
        cmd, env, root, log_file, lambda line: None if line.startswith("{") else "  " + line
    )
    if rc != 0:
        _say(f"\nthe comparison failed (exit {rc}): see {log_file}")
        raise typer.Exit(1)
    _say(
        f"\ndone in {time.monotonic() - t0:.0f} s; table: {outd / 'thesis_compare' / 'compare.md'}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
