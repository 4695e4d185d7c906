"""`mdir bench eval`: one training eval point, rank 0 alone vs sharded over N ranks.

The code timed is the training loop's own evaluation (`mdir.training.evaluation.GanEvaluation`):
the generator of METHOD translates the validation sources and the feature metrics are
computed. Baseline: one process (rank 0 alone, as with ``train.eval_sharded: false``);
candidate: ``--workers`` processes in a gloo process group on this machine, each with the
same number of torch threads, sharing the evaluation as ``train.eval_sharded: true`` does.
Both are timed in the same run, interleaved over ``--rounds``; per eval point the two
calls a run makes are timed separately: the first (real and translated features) and a
later one (the real features come from the per-attempt cache). Also reported: whether the
two modes gave the same numbers (they must: same batches, same order).

Synthetic inputs (seeded uint8 noise images): the time does not depend on content.
Without the standard Inception weights installed the features are the seeded random
network's (labelled so in the JSON); its cost is the same.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from mdir.bench.app import app
from mdir.bench.common import write_json


class _NoisePlan:
    """The two arrays `GanEvaluation` asks a data plan for, seeded."""

    def __init__(self, n: int, size: int) -> None:
        rng = np.random.default_rng(0)
        self.src = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.tgt = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    def eval_images(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src[:n], self.tgt[:n]


def _job_config(method: str, images: int, size: int, batch: int, lite: bool) -> Any:
    from mdir.bench.step import method_bench_config
    from mdir.metrics.features import resolve_weights
    from mdir.training.config import TrainJobConfig

    standard = resolve_weights(None) is not None
    return TrainJobConfig.model_validate(
        {
            "method": method_bench_config(method, lite).model_dump(),
            "data": {"uri": "/unused", "image_size": size},
            "train": {"evaluate": True, "eval_images": images},
            "eval": {
                "metrics": ["fid", "kid"],
                "batch_size": batch,
                "device": "cpu",
                "allow_random_features": not standard,
            },
        }
    )


def _rank_main(rank: int, world: int, port: int, spec: dict, out_dir: str) -> None:
    """One process of a timed group: build, warm up the extractor, time two eval points."""
    import torch
    import torch.distributed as dist

    from mdir.bench.step import build_bench_method
    from mdir.metrics.gan import get_extractor
    from mdir.training.evaluation import GanEvaluation

    torch.set_num_threads(spec["threads"])
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    cfg = _job_config(spec["method"], spec["images"], spec["size"], spec["batch"], spec["lite"])
    method = build_bench_method(spec["method"], cfg.method, "eager")
    plan = _NoisePlan(spec["images"], spec["size"])
    get_extractor(cfg.eval)  # built once per worker in a run too: not an eval point's cost
    ev = GanEvaluation(rank, world, sharded=world > 1)
    times, metrics = [], {}
    for step in (1, 2):
        if world > 1:
            dist.barrier()
        t = time.perf_counter()
        m = ev(None, cfg, method, plan, step)
        if world > 1:
            dist.barrier()
        times.append(time.perf_counter() - t)
        metrics = m or metrics
    if rank == 0:
        Path(out_dir, "result.json").write_text(json.dumps({"times": times, "metrics": metrics}))
    if world > 1:
        dist.destroy_process_group()


def time_group(world: int, spec: dict) -> dict:
    """Run `_rank_main` in `world` fresh processes; rank 0's timings and metrics."""
    import torch.multiprocessing as mp

    from mdir.runtime import free_port

    with tempfile.TemporaryDirectory(prefix="mdir-bench-eval-") as d:
        mp.spawn(_rank_main, args=(world, free_port(), spec, d), nprocs=world, join=True)
        return json.loads(Path(d, "result.json").read_text())


def bench_eval(spec: dict, workers: int, rounds: int, progress: bool = True) -> dict:
    alone: list[list[float]] = []
    sharded: list[list[float]] = []
    m_alone = m_sharded = {}
    for r in range(rounds):
        for world, into in ((1, alone), (workers, sharded)):
            res = time_group(world, spec)
            into.append(res["times"])
            if world == 1:
                m_alone = res["metrics"]
            else:
                m_sharded = res["metrics"]
            if progress:
                print(
                    f"round {r + 1}/{rounds} world {world}: first eval point "
                    f"{res['times'][0]:.2f} s, later {res['times'][1]:.2f} s",
                    flush=True,
                )

    def med(rows: list[list[float]], i: int) -> float:
        return statistics.median(t[i] for t in rows)

    out = {
        "spec": spec,
        "workers": workers,
        "rounds": rounds,
        "alone_s": {"first": med(alone, 0), "later": med(alone, 1), "all": alone},
        "sharded_s": {"first": med(sharded, 0), "later": med(sharded, 1), "all": sharded},
        "metrics_alone": m_alone,
        "metrics_sharded": m_sharded,
        "same_numbers": m_alone == m_sharded and bool(m_alone),
    }
    out["speedup_first"] = out["alone_s"]["first"] / out["sharded_s"]["first"]
    out["speedup_later"] = out["alone_s"]["later"] / out["sharded_s"]["later"]
    out["real_cache_speedup_alone"] = out["alone_s"]["first"] / out["alone_s"]["later"]
    return out


@app.command("eval")
def eval_cmd(
    method: str = typer.Argument("cyclegan", help="A method of the table: pix2pix, cyclegan, …"),
    images: int = typer.Option(64, help="Validation images per eval point."),
    size: int = typer.Option(64, help="Image side fed to the generator."),
    batch: int = typer.Option(8, help="eval.batch_size (the shard unit: whole batches)."),
    workers: int = typer.Option(2, help="Ranks sharing the evaluation (processes)."),
    threads: int = typer.Option(1, help="Torch threads per process (alone and sharded)."),
    rounds: int = typer.Option(2, help="Interleaved rounds (alone, sharded)."),
    lite: bool = typer.Option(True, help="Narrow generator (the eval cost is the Inception)."),
    out: Path | None = typer.Option(None, help="Write the JSON here (e.g. docs/bench/...)."),
) -> None:
    """Time a training eval point with rank 0 alone vs sharded over WORKERS ranks
    (train.eval_sharded) on this machine; prints the ratios and writes JSON."""
    from mdir.bench.step import method_bench_config

    method_bench_config(method, lite)  # an unknown method fails here, naming the valid ones
    if workers < 2 or images < 2 or batch < 1:
        raise typer.BadParameter("need --workers ≥ 2, --images ≥ 2 and --batch ≥ 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    spec = {
        "method": method,
        "images": images,
        "size": size,
        "batch": batch,
        "threads": threads,
        "lite": lite,
    }
    res = bench_eval(spec, workers, rounds)
    label = next(iter(res["metrics_alone"]), "?")
    print(
        f"eval point, {images} images, {workers} ranks vs 1: first {res['speedup_first']:.2f}×, "
        f"later {res['speedup_later']:.2f}× (real features cached: "
        f"{res['real_cache_speedup_alone']:.2f}× for rank 0 alone); same numbers: "
        f"{res['same_numbers']} ({label})"
    )
    write_json(res, out, echo=out is None)
