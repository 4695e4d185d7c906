"""The GAN evaluation at a training run's eval points and at its end.

`GanEvaluation` translates the validation sources with the live generator and computes
the metrics of `mdir.metrics.gan` — the same function `mdir eval gan --model` calls, so the
numbers agree. Two ways to run it:

- rank 0 alone (default): the other ranks wait at the next report;
- sharded (``train.eval_sharded``): every rank translates and extracts a contiguous block
  of whole batches (`mdir.metrics.gan.shard_range`), the blocks' features go to rank 0
  (one ``gather_object``) and rank 0 computes the statistics once over all of them, in
  input order. Same batches, same order: the same numbers as rank 0 alone, about `world`
  times sooner. Generators with noise at test time (pix2pix's dropout in train mode) draw
  it from each rank's own generator, so their numbers vary with the run as they do anyway.

The real targets never change during a run: their features are extracted once per
attempt (per rank, per block) and reused at every eval point.

A failing evaluation never kills training: it is logged and yields no metrics. In sharded
mode a rank that fails still joins the gather (with its error), so no rank waits forever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from mdir.methods.specs import spec_of
from mdir.training import checkpoint as ckpt

log = logging.getLogger("mdir.training")


def translate_live(method: Any, src: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
    """`method.translate` on the generator's device; float32 output on the CPU."""
    dev = next(ckpt.unwrap(method.generator()).parameters()).device
    out = method.translate(src.to(dev), None if ref is None else ref.to(dev))
    return out.float().cpu()


def _gather_to_rank0(obj: Any, rank: int, world: int) -> list[Any] | None:
    import torch.distributed as dist

    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


class GanEvaluation:
    """Callable as the loop's ``evaluate(tracker, cfg, method, plan, step)``; returns
    ``{"eval/<key>": value}`` on rank 0 and ``{}`` elsewhere. ``collective`` tells the loop
    that every rank must call it at the same points."""

    def __init__(self, rank: int = 0, world: int = 1, sharded: bool = False) -> None:
        self.rank = rank
        self.world = world if sharded else 1
        self.collective = sharded and world > 1
        self._real_cache: dict[str, Any] = {}  # this rank's real block's features

    def __call__(
        self, tracker: Any, cfg: Any, method: Any, plan: Any, step: int
    ) -> dict[str, float]:
        if not cfg.train.evaluate:
            return {}
        try:
            from mdir.metrics.gan import (
                ImageShard,
                feature_extractor_tag,
                metrics_from_shards,
            )
            from mdir.metrics.naming import MLFLOW_TAG
        except ModuleNotFoundError:  # the metrics' optional dependencies are missing
            return {}
        t0 = time.perf_counter()
        try:
            shard = self._shard(cfg, method, plan)
        except Exception as e:  # joins the gather all the same (sharded) or ends here
            shard = ImageShard(0, 0, 0, 0, error=f"rank {self.rank}: {type(e).__name__}: {e}")
        shards = _gather_to_rank0(shard, self.rank, self.world) if self.collective else [shard]
        if self.rank != 0 or shards is None:
            return {}
        try:
            res = metrics_from_shards(shards, cfg.eval)
            metrics = {f"eval/{k}": float(v) for k, v in res.metrics.items()}
            where = f" over {self.world} ranks" if self.collective else ""
            log.info(
                "eval at step %d%s (%.1f s): %s", step, where, time.perf_counter() - t0, metrics
            )
            if tracker is not None:
                tracker.log_metrics(metrics, step)
                # protocol, network and image count of the numbers (mdir.fid.*), and which
                # network produced them (random Inception is never "the" FID)
                tracker.set_tags(
                    {
                        MLFLOW_TAG: feature_extractor_tag(cfg.eval),
                        "mdir.eval.ranks": str(self.world),
                        **res.tags(),
                    }
                )
            return metrics
        except Exception as e:  # metrics must not kill a long training job
            log.warning("evaluation at step %d failed: %s", step, e)
            return {}

    def _shard(self, cfg: Any, method: Any, plan: Any) -> Any:
        """This rank's block: translations and features (real ones from the cache)."""
        from mdir.metrics.gan import evaluate_translation_shard, get_extractor

        src, tgt = plan.eval_images(cfg.train.eval_images)
        ref = tgt if spec_of(cfg.method).needs_reference else None
        return evaluate_translation_shard(
            lambda x, r=None: translate_live(method, x, r),
            src,
            tgt,
            cfg.eval,
            ref,
            rank=self.rank,
            world=self.world,
            # each rank extracts its own block (not through eval.num_workers' Ray actors)
            extractor=get_extractor(cfg.eval) if self.collective else None,
            real_cache=self._real_cache,
        )
