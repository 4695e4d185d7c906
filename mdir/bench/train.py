"""`mdir bench train METHOD`: Ray Train loop (1 and 2 workers) vs a plain loop, one run.

All three variants train the same method config on the same tiny synthetic dataset
(in-memory loader, so data loading is identical and cheap) with checkpoints, samples,
evaluation and MLflow off; throughput is steps/s after the first (warm-up) step, measured
inside the loop. Reported: ``overhead_ratio_1w`` = plain steps/s ÷ Ray-1-worker steps/s
(target ≤ 1.10) and ``scaling_2w_images_per_s`` = 2-worker images/s ÷ 1-worker images/s
(each worker runs the per-worker batch, so 2 workers process twice the images per step).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json


def _plain_loop(cfg: Any, plan: Any, steps: int, threads: int) -> float:
    """Single process, no Ray, no DDP: steps/s after one warm-up step."""
    import torch

    from mdir.methods import get_method_factory
    from mdir.methods.base import EpochContext

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    dev = torch.device("cpu")
    method = get_method_factory(cfg.method.name)(cfg.method, dev)
    method.configure_optimizers()
    method.on_epoch_start(0, EpochContext(epoch=0, num_epochs=1, device=dev, store=plan.store()))
    it = plan.local_batches(steps + 1, dev)
    method.train_step(next(it))
    t0 = time.perf_counter()
    for b in it:
        method.train_step(b)
    return steps / (time.perf_counter() - t0)


def _ray_run(cfg: Any, workers: int, threads: int, name: str) -> float:
    from mdir.training.run import train

    os.environ["MDIR_TORCH_THREADS"] = str(max(1, threads // workers))
    c = cfg.model_copy(
        update={
            "scaling": cfg.scaling.model_copy(
                update={"num_workers": workers, "cpus_per_worker": 0.5}
            ),
            "storage": cfg.storage.model_copy(update={"name": name}),
        }
    )
    r = train(c, validate=False)
    if r.error:
        raise RuntimeError(r.error)
    return float(r.metrics["throughput/steps_per_s"])


@app.command("train")
def bench_train(
    method: str = typer.Argument(help="pix2pix | cyclegan | mduit"),
    steps: int = typer.Option(20, help="Timed steps per variant (after 1 warm-up step)."),
    size: int = typer.Option(32, help="Image side (px) of the synthetic data."),
    batch_size: int = typer.Option(2, help="Images per worker per step."),
    threads: int = typer.Option(0, help="Torch threads in total (split across workers)."),
    data: str | None = typer.Option(None, help="Dataset URI (default: synthesize a tiny one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Path | None = typer.Option(None, help="Write the JSON result here."),
) -> None:
    """Steps/s of the Ray Train loop with 1 and 2 workers vs a plain single-process loop."""
    from mdir.methods.specs import method_specs
    from mdir.training.config import load_job_config
    from mdir.training.data_plan import MemoryDataPlan
    from mdir.training.run import ensure_ray

    if method not in method_specs():
        raise typer.BadParameter(f"method must be one of {sorted(method_specs())}")
    spec = method_specs()[method]
    threads = threads or os.cpu_count() or 2
    tmp = tempfile.mkdtemp(prefix="mdir-bench-train-")
    if data is None:
        from mdir.data.synth import synthesize

        data = os.path.join(tmp, "data")
        synthesize(data, places=4, conditions=["day", "night"], size=size, poses_per_place=6,
                   paired=("day", "night") if spec.data_mode == "paired" else None)  # fmt: skip
    cfg = load_job_config(
        None,
        [
            f"method.name={method}", f"data.uri={data}", f"data.mode={spec.data_mode}", f"data.image_size={size}",
            "data.augment=resize", "data.flip=false", "train.loader=memory", "train.epochs=1000",
            f"train.max_steps={steps + 1}", f"train.batch_size={batch_size}", "train.checkpoint_every=0",
            "train.sample_every=0", "train.evaluate=false", f"train.log_every={steps + 1}", "mlflow.enabled=false",
            f"storage.path={tmp}/runs", "storage.max_failures=0", *spec.bench_tiny,
        ],
    )  # fmt: skip
    plan = MemoryDataPlan(cfg.data, batch_size, seed=0)
    plain = _plain_loop(cfg, plan, steps, threads)
    ensure_ray()
    ray1 = _ray_run(cfg, 1, threads, "bench-1w")
    ray2 = _ray_run(cfg, 2, threads, "bench-2w")
    plain_again = _plain_loop(cfg, plan, steps, threads)  # bracket the Ray runs (noisy machine)
    base = (plain + plain_again) / 2
    result = {
        "benchmark": "train",
        "method": method,
        "steps": steps,
        "image_size": size,
        "batch_size_per_worker": batch_size,
        "threads": threads,
        "plain_steps_per_s": round(base, 3),
        "plain_runs_steps_per_s": [round(plain, 3), round(plain_again, 3)],
        "ray_1w_steps_per_s": round(ray1, 3),
        "ray_2w_steps_per_s": round(ray2, 3),
        "overhead_ratio_1w": round(base / ray1, 3),
        "within_10pct": base / ray1 <= 1.10,
        "scaling_2w_images_per_s": round(2 * ray2 / ray1, 3),
    }
    if not as_json:
        typer.echo(
            f"{method}: plain {base:.2f} steps/s | Ray 1 worker {ray1:.2f} (overhead ×{base / ray1:.2f}) | "
            f"Ray 2 workers {ray2:.2f} steps/s = ×{2 * ray2 / ray1:.2f} images/s vs 1 worker"
        )
    write_json(result, out, as_json)
