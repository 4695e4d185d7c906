"""Training: config fail-fast, checkpoints, the MLflow outage path, and the Ray Train loop
(DDP replicas, worker crash + resume on S3, driver-restart resume) with a fake method."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.config import ConfigError  # noqa: E402
from mdir.training import checkpoint as ckpt  # noqa: E402
from mdir.training.config import load_job_config  # noqa: E402
from mdir.training.job import parse_result_line, result_line, run_job  # noqa: E402

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


_dead_uri = training_fakes.dead_uri


# ----------------------------------------------------------------------------- no cluster


def test_config_typo_and_wrong_type_name_the_field(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_job_config(TINY, ["method.name=cyclegan", "train.epoch=3"])
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_job_config(TINY, ["method.name=cyclegan", "train.batch_size=many"])
    with pytest.raises(ConfigError, match=r"method\.(pix2pix\.)?ngff"):
        load_job_config(TINY, ["method.name=pix2pix", "method.ngff=3"])
    # the job entrypoint exits with 2 before any Ray / worker start, naming the field
    rc = run_job("cyclegan", TINY, ["scaling.num_worker=2"])
    assert rc == 2
    assert "scaling.num_worker: unknown key" in capsys.readouterr().err
    # a missing dataset fails in validation, naming data.uri
    rc = run_job(
        "cyclegan", TINY, [f"data.uri={tmp_path / 'nope'}", f"storage.path={tmp_path / 'runs'}"]
    )
    assert rc == 2
    assert "data.uri" in capsys.readouterr().err


def test_global_batch_must_divide_by_workers_before_launch(capsys):
    """train.global_batch_size is the papers' batch; it must split evenly over the workers,
    and a per-worker train.batch_size that disagrees with it is an error, not a silent pick."""
    cfg = load_job_config(
        TINY, ["method.name=cyclegan", "train.global_batch_size=6", "train.batch_size=3"]
    )
    assert (cfg.train.global_batch_size, cfg.train.batch_size, cfg.scaling.num_workers) == (6, 3, 2)
    legacy = load_job_config(TINY, ["method.name=cyclegan"])  # batch_size alone: per worker
    assert (legacy.train.batch_size, legacy.train.global_batch_size) == (2, 4)
    with pytest.raises(ConfigError, match=r"train\.global_batch_size: 5 images per step cannot"):
        load_job_config(TINY, ["method.name=cyclegan", "train.global_batch_size=5"])
    with pytest.raises(ConfigError, match=r"train\.global_batch_size: 8 over 2 workers is 4"):
        load_job_config(
            TINY, ["method.name=cyclegan", "train.global_batch_size=8", "train.batch_size=2"]
        )
    # the job entrypoint exits 2 before Ray starts, naming the field
    rc = run_job("cyclegan", TINY, ["train.global_batch_size=5", "scaling.num_workers=4"])
    assert rc == 2 and "train.global_batch_size" in capsys.readouterr().err


def test_method_must_match_job(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: {name: pix2pix}\ndata: {uri: /x}\n")
    with pytest.raises(ConfigError, match="method.name"):
        load_job_config(cfg_file, [], method="mduit")


def test_missing_validation_split_fails_before_launch_when_evaluating(tmp_path):
    from mdir.data.synth import synthesize
    from mdir.training.run import validate_before_launch

    data = tmp_path / "d"
    synthesize(str(data), places=2, conditions=["day", "night"], size=16, poses_per_place=1)
    base = ["method.name=cyclegan", f"data.uri={data}", f"storage.path={tmp_path / 'runs'}"]
    bad = [*base, "data.val_split=holdout", "train.evaluate=true"]
    with pytest.raises(ConfigError, match=r"data\.val_split: split 'holdout'"):
        validate_before_launch(load_job_config(TINY, bad), check_cluster=False)
    # without evaluation the validation split is not needed
    validate_before_launch(
        load_job_config(TINY, [*base, "data.val_split=holdout"]), check_cluster=False
    )


def test_resume_position_at_and_inside_epochs():
    from mdir.training.loop import resume_position

    # mid-epoch: continue the same epoch where it stopped, the LR step is still to come
    assert resume_position(epoch=2, step_in_epoch=3, steps_per_epoch=5) == (2, 3, False)
    # after the epoch's last step: next epoch from its start, and the LR step is owed
    assert resume_position(epoch=2, step_in_epoch=5, steps_per_epoch=5) == (3, 0, True)
    assert resume_position(epoch=0, step_in_epoch=0, steps_per_epoch=5) == (0, 0, False)


def test_checkpoint_roundtrip_weights_only(tmp_path):
    torch.manual_seed(0)
    m = training_fakes.FakeMethod(None, torch.device("cpu"))
    opts = m.configure_optimizers()
    sch = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.5**e) for k, o in opts.items()}
    batch = {"A": torch.rand(2, 3, 8, 8), "B": torch.rand(2, 3, 8, 8)}
    m.train_step(batch)
    for s in sch.values():
        s.step()
    ckpt.save_training_state(
        tmp_path, networks=m.networks, generator=m.generator(), optimizers=opts, schedulers=sch,
        method_state=m.state_dict(), step=7, epoch=1, step_in_epoch=3, extra={"mlflow_run_id": "abc"},
    )  # fmt: skip
    ckpt.save_rng(tmp_path, 0)
    expected_next = torch.rand(3)
    m2 = training_fakes.FakeMethod(None, torch.device("cpu"))
    opts2 = m2.configure_optimizers()
    sch2 = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.5**e) for k, o in opts2.items()}
    state = ckpt.load_training_state(
        tmp_path, networks=m2.networks, optimizers=opts2, schedulers=sch2, rank=0
    )
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored to the checkpointed state
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (7, 1, 3)
    assert state["extra"]["mlflow_run_id"] == "abc"
    for name in m.networks:
        for a, b in zip(
            m.networks[name].state_dict().values(),
            m2.networks[name].state_dict().values(),
            strict=True,
        ):
            assert torch.equal(a, b)
    assert opts2["G"].state_dict()["state"][0]["step"] == opts["G"].state_dict()["state"][0]["step"]
    assert sch2["G"].get_last_lr() == sch["G"].get_last_lr() == [1e-2 * 0.5]
    m2.load_state_dict(state["method"])
    assert m2.steps == 1 and torch.equal(m2.pool, m.pool)


def test_tracker_with_dead_server_never_blocks():
    from mdir.training.tracking import Tracker

    tr = Tracker(_dead_uri(), "x", timeout_s=1, max_retries=0)
    t0 = time.monotonic()
    for i in range(50):
        tr.log_metrics({"loss": float(i)}, i)
    assert time.monotonic() - t0 < 1.0  # logging is non-blocking
    tr.close(flush_timeout=2)
    assert time.monotonic() - t0 < 6.0
    assert tr.run_id is None and tr.failures >= 1


def test_result_line_roundtrip():
    text = (
        "log line\n"
        + result_line({"run_id": "r", "model_uri": "models:/m@candidate", "sample_grid": "/g.png"})
        + "\n"
    )
    assert parse_result_line(text)["model_uri"] == "models:/m@candidate"


# ----------------------------------------------------------------------------- Ray cluster


@pytest.mark.slow
def test_fail_fast_storage_and_resources(ray_cluster, s3_server, tmp_path):
    from mdir.training.run import check_resources, ensure_ray, validate_before_launch

    base = ["method.name=cyclegan", f"data.uri={tmp_path}"]
    cfg = load_job_config(TINY, [*base, "storage.path=s3://no-such-bucket-mdir/runs"])
    with pytest.raises(ConfigError, match=r"storage\.path"):
        validate_before_launch(cfg, check_data=False, check_cluster=False)
    ensure_ray()
    with pytest.raises(ConfigError, match=r"scaling\.num_workers"):
        check_resources(load_job_config(TINY, [*base, "scaling.num_workers=64"]))
    with pytest.raises(ConfigError, match=r"scaling\.use_gpu"):
        check_resources(load_job_config(TINY, [*base, "scaling.use_gpu=true"]))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a worker-group restart alone takes ~80 s on 2 cores
def test_worker_crash_resume_ddp_replicas_s3_and_mlflow_down(ray_cluster, s3_server, tmp_path):
    """2 workers on S3 checkpoints with MLflow down: rank 1 dies hard at step 4, the group
    restarts from the step-2 checkpoint and finishes; replicas stay identical; then a new
    driver with the same run name resumes from the finished run's last checkpoint."""
    import ray.cloudpickle

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    bucket = s3_server.bucket("mdir-train-tests")
    common = [
        "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={bucket}/runs", "storage.name=fake-crash",
        "storage.max_failures=1", "train.checkpoint_every=2", "train.log_every=2", "train.max_steps=0",
        f"mlflow.tracking_uri={_dead_uri()}", "mlflow.timeout_s=1", "mlflow.max_retries=0",
        "mlflow.flush_timeout_s=5",
    ]  # fmt: skip
    dump = tmp_path / "dump"
    dump.mkdir()
    factory = training_fakes.FakeFactory(
        die_at_step=4, marker=str(tmp_path / "died"), dump_dir=str(dump)
    )
    cfg = load_job_config(TINY, [*common, "train.epochs=2"])
    t0 = time.monotonic()
    r = train(
        cfg,
        plan=training_fakes.RandomPlan(steps_per_epoch=3),
        method_factory=factory,
        validate=False,
    )
    assert r.error is None, r.error
    assert (tmp_path / "died").exists()  # the crash happened
    assert r.metrics["step"] == 6
    assert r.metrics["resumed_from_step"] == 2  # continued from the checkpoint, not from 0
    assert r.mlflow_run_id is None  # tracking was down, training finished anyway
    assert r.checkpoint_path and "fake-crash" in r.checkpoint_path
    a, b = (torch.load(dump / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert (
        a["step"] == b["step"] == 6
    )  # the method's own step counter came back from the checkpoint
    assert torch.equal(a["params"], b["params"])  # DDP replicas identical after the steps
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    files = fs.find(f"{bucket[5:]}/runs/fake-crash")
    assert any(f.endswith("networks.safetensors") for f in files)
    assert any(f.endswith("rng/rank_1.pt") for f in files)  # every rank's RNG state
    print(f"crash run {time.monotonic() - t0:.1f}s")

    # driver restart: same storage path + name → resumes at step 6 and runs 3 more
    cfg2 = load_job_config(TINY, [*common, "train.epochs=3"])
    r2 = train(
        cfg2,
        plan=training_fakes.RandomPlan(steps_per_epoch=3),
        method_factory=training_fakes.FakeFactory(dump_dir=str(dump)),
        validate=False,
    )
    assert r2.error is None, r2.error
    assert r2.metrics["resumed_from_step"] == 6
    assert r2.metrics["step"] == 9 and r2.metrics["steps_this_attempt"] == 3


@pytest.mark.timeout(900)
def test_global_batch_over_two_ray_train_workers(ray_cluster, mlflow_server, tmp_path):
    """A global batch (here 6) on 2 Ray Train workers: each rank's step sees
    6 / 2 = 3 images from the real in-memory data plan, and MLflow records both numbers."""
    import ray.cloudpickle
    from mlflow.tracking import MlflowClient

    from mdir.data.synth import synthesize
    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    data = tmp_path / "d"
    synthesize(str(data), places=2, conditions=["day", "night"], size=32, poses_per_place=4)
    dump = tmp_path / "dump"
    dump.mkdir()
    import yaml

    tiny = yaml.safe_load(Path(TINY).read_text())
    del tiny["train"]["batch_size"]  # only the global batch is given
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(tiny))
    cfg = load_job_config(
        tmp_path / "job.yaml",
        [
            "method.name=cyclegan", f"data.uri={data}", "train.loader=memory", f"storage.path={tmp_path / 'runs'}",
            "storage.name=global-batch", "train.max_steps=2", "mlflow.register=false",
            "train.global_batch_size=6",
        ],
    )  # fmt: skip
    assert cfg.train.batch_size == 3 and cfg.scaling.num_workers == 2
    r = train(cfg, method_factory=training_fakes.FakeFactory(dump_dir=str(dump)))
    assert r.error is None, r.error
    seen = [torch.load(dump / f"rank{i}.pt", weights_only=True) for i in (0, 1)]
    assert [s["batch"] for s in seen] == [3, 3]  # 2 workers × 3 = the global 6
    params = MlflowClient().get_run(r.mlflow_run_id).data.params
    assert params["train.global_batch_size"] == "6" and params["train.batch_size"] == "3"
