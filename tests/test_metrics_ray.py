"""Distributed Inception features on the session Ray cluster equal the single-process
ones, and `mdir eval gan` (folders, Ray workers, MLflow logging, --json) end to end."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mdir.metrics import FeatureExtractor, GaussianStats
from mdir.metrics.distributed import extract_features_distributed
from mdir.metrics.features import WEIGHTS_ENV

pytestmark = pytest.mark.slow

KW = dict(weights=None, allow_random=True, device="cpu", batch_size=2, seed=0)


@pytest.fixture(autouse=True)
def _no_weights(monkeypatch, tmp_path):
    """Random features everywhere (workers included): no env var, empty hub cache."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_ctx(ray_cluster):
    ray_cluster.init(log_to_driver=False)
    yield ray_cluster


def test_distributed_stats_equal_single_process(ray_ctx):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    dist = extract_features_distributed(imgs, KW, num_workers=2, chunk_size=2)
    assert dist.label == "random_inception"
    # every worker got work, and the merge of the per-worker stats is exact
    assert len(dist.worker_stats) == 2 and all(s.n > 0 for s in dist.worker_stats)
    assert sum(s.n for s in dist.worker_stats) == 6 == dist.stats.n
    one_pass = GaussianStats.from_features(dist.pool)
    np.testing.assert_allclose(dist.stats.mean, one_pass.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dist.stats.cov, one_pass.cov, rtol=1e-10, atol=1e-12)
    # features (input order kept) and the FID they give equal the single-process ones
    single = FeatureExtractor(**KW).extract(imgs)
    np.testing.assert_allclose(dist.pool, single.pool, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dist.logits, single.logits, rtol=1e-4, atol=1e-5)
    ref = GaussianStats.from_features(single.pool[::-1] * 1.1 + 0.05)
    fid_single = GaussianStats.from_features(single.pool).frechet_distance(ref)
    fid_dist = dist.stats.frechet_distance(ref)
    assert fid_dist == pytest.approx(fid_single, rel=1e-4)


def test_eval_gan_cli_folders_ray_workers_and_mlflow(ray_ctx, mlflow_server, tmp_path):
    from mdir.cli import app

    rng = np.random.default_rng(1)
    for name in ("real", "fake"):
        d = tmp_path / name
        d.mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "fake" / "broken.png").write_bytes(b"not a png")  # skipped and counted
    mlflow.set_experiment("metrics-cli-test")
    with mlflow.start_run() as run:
        run_id = run.info.run_id
    res = CliRunner().invoke(
        app,
        [
            "eval", "gan", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
            "--allow-random-features", "--num-workers", "2", "--batch-size", "2",
            "--set", "kid_subsets=3", "--set", "prd_num_runs=1", "--set", "is_splits=2",
            "--metrics", "fid,kid,is,prd,ssim", "--mlflow-run-id", run_id, "--json",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["feature_extractor"] == "random_inception"
    assert out["num_real"] == 4 and out["num_fake"] == 4
    assert out["skipped_fake"] == {"undecodable:UnidentifiedImageError": 1}
    m = out["metrics"]
    assert "fid" not in m and m["fid_random_inception"] > 0 and 0 <= m["ssim"] < 0.5
    logged = mlflow.get_run(run_id)
    assert logged.data.tags["mdir.feature_extractor"].startswith("random_inception")
    assert logged.data.metrics["eval/fid_random_inception"] == pytest.approx(
        m["fid_random_inception"]
    )
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "eval")]
    assert "eval/prd.png" in arts
    # a config error names the field and exits with 2
    bad = CliRunner().invoke(
        app, ["eval", "gan", "--real", "x", "--fake", "y", "--set", "kid_subsets=0"]
    )
    assert bad.exit_code == 2 and "kid_subsets" in bad.output
