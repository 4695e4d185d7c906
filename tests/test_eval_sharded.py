"""The evaluation sharded across ranks (``train.eval_sharded``, issue 18): the blocks each
rank takes, the merged numbers against the single-process evaluation on the same inputs,
errors that name the rank, and the real features reused between eval points. The real
2-worker Ray Train run is in test_training_methods (CycleGAN: in-training sharded numbers
equal `mdir eval gan --model`'s)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.metrics import (
    EvalConfig,  # noqa: E402
    gan,  # noqa: E402
)
from mdir.metrics.gan import (  # noqa: E402
    ImageShard,
    evaluate_translation_detailed,
    evaluate_translation_shard,
    metrics_from_shards,
    shard_range,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


def test_shard_range_deals_out_whole_batches_evenly():
    for n in range(0, 41):
        for bs in range(1, 8):
            for world in range(1, 6):
                blocks = [shard_range(n, bs, r, world) for r in range(world)]
                # contiguous, in rank order, covering [0, n) exactly
                assert blocks[0][0] == 0 and blocks[-1][1] == n
                assert all(blocks[i][1] == blocks[i + 1][0] for i in range(world - 1))
                # every block starts on a batch boundary, so the batches are a single
                # process's batches; block sizes differ by at most one batch
                assert all(a % bs == 0 or a == n for a, _ in blocks)
                nb = [-(-(b - a) // bs) for a, b in blocks]
                assert max(nb) - min(nb) <= 1 and nb == sorted(nb, reverse=True)
    with pytest.raises(ValueError, match="rank 2"):
        shard_range(10, 2, 2, 2)


def _cfg(**kw) -> EvalConfig:
    base = dict(
        allow_random_features=True,
        metrics=["fid", "kid", "ssim"],
        kid_subsets=4,
        kid_subset_size=5,
        batch_size=3,
        device="cpu",
    )
    return EvalConfig(**{**base, **kw})


def _translate(x: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic and image-dependent: a flipped, darkened copy of the source."""
    return torch.flip(x, dims=[3]) * 0.7 - 0.1


def test_sharded_blocks_merge_to_the_single_process_numbers(no_weights_env):
    """7 images in batches of 3 over 4 ranks: 3 batches, one rank with nothing. Merged in
    whatever order they arrive, the blocks give exactly the single-process FID and KID
    (same batches → same features) and its SSIM up to summation order."""
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    tgt = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    cfg = _cfg()
    whole = evaluate_translation_detailed(_translate, src, tgt, cfg)
    shards = [
        evaluate_translation_shard(_translate, src, tgt, cfg, rank=r, world=4) for r in range(4)
    ]
    assert [s.num_fake for s in shards] == [3, 3, 1, 0]
    merged = metrics_from_shards(shards[::-1], cfg)  # arrival order must not matter
    assert (
        set(merged.metrics)
        == set(whole.metrics)
        == {
            "fid_legacy_random_inception",
            "kid_legacy_random_inception",
            "kid_std_legacy_random_inception",
            "ssim",
        }
    )
    for k in ("fid_legacy_random_inception", "kid_legacy_random_inception"):
        assert merged.metrics[k] == whole.metrics[k], k
    assert merged.metrics["ssim"] == pytest.approx(whole.metrics["ssim"], rel=1e-12)
    assert merged.num_real == merged.num_fake == 7
    assert merged.tags() == whole.tags()
    # a block that went elsewhere changes the numbers: the merge really uses every block
    other = metrics_from_shards([shards[0], shards[0], *shards[2:]], cfg)
    assert other.metrics["fid_legacy_random_inception"] != whole.metrics[
        "fid_legacy_random_inception"
    ] or other.metrics["ssim"] != pytest.approx(whole.metrics["ssim"], rel=1e-12)


def test_a_failed_block_fails_the_merge_naming_its_rank():
    ok = ImageShard(0, 0, 2, 2)
    bad = ImageShard(0, 0, 0, 0, error="rank 1: OSError: disk gone")
    with pytest.raises(RuntimeError, match="rank 1: OSError: disk gone"):
        metrics_from_shards([ok, bad], _cfg())


@pytest.fixture
def no_weights_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MDIR_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MDIR_CACHE_DIR", str(tmp_path / "mdir-cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))


class _ShiftedPlan(training_fakes.RandomPlan):
    """RandomPlan whose real targets can be changed between eval points."""

    def __init__(self) -> None:
        super().__init__(size=16)
        self.shift = 0

    def eval_images(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        s, t = super().eval_images(n)
        return s, (t.astype(np.int32) + self.shift).clip(0, 255).astype(np.uint8)


def test_training_evaluation_extracts_the_real_features_once(monkeypatch, no_weights_env):
    """At each eval point only the translations are new: the real targets' features are
    extracted at the first one and reused while the targets are the same images."""
    from mdir.training.config import load_job_config
    from mdir.training.evaluation import GanEvaluation

    cfg = load_job_config(
        TINY,
        [
            "method.name=cyclegan", "data.uri=/unused", "train.evaluate=true",
            "train.eval_images=4", "eval.metrics=[fid,kid]", "eval.allow_random_features=true",
            "eval.kid_subset_size=2", "eval.kid_subsets=2", "eval.batch_size=4", "eval.device=cpu",
        ],
    )  # fmt: skip
    calls: list[int] = []
    real_extract = gan.extract

    def counting(images, c, extractor):
        calls.append(len(images))
        return real_extract(images, c, extractor)

    monkeypatch.setattr(gan, "extract", counting)
    method = training_fakes.FakeMethod(cfg.method, torch.device("cpu"))
    plan = _ShiftedPlan()
    ev = GanEvaluation()
    first = ev(None, cfg, method, plan, 1)
    assert calls == [4, 4] and "eval/fid_legacy_random_inception" in first
    second = ev(None, cfg, method, plan, 2)
    assert calls == [4, 4, 4] and second == first  # same weights, cached real features
    plan.shift = 40  # other targets: extracted again, and the numbers move
    third = ev(None, cfg, method, plan, 3)
    assert calls == [4, 4, 4, 4, 4]
    assert third["eval/fid_legacy_random_inception"] != first["eval/fid_legacy_random_inception"]


def test_training_evaluation_failure_is_logged_not_raised(caplog):
    from mdir.training.config import load_job_config
    from mdir.training.evaluation import GanEvaluation

    class Broken(training_fakes.RandomPlan):
        def eval_images(self, n):
            raise OSError("val split unreadable")

    cfg = load_job_config(TINY, ["method.name=cyclegan", "data.uri=/unused", "train.evaluate=true"])
    method = training_fakes.FakeMethod(cfg.method, torch.device("cpu"))
    with caplog.at_level("WARNING", logger="mdir.training"):
        assert GanEvaluation()(None, cfg, method, Broken(), 5) == {}
    assert "evaluation at step 5 failed: rank 0: OSError: val split unreadable" in caplog.text
