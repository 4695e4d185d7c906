"""Distributed Inception features on the session Ray cluster equal the single-process ones
(per-worker statistics merged exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    # random features carry no IS logits (a random fc's IS means nothing), on any path
    assert dist.logits is None and single.logits is None
    ref = GaussianStats.from_features(single.pool[::-1] * 1.1 + 0.05)
    fid_single = GaussianStats.from_features(single.pool).frechet_distance(ref)
    fid_dist = dist.stats.frechet_distance(ref)
    assert fid_dist == pytest.approx(fid_single, rel=1e-4)
