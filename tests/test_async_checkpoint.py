"""``storage.upload: async`` (issue 18): checkpoints upload in the background while training
goes on; a worker killed shortly after a checkpoint report resumes from it, and every
checkpoint Ray registered in storage is complete (its manifest verifies)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.training import checkpoint as ckpt  # noqa: E402
from mdir.training.config import load_job_config  # noqa: E402

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_async_upload_crash_resumes_from_the_reported_checkpoint(ray_cluster, s3_server, tmp_path):
    import ray.cloudpickle
    import s3fs

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    bucket = s3_server.bucket("mdir-async-tests")
    cfg = load_job_config(TINY, [
        "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={bucket}/runs",
        "storage.name=async-crash", "storage.upload=async", "storage.max_failures=1",
        "train.checkpoint_every=2", "train.epochs=2", "train.max_steps=0",
        "mlflow.enabled=false",
    ])  # fmt: skip
    dump = tmp_path / "dump"
    dump.mkdir()
    # rank 1 dies hard 5 s after the step-2 report, while training would go on
    factory = training_fakes.FakeFactory(
        die_at_step=3, marker=str(tmp_path / "died"), dump_dir=str(dump), die_delay_s=5.0
    )
    r = train(cfg, plan=training_fakes.RandomPlan(steps_per_epoch=3), method_factory=factory,
              validate=False)  # fmt: skip
    assert r.error is None, r.error
    assert (tmp_path / "died").exists()
    assert r.metrics["step"] == 6
    assert r.metrics["resumed_from_step"] == 2
    a, b = (torch.load(dump / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert a["step"] == b["step"] == 6 and torch.equal(a["params"], b["params"])

    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    root = f"{bucket[5:]}/runs/async-crash"
    dirs = sorted(  # checkpoint_<timestamp>/ directories (not Ray's own checkpoint_*.json)
        {
            rel.split("/")[0]
            for f in fs.find(root)
            if (rel := f[len(root) + 1 :]).startswith("checkpoint_") and "/" in rel
        }
    )
    assert dirs, "no checkpoint in storage"
    for name in dirs:  # whatever Ray left in storage is whole
        local = tmp_path / "dl" / name
        fs.get(f"{root}/{name}", str(local), recursive=True)
        assert ckpt.verify_checkpoint(local) == [], name
