"""The GPU path's config keys run on CPU workers (issue 18): channels-last networks and
batches, synchronised BatchNorm, pinned-copy setting, asynchronous checkpoint upload and the
EMA together, on 2 gloo workers, leave identical replicas."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.training.config import load_job_config  # noqa: E402
from mdir.training.loop import to_channels_last  # noqa: E402

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


def test_to_channels_last_converts_only_float_images():
    b = {
        "A": torch.rand(2, 3, 4, 5),
        "A_id": torch.arange(2),
        "mask": torch.zeros(2, 1, 4, 5, dtype=torch.uint8),
    }
    out = to_channels_last(b)
    assert out["A"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out["A"], b["A"]) and out["A_id"] is b["A_id"] and out["mask"] is b["mask"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_path_keys_on_two_cpu_workers(ray_cluster, tmp_path):
    import ray.cloudpickle

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    dump = tmp_path / "dump"
    dump.mkdir()
    cfg = load_job_config(TINY, [
        "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={tmp_path / 'runs'}",
        "storage.name=gpu-keys", "train.max_steps=4", "train.checkpoint_every=2",
        "mlflow.enabled=false", "train.amp=off", "train.channels_last=true",
        "train.sync_batchnorm=true", "data.pin_memory=true", "storage.upload=async",
        "train.ema_decay=0.9",
    ])  # fmt: skip
    r = train(cfg, plan=training_fakes.RandomPlan(steps_per_epoch=4),
              method_factory=training_fakes.FakeFactory(dump_dir=str(dump)), validate=False)  # fmt: skip
    assert r.error is None, r.error
    assert r.metrics["step"] == 4
    d = [torch.load(dump / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert d[0]["step"] == d[1]["step"] == 4
    assert d[0]["channels_last"] and d[1]["channels_last"]  # networks and batches NHWC
    torch.testing.assert_close(d[0]["params"], d[1]["params"], rtol=0, atol=0)
    torch.testing.assert_close(d[0]["buffers"], d[1]["buffers"], rtol=0, atol=1e-6)


def test_amp_off_from_the_command_line(tmp_path):
    """``--set train.amp=off`` (the fp32 fallback): YAML reads bare ``off`` as false."""
    cfg = load_job_config(TINY, ["method.name=cyclegan", f"data.uri={tmp_path}", "train.amp=off"])
    assert cfg.train.amp == "off"
