"""Real Ray Train runs (fake method, tiny nets) for checkpoint selection and integrity:
the registered generator is the best-scored checkpoint (issue 14), a truncated latest
checkpoint resumes from the previous one, and an unloadable one fails once, loudly,
without burning retries (issue 19)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.training import checkpoint as ckpt  # noqa: E402
from mdir.training.config import load_job_config  # noqa: E402

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


_dead_uri = training_fakes.dead_uri


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _checkpoints_by_step(run_dir: Path) -> dict[int, Path]:
    return {
        int(json.loads((d / ckpt.META_FILE).read_text())["step"]): d
        for d in sorted(run_dir.glob("checkpoint_*"))
        if (d / ckpt.META_FILE).exists()
    }


def test_run_job_prints_result_line_when_training_raises(monkeypatch, capsys, tmp_path):
    """The MDIR_RESULT line is the job's contract, also when training itself raises."""
    import mdir.training.run as run
    from mdir.training.job import parse_result_line, run_job

    def boom(cfg, address=None):
        raise RuntimeError("SafetensorError: incomplete metadata")

    monkeypatch.setattr(run, "train", boom)
    rc = run_job("cyclegan", TINY, [f"data.uri={tmp_path}", "storage.name=boom"])
    assert rc == 1
    res = parse_result_line(capsys.readouterr().out)
    assert res == {
        "run_name": "boom",
        "error": "RuntimeError: SafetensorError: incomplete metadata",
    }


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_registers_best_scored_checkpoint_which_survives_num_to_keep(
    ray_cluster, mlflow_server, tmp_path
):
    """Evaluations at steps 2, 4 and the final 6 score 1.0, 5.0, 3.0 (lower is better):
    with num_to_keep=1 Ray keeps step 2 (best) and 6 (latest, for resume), drops 4, and the
    generator registered is step 2's — same bytes, and the step recorded on run and version."""
    import mlflow
    import ray.cloudpickle
    from mlflow.tracking import MlflowClient

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    cfg = load_job_config(TINY, [
        "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={tmp_path / 'runs'}",
        "storage.name=best-sel", "storage.num_to_keep=1", "train.max_steps=6", "train.epochs=2",
        "train.evaluate=true", "train.eval_every=2", "train.checkpoint_every=0",
        f"mlflow.tracking_uri={mlflow_server.uri}", "mlflow.experiment=mdir-tests",
        "mlflow.model_name=mdir-test-best-sel",
    ])  # fmt: skip
    r = train(
        cfg,
        plan=training_fakes.RandomPlan(steps_per_epoch=3),
        method_factory=training_fakes.FakeFactory(),
        evaluator=training_fakes.FakeEvaluator({2: 1.0, 4: 5.0, 6: 3.0}),
        validate=False,
    )
    assert r.error is None, r.error
    assert r.metrics["step"] == 6 and r.metrics["registered_step"] == 2
    kept = _checkpoints_by_step(tmp_path / "runs" / "best-sel")
    assert sorted(kept) == [2, 6]  # the best survived num_to_keep=1; step 4 was deleted
    best_gen = _sha(kept[2] / ckpt.GENERATOR_FILE)
    assert best_gen != _sha(kept[6] / ckpt.GENERATOR_FILE)  # the choice matters

    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(r.mlflow_run_id).data.tags["mdir.registered_step"] == "2"
    mv = client.get_model_version_by_alias("mdir-test-best-sel", "candidate")
    assert mv.run_id == r.mlflow_run_id
    assert mv.tags["mdir.checkpoint_step"] == "2"
    assert mv.tags["mdir.selection_metric"] == "fid_fake"
    assert float(mv.tags["metric.eval/fid_fake"]) == 1.0
    mlflow.set_tracking_uri(mlflow_server.uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/mdir-test-best-sel/{mv.version}", dst_path=str(tmp_path / "dl")
        )
    )
    registered = [p for p in local.rglob(ckpt.GENERATOR_FILE)]
    assert len(registered) == 1 and _sha(registered[0]) == best_gen


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_truncated_latest_checkpoint_resumes_from_previous_then_fails_fast(ray_cluster, tmp_path):
    """A truncated ``networks.safetensors`` in the latest checkpoint (what ENOSPC or a crash
    mid-write leaves) → the next run resumes from the previous, intact one; a newer 0-byte
    partial directory is ignored. When no checkpoint is intact the run ends with the error
    at once: one attempt, not ``max_failures`` retries of a deterministic failure."""
    import ray.cloudpickle

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    run_dir = tmp_path / "runs" / "trunc"
    common = [
        "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={tmp_path / 'runs'}",
        "storage.name=trunc", "storage.max_failures=2", "train.checkpoint_every=2",
        "train.epochs=4", f"mlflow.tracking_uri={_dead_uri()}", "mlflow.enabled=false",
    ]  # fmt: skip
    plan = training_fakes.RandomPlan(steps_per_epoch=3)
    r1 = train(load_job_config(TINY, [*common, "train.max_steps=4"]), plan=plan,
               method_factory=training_fakes.FakeFactory(), validate=False)  # fmt: skip
    assert r1.error is None, r1.error
    kept = _checkpoints_by_step(run_dir)
    assert sorted(kept) == [2, 4]
    net = kept[4] / ckpt.NETWORKS_FILE
    net.write_bytes(net.read_bytes()[: net.stat().st_size // 2])
    partial = run_dir / "checkpoint_2999-01-01_00-00-00.000000"  # newer, never registered
    (partial / "manifest").mkdir(parents=True)
    for f in (ckpt.NETWORKS_FILE, ckpt.STATE_FILE, "manifest/rank_0.json"):
        (partial / f).write_bytes(b"")

    count = tmp_path / "built"
    r2 = train(load_job_config(TINY, [*common, "train.max_steps=6"]), plan=plan,
               method_factory=training_fakes.FakeFactory(count_file=str(count)), validate=False)  # fmt: skip
    assert r2.error is None, r2.error
    assert r2.metrics["resumed_from_step"] == 2  # the intact previous checkpoint
    assert r2.metrics["step"] == 6 and r2.metrics["steps_this_attempt"] == 4
    assert len(count.read_text().splitlines()) == 2  # one attempt of 2 ranks: no retry

    # now every kept checkpoint is damaged: the run stops once, with the reason
    for d in _checkpoints_by_step(run_dir).values():
        (d / ckpt.NETWORKS_FILE).write_bytes(b"")
    count.unlink()
    t0 = time.monotonic()
    r3 = train(load_job_config(TINY, [*common, "train.max_steps=8"]), plan=plan,
               method_factory=training_fakes.FakeFactory(count_file=str(count)), validate=False)  # fmt: skip
    assert r3.error is not None and "no intact checkpoint" in r3.error, r3.error
    assert "networks.safetensors" in r3.error
    assert len(count.read_text().splitlines()) == 2  # not retried as a node failure
    print(f"deterministic failure reported in {time.monotonic() - t0:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tune_champion_is_the_best_scored_checkpoint(ray_cluster, mlflow_server, tmp_path):
    """A toy sweep whose trials diverge (toy.lr > 1): each one's best evaluation point is
    its first (step 5 of 15), not its last. With toy.keep=1 Ray keeps that checkpoint and
    the latest; the champion's registered weights are the step-5 weights, byte for byte."""
    import subprocess
    import uuid

    import mlflow
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from mdir.runtime import bytecode_cache_env

    root = Path(__file__).resolve().parent.parent
    name = f"sel-{uuid.uuid4().hex[:8]}"
    space = tmp_path / "space.yaml"
    space.write_text(
        f"""
name: {name}
backend: toy
storage_path: {tmp_path / "tune"}
experiment: mdir-tune-test
cases:
  - {{label: diverge, set: {{toy.lr: 1.2}}}}
  - {{label: faster, set: {{toy.lr: 1.5}}}}
parameters:
  toy.evals: {{grid: [3]}}
  toy.keep: {{grid: [1]}}
max_concurrent_trials: 2
resources_per_trial: {{num_workers: 1, cpus_per_worker: 0.5}}
"""
    )
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(root)}
    env.update(bytecode_cache_env(env))
    out = subprocess.run(
        [sys.executable, str(root / "jobs" / "tune.py"), "--space", str(space)],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=1400,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{")))
    board = summary["leaderboard"]
    assert [r["label"].split(",")[0] for r in board] == ["diverge", "faster"]
    assert all(r["best_step"] == 5 and r["steps"] == 15 for r in board)

    client = MlflowClient(mlflow_server.uri)
    champ = client.get_model_version_by_alias(f"mdir-toy-{name}", "champion")
    assert champ.run_id == board[0]["run_id"] and champ.tags["mdir.checkpoint_step"] == "5"
    mlflow.set_tracking_uri(mlflow_server.uri)
    dl = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/mdir-toy-{name}/{champ.version}", dst_path=str(tmp_path / "dl")
        )
    )
    registered = load_file(str(next(dl.rglob("generator.safetensors"))))["w"]
    # the champion trial's kept checkpoints: the best (eval point 1) survived keep=1
    trial_id = client.get_run(champ.run_id).data.tags["mdir.tune.trial_id"]
    trial_dir = tmp_path / "tune" / name / "train" / f"trial-{trial_id}"
    states = {
        int(s["eval"]): s["w"]
        for s in (torch.load(p, weights_only=True) for p in trial_dir.glob("checkpoint_*/state.pt"))
    }
    assert sorted(states) == [1, 3]  # best + latest; eval point 2 was deleted
    assert torch.equal(registered, states[1]) and not torch.equal(registered, states[3])
