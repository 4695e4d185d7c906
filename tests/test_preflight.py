"""Pre-launch checks and run-time guards (issue 19 items 3, 4, 7b-d, 8): the resource plan,
stalled pipelines, bounded storage checks, shape limits, relative paths, MDUIT's warnings,
torch-free config validation, single tracking warnings and replayed MLflow steps."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mdir.config import ConfigError
from mdir.training import preflight
from mdir.training.config import load_job_config

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "jobs" / "configs" / "test_tiny.yaml")
DEMO = str(ROOT / "jobs" / "configs" / "mduit_demo.yaml")


def _cfg(path: str = TINY, *overrides: str, method: str | None = None):
    return load_job_config(path, list(overrides), method=method)


# ------------------------------------------------------------------------- resource plan


def test_plan_counts_training_data_and_evaluation_cpus():
    cfg = _cfg(TINY, "method.name=cyclegan", "scaling.num_workers=3", "scaling.cpus_per_worker=1",
               "data.parallelism=2", "data.task_cpus=0.25", "train.evaluate=true",
               "eval.num_workers=2")  # fmt: skip
    p = preflight.resource_plan(cfg)
    # unpaired = two Ray Data streams (A and B), each `parallelism` tasks of `task_cpus`
    assert (p.train_cpus, p.data_cpus, p.eval_cpus) == (3.0, 2 * 2 * 0.25, 2.0)
    assert p.cpus == 3 + 1 + 2
    single = preflight.resource_plan(_cfg(DEMO, "data.parallelism=3"))
    assert single.streams == 1 and single.data_cpus == 3 * 0.5
    memory = preflight.resource_plan(_cfg(TINY, "method.name=cyclegan", "train.loader=memory"))
    assert memory.data_cpus == 0.0


def test_four_workers_on_the_demo_head_are_rejected_naming_the_fields():
    """The drill: 4 workers of 1 CPU on the demo's 4-CPU head leave no CPU for Ray Data;
    the workers-only count (4 ≤ 4) passed and the run waited forever at step 0."""
    head = {"CPU": 4.0}
    cfg = _cfg(DEMO, "scaling.num_workers=4", "scaling.cpus_per_worker=1")
    assert cfg.scaling.num_workers * cfg.scaling.cpus_per_worker <= head["CPU"]
    with pytest.raises(ConfigError) as e:
        preflight.check_plan(cfg, head)
    msg = str(e.value)
    for field in (
        "scaling.num_workers",
        "scaling.cpus_per_worker",
        "data.parallelism",
        "data.task_cpus",
    ):
        assert field in msg
    assert "4.5 CPUs" in msg and "has 4" in msg
    # the shipped demo plan (2 × 0.5 + 0.5) fits, and so does the test config on the test head
    assert preflight.check_plan(_cfg(DEMO), head).cpus == 1.5
    assert preflight.check_plan(_cfg(TINY, "method.name=cyclegan"), head).cpus == 2.0
    with pytest.raises(ConfigError, match=r"scaling\.use_gpu"):
        preflight.check_plan(_cfg(DEMO, "scaling.use_gpu=true"), head)


# --------------------------------------------------------------------------- stalls


def test_stalled_pipeline_raises_within_the_timeout_naming_resources():
    from mdir.training.watchdog import DataStallError, stall_message, watch_batches

    release = threading.Event()

    def pipeline():
        yield 1
        release.wait(30)  # a starved data task: never delivers in time
        yield 2

    cfg = _cfg(TINY, "method.name=cyclegan", "train.stall_timeout_s=0.5")
    got = []
    t0 = time.monotonic()
    with pytest.raises(DataStallError) as e:
        for b in watch_batches(
            pipeline(), cfg.train.stall_timeout_s, lambda w: stall_message(cfg, w)
        ):
            got.append(b)
    elapsed = time.monotonic() - t0
    release.set()
    assert got == [1] and 0.5 <= elapsed < 3.0
    msg = str(e.value)
    assert "train.stall_timeout_s=0.5" in msg and "no training batch for" in msg
    assert "scaling.num_workers" in msg and "data.task_cpus" in msg
    # a healthy pipeline passes through unchanged, errors keep their type, 0 = unwatched
    assert list(watch_batches(iter(range(5)), 1.0, str)) == [0, 1, 2, 3, 4]

    def broken():
        yield 0
        raise KeyError("bad row")

    with pytest.raises(KeyError, match="bad row"):
        list(watch_batches(broken(), 1.0, str))
    assert list(watch_batches(iter("ab"), 0, str)) == ["a", "b"]


# ----------------------------------------------------------------- bounded storage checks


@pytest.fixture
def silent_endpoint(monkeypatch):
    """An S3 endpoint on 127.0.0.1 that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.getsockname()[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


def test_silent_s3_endpoint_is_reported_within_the_deadline(silent_endpoint, tmp_path):
    from mdir.training.run import validate_before_launch

    cfg = _cfg(TINY, "method.name=cyclegan", "storage.path=s3://runs-bucket/x",
               "storage.check_timeout_s=2", "data.uri=s3://data-bucket/d")  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        validate_before_launch(cfg, check_cluster=False)
    elapsed = time.monotonic() - t0
    assert elapsed < 2 + 3  # the deadline plus thread start-up, not minutes
    msg = str(e.value)
    assert msg.startswith("data.uri:") and f"127.0.0.1:{silent_endpoint}" in msg
    assert "no answer" in msg and "within 2 s" in msg
    # with short botocore limits the same endpoint is named unreachable (not "missing bucket")
    os.environ["MDIR_S3_READ_TIMEOUT_S"] = "0.3"
    os.environ["MDIR_S3_ATTEMPTS"] = "1"
    try:
        from mdir.data import io

        with pytest.raises(io.DataPathError, match="is unreachable") as e2:
            io.check_reachable("s3://other-bucket/x", must_exist=False, timeout_s=20)
        assert "does not exist" not in str(e2.value)
    finally:
        del os.environ["MDIR_S3_READ_TIMEOUT_S"], os.environ["MDIR_S3_ATTEMPTS"]


def test_missing_bucket_is_told_from_an_unreachable_endpoint(s3_server):
    from mdir.data import io

    s3_server.bucket("mdir-preflight-present")
    with pytest.raises(io.DataPathError) as e:
        io.check_reachable("s3://mdir-preflight-absent/d", must_exist=False, timeout_s=20)
    assert "does not exist" in str(e.value) and "answered" in str(e.value)
    assert "unreachable" not in str(e.value)
    io.check_reachable("s3://mdir-preflight-present/d", must_exist=False, timeout_s=20)


def test_s3_limits_reach_botocore(monkeypatch):
    from mdir.data import io

    monkeypatch.setenv("MDIR_S3_CONNECT_TIMEOUT_S", "3")
    monkeypatch.setenv("MDIR_S3_ATTEMPTS", "2")
    kw = io._s3_kwargs()
    assert kw["config_kwargs"]["connect_timeout"] == 3.0
    assert kw["config_kwargs"]["retries"] == {"max_attempts": 2, "mode": "standard"}
    monkeypatch.setenv("MDIR_S3_ATTEMPTS", "many")
    with pytest.raises(io.DataPathError, match="MDIR_S3_ATTEMPTS"):
        io.s3_limits()


# ------------------------------------------------------------------------------ shapes


def test_pix2pix_image_size_vs_downsamplings_fails_before_launch(tmp_path):
    from mdir.training.run import validate_before_launch

    cfg = _cfg(TINY, "method.name=pix2pix", "data.mode=paired", "data.image_size=64",
               f"storage.path={tmp_path}")  # fmt: skip
    assert cfg.method.num_downs == 8
    with pytest.raises(ConfigError) as e:
        validate_before_launch(cfg, check_data=False, check_cluster=False)
    msg = str(e.value)
    assert msg.startswith("data.image_size:") and "method.num_downs" in msg
    assert "method.num_downs=6" in msg  # 64 = 2**6: the largest U-Net that fits
    ok = _cfg(TINY, "method.name=pix2pix", "data.mode=paired", "data.image_size=64",
              "method.num_downs=6", f"storage.path={tmp_path}")  # fmt: skip
    validate_before_launch(ok, check_data=False, check_cluster=False)
    with pytest.raises(ConfigError, match=r"data\.image_size: 30 px is not divisible by 4"):
        preflight.check_shapes(_cfg(TINY, "method.name=cyclegan", "data.image_size=30"))
    with pytest.raises(ConfigError, match=r"method\.n_layers_d=4"):
        preflight.check_shapes(_cfg(TINY, "method.name=cyclegan", "method.n_layers_d=4"))


def test_shape_rule_matches_the_networks():
    """The pre-launch rule agrees with what the U-Net / PatchGAN accept."""
    import torch

    from mdir.models.patchgan import PatchDiscriminator
    from mdir.models.unet import UnetGenerator

    for size, downs in ((64, 6), (64, 7), (96, 5), (96, 6)):
        cfg = _cfg(TINY, "method.name=pix2pix", "data.mode=paired", f"data.image_size={size}",
                   f"method.num_downs={downs}", "method.ngf=2", "method.n_layers_d=2")  # fmt: skip
        try:
            preflight.check_shapes(cfg)
            allowed = True
        except ConfigError:
            allowed = False
        g = UnetGenerator(num_downs=downs, ngf=2).eval()
        try:
            g(torch.zeros(1, 3, size, size))
            runs = True
        except (ValueError, RuntimeError):
            runs = False
        assert allowed == runs, (size, downs)
    for size, layers in ((24, 3), (23, 3), (16, 2), (11, 2)):
        d = PatchDiscriminator(3, 4, layers, "instance")
        try:
            runs = d(torch.zeros(1, 3, size, size)).numel() > 0
        except (RuntimeError, ValueError):  # empty map / instance norm over 1 px
            runs = False
        assert (size // 2**layers >= 3) == runs, (size, layers)


# ------------------------------------------------------------------------- local paths


def test_relative_data_uri_resolves_against_the_submitting_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(TINY, "method.name=cyclegan", "data.uri=demo_out/synth", "storage.path=runs")
    assert cfg.data.uri == str(tmp_path / "demo_out" / "synth")
    assert cfg.storage.path == str(tmp_path / "runs")
    kept = _cfg(TINY, "method.name=cyclegan", "data.uri=s3://b/d", "storage.path=s3://b/r")
    assert (kept.data.uri, kept.storage.path) == ("s3://b/d", "s3://b/r")


def test_retrieval_demo_command_resolves_relative_data_uri(tmp_path, monkeypatch):
    from mdir.retrieval.config import load_retrieval_config

    monkeypatch.chdir(tmp_path)
    cfg = load_retrieval_config(ROOT / "jobs" / "configs" / "retrieval_demo.yaml")
    assert cfg.data.uri == str(tmp_path / "demo_out" / "synth")


# ------------------------------------------------------------------------------- MDUIT


def test_mduit_without_poses_or_places_warns_and_random_vgg_needs_the_flag(tmp_path, monkeypatch):
    from PIL import Image

    from mdir.data.ingest import ingest
    from mdir.data.synth import synthesize

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached VGG-16 here
    monkeypatch.delenv("MDIR_VGG16_WEIGHTS", raising=False)
    src = tmp_path / "src"
    for cond in ("day", "night"):
        (src / cond).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(src / cond / f"{i}.png")
    ingest(str(src), str(tmp_path / "plain"), "folders", workers=1)
    synthesize(
        str(tmp_path / "posed"), places=2, conditions=["day", "night"], size=16, poses_per_place=2
    )

    plain = _cfg(
        DEMO, f"data.uri={tmp_path / 'plain'}", f"data.train_split={_split(tmp_path / 'plain')}"
    )
    warnings = preflight.mduit_warnings(plain)
    assert any("RANDOM VGG-16" in w for w in warnings)
    assert any("no poses and no place ids" in w and "loss/con_c" in w for w in warnings)
    posed = _cfg(DEMO, f"data.uri={tmp_path / 'posed'}")
    assert not any("no poses" in w for w in preflight.mduit_warnings(posed))
    # outside tests and demos a random VGG is refused before launch, naming the field
    with pytest.raises(ConfigError, match=r"method\.vgg_weights: no VGG-16 weights"):
        preflight.check_vgg_weights(_cfg(DEMO, "method.allow_random_vgg=false"))
    with pytest.raises(ConfigError, match=r"method\.vgg_weights: .* does not exist"):
        preflight.check_vgg_weights(_cfg(DEMO, f"method.vgg_weights={tmp_path / 'nope.pth'}"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / preflight.VGG16_CACHED_FILE).write_bytes(b"x")
    preflight.check_vgg_weights(_cfg(DEMO, "method.allow_random_vgg=false"))
    assert not any("RANDOM" in w for w in preflight.mduit_warnings(posed))


def _split(uri: Path) -> str:
    from mdir.data.manifest import read_manifest

    return read_manifest(str(uri)).splits[0]


# ------------------------------------------------------------------------- item 8 parts


def test_validating_a_config_does_not_import_torch(tmp_path):
    """`mdir train ... --dry-run` runs every check that needs no cluster, prints the plan,
    and never imports torch (or Ray): a typo costs seconds, not a torch import."""
    import json

    from mdir.data.synth import synthesize

    synthesize(
        str(tmp_path / "d"), places=2, conditions=["day", "night"], size=16, poses_per_place=1
    )
    args = ["train", "cyclegan", "--config", TINY, f"data.uri={tmp_path / 'd'}",
            f"storage.path={tmp_path / 'runs'}", "--dry-run"]  # fmt: skip
    code = (
        "import sys\n"
        "from mdir.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "bad = [m for m in ('torch', 'torchvision', 'ray') if m in sys.modules]\n"
        "print('imported', bad, 'rc', rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "imported [] rc 0", r.stdout + r.stderr[-2000:]
    plan = json.loads(lines[-2])
    assert plan["valid"] and plan["resources"]["cpus"] == 2 * 0.5 + 2 * 1 * 0.5
    # a bad field still fails the dry run with exit 2, naming it
    bad = subprocess.run(
        [sys.executable, "-m", "mdir.cli", *args, "train.epoch=3"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "train.epoch: unknown key" in bad.stderr


def test_tracking_warning_printed_once():
    code = (
        "import logging\n"
        "from mdir.training.loop import _setup_logging\n"
        "_setup_logging()\n"
        "logging.getLogger('mdir.training.tracking').warning('MLflow unreachable SENTINEL')\n"
        "logging.getLogger('mdir.training').warning('loop SENTINEL')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert out.count("MLflow unreachable SENTINEL") == 1, out
    assert out.count("loop SENTINEL") == 1, out


def test_methods_registry_is_lazy_and_data_modes_agree():
    from mdir.methods import METHODS
    from mdir.methods.specs import METHOD_CONFIGS

    for name, cfg_cls in METHOD_CONFIGS.items():
        assert METHODS[name].data_mode == cfg_cls.data_mode


@pytest.mark.slow
def test_continued_run_logs_replayed_steps_once(mlflow_server):
    """A worker group restarted from a checkpoint replays steps 7-10 into the same run:
    those points must not be logged a second time; later steps must."""
    from mlflow.tracking import MlflowClient

    from mdir.training.tracking import Tracker

    first = Tracker(mlflow_server.uri, "mdir-tests-replay", run_name="replay")
    for s in range(1, 11):
        first.log_metrics({"loss/g": float(s), "epoch": 0.0}, s)
    first.log_metrics({"eval/fid": 50.0}, 5)
    first.close(flush_timeout=30)
    assert first.run_id is not None
    again = Tracker(mlflow_server.uri, "mdir-tests-replay", run_id=first.run_id)
    for s in range(7, 16):  # resumed from the checkpoint at step 6
        again.log_metrics({"loss/g": float(100 + s), "epoch": 0.0}, s)
    again.log_metrics({"eval/fid": 40.0}, 10)  # a key whose last point was at step 5
    again.close(flush_timeout=30)
    c = MlflowClient(mlflow_server.uri)
    hist = c.get_metric_history(first.run_id, "loss/g")
    steps = sorted(m.step for m in hist)
    assert steps == list(range(1, 16))  # each step once
    by_step = {m.step: m.value for m in hist}
    assert by_step[10] == 10.0 and by_step[11] == 111.0  # first attempt kept, new steps added
    assert sorted(m.step for m in c.get_metric_history(first.run_id, "eval/fid")) == [5, 10]
    assert again.replayed == 2 * 4  # loss/g and epoch at steps 7-10


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_plan_rejected_before_launch_and_stall_reported_on_the_cluster(ray_cluster, tmp_path):
    """On the real 4-CPU head: a plan whose workers hold every CPU is refused before any
    worker starts; forced past validation, the starved Ray Data pipeline fails the run
    with the resources named, after train.stall_timeout_s instead of never."""
    from mdir.data.synth import synthesize
    from mdir.training.run import train

    data = tmp_path / "d"
    synthesize(str(data), places=2, conditions=["day", "night"], size=32, poses_per_place=2)
    cfg = _cfg(TINY, "method.name=cyclegan", "method.ngf=4", "method.ndf=4", "method.n_blocks=1",
               f"data.uri={data}", f"storage.path={tmp_path / 'runs'}", "storage.name=stall",
               "scaling.num_workers=2", "scaling.cpus_per_worker=2", "train.stall_timeout_s=10",
               "mlflow.enabled=false", "train.max_steps=4")  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"scaling\.num_workers, scaling\.cpus_per_worker, data\.parallelism"
    ):
        train(cfg)
    assert time.monotonic() - t0 < 60
    t0 = time.monotonic()
    try:
        err = train(cfg, validate=False).error
    except Exception as e:  # Ray Train may raise instead of returning the error
        err = f"{type(e).__name__}: {e}"
    elapsed = time.monotonic() - t0
    assert err is not None and "no training batch for" in err, err
    assert "scaling.num_workers" in err and "data.task_cpus" in err
    assert "the cluster has 4 CPUs" in err
    # a local data.uri must be visible where the workers run (one probe task per node)
    from mdir.training.run import check_visible_on_cluster

    check_visible_on_cluster(str(data), "data.uri")
    with pytest.raises(ConfigError, match=r"data\.uri: .* not visible on the cluster node"):
        check_visible_on_cluster(str(tmp_path / "elsewhere"), "data.uri")
    print(f"stall reported after {elapsed:.0f} s (timeout 10 s + worker start-up)")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_worker_kill_replayed_steps_logged_once(ray_cluster, mlflow_server, tmp_path):
    """Rank 1 dies hard at step 7; the group restarts from the step-4 checkpoint and replays
    steps 5-7 into the same MLflow run: every step appears once in the metric history."""
    import ray.cloudpickle
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, os.path.dirname(__file__))
    import preflight_fakes
    import training_fakes

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    ray.cloudpickle.register_pickle_by_value(preflight_fakes)
    cfg = _cfg(TINY, "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={tmp_path / 'runs'}",
               "storage.name=replay-kill", "storage.max_failures=1", "train.checkpoint_every=4",
               "train.log_every=1", "train.max_steps=0", "train.epochs=1", "mlflow.register=false",
               f"mlflow.tracking_uri={mlflow_server.uri}", "mlflow.experiment=mdir-tests-replay-kill")  # fmt: skip
    marker = tmp_path / "died"
    r = train(
        cfg,
        plan=preflight_fakes.SlowPlan(steps_per_epoch=9, delay_s=1.0),
        method_factory=training_fakes.FakeFactory(die_at_step=7, marker=str(marker)),
        validate=False,
    )
    assert r.error is None, r.error
    assert marker.exists() and r.metrics["resumed_from_step"] == 4 and r.metrics["step"] == 9
    c = MlflowClient(mlflow_server.uri)
    exp = c.get_experiment_by_name("mdir-tests-replay-kill")
    runs = c.search_runs([exp.experiment_id])
    assert [x.info.run_id for x in runs] == [r.mlflow_run_id]  # one run, continued
    for key in ("epoch", *[k for k in runs[0].data.metrics if k.startswith("loss/")]):
        steps = sorted(m.step for m in c.get_metric_history(r.mlflow_run_id, key))
        assert steps == list(range(1, 10)), (key, steps)
