"""The method-agnostic Ray Train loop (`train_loop_per_worker`).

Per worker: seed (seed + rank), build the method on this worker's device, wrap each
trainable network in its own DDP (``broadcast_buffers=False``: BatchNorm nets run several
forwards per step, and rank 0's sample/eval forwards must not start a collective),
optimizers + LR schedulers (`Method.lr_lambda`, stepped per epoch), restore from
``ray.train.get_checkpoint()`` if any, then for each epoch: `on_epoch_start` (MDUIT
re-pairs), exactly ``steps_per_epoch`` `train_step` calls (a resumed epoch runs only the
steps not done before the checkpoint), bf16 autocast on GPU.

Rank 0 additionally: a progress line every ``log_every`` steps (step, epoch, losses,
images/s), MLflow logging through `Tracker` (never blocking), sample grids every
``sample_every`` steps, evaluation every ``eval_every`` steps (all ranks share it with
``train.eval_sharded``; `mdir.training.evaluation`), and at the end the model
card and the registration of the generator. Every rank calls ``ray.train.report`` at the
same steps (checkpoint points and the end), as Ray Train requires.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mdir.config import dump_config
from mdir.methods.base import EpochContext
from mdir.methods.specs import spec_of
from mdir.models.syncbn import convert_sync_batchnorm
from mdir.training import checkpoint as ckpt
from mdir.training import selection
from mdir.training.config import TrainJobConfig
from mdir.training.ema import EMA_FILE, GeneratorEMA, maybe_applied
from mdir.training.evaluation import GanEvaluation, translate_live
from mdir.training.watchdog import stall_message, watch_batches

log = logging.getLogger("mdir.training")

MethodFactory = Callable[[Any, torch.device], Any]


def _setup_logging() -> None:
    """One stdout handler on ``mdir.training``; its children (``.tracking``) reach it by
    propagation. A second handler on a child printed each of its records twice."""
    if not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def wrap_networks(
    method: Any,
    device: torch.device,
    world_size: int,
    find_unused: bool = False,
    sync_batchnorm: bool = False,
) -> None:
    """Move every network to `device` and wrap each trainable one in its own DDP
    (`method.networks[name]` is replaced, so the method's `train_step` runs through it);
    with `sync_batchnorm`, its BatchNorms first become cross-rank ones."""
    frozen = set(getattr(method, "frozen", ()) or ())
    for name, net in list(method.networks.items()):
        net.to(device)
        trainable = any(p.requires_grad for p in net.parameters())
        if world_size > 1 and name not in frozen and trainable:
            if sync_batchnorm:
                net = convert_sync_batchnorm(net, device.type)
            ids = [device.index] if device.type == "cuda" else None
            with (
                warnings.catch_warnings()
            ):  # torch ≥2.14 deprecates the name, not the behaviour we need
                warnings.simplefilter("ignore", FutureWarning)
                method.networks[name] = nn.parallel.DistributedDataParallel(
                    net, device_ids=ids, broadcast_buffers=False, find_unused_parameters=find_unused
                )


def to_channels_last(batch: dict[str, Any]) -> dict[str, Any]:
    """Image tensors of a batch ([B, C, H, W] floats) in channels-last memory format."""
    return {
        k: v.contiguous(memory_format=torch.channels_last)
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point()
        else v
        for k, v in batch.items()
    }


def unwrapped_networks(method: Any) -> dict[str, nn.Module]:
    return {k: ckpt.unwrap(v) for k, v in method.networks.items()}


def _amp_context(cfg: TrainJobConfig, device: torch.device):
    use = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use else nullcontext()


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point run by every Ray Train worker (see the module docstring).

    ``loop_config``: ``config`` (TrainJobConfig as a dict), ``plan`` (a `DataPlan`),
    ``steps_per_epoch`` (computed on the driver), optional ``method_factory``."""
    import ray.train
    import ray.train.torch

    _setup_logging()
    cfg = TrainJobConfig.model_validate(loop_config["config"])
    plan = loop_config["plan"]
    spe: int = int(loop_config["steps_per_epoch"])
    factory: MethodFactory | None = loop_config.get("method_factory")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # tests pass a fake evaluation (rank 0 only); ours may be sharded across the ranks
    evaluate = loop_config.get("evaluator") or GanEvaluation(rank, world, cfg.train.eval_sharded)
    every_rank_evaluates = bool(getattr(evaluate, "collective", False))
    device = ray.train.torch.get_device()
    seed_everything(cfg.train.seed + rank)
    torch.set_num_threads(
        max(1, int(os.environ.get("MDIR_TORCH_THREADS", "0")) or torch.get_num_threads())
    )

    if factory is None:
        from mdir.methods import get_method_factory

        factory = get_method_factory(cfg.method.name)
    method = factory(cfg.method, device)
    if cfg.train.channels_last:
        for net in method.networks.values():
            net.to(memory_format=torch.channels_last)
    wrap_networks(method, device, world, cfg.train.find_unused_parameters, cfg.train.sync_batchnorm)
    gen_module = ckpt.unwrap(method.generator())
    ema = GeneratorEMA(gen_module, cfg.train.ema_decay) if cfg.train.ema_decay else None
    optimizers = method.configure_optimizers()
    epochs = cfg.train.epochs
    schedulers = {
        k: torch.optim.lr_scheduler.LambdaLR(
            o, lr_lambda=lambda e, _n=epochs: method.lr_lambda(e, _n)
        )
        for k, o in optimizers.items()
    }
    total_steps = epochs * spe
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    step, start_epoch, step_in_epoch = 0, 0, 0
    run_id: str | None = None
    resumed_from = -1
    restored = ray.train.get_checkpoint()
    fatal: str | None = None
    state: dict[str, Any] = {}
    if restored is not None:
        try:
            state = _restore(restored, method, optimizers, schedulers, rank, ema)
        except ckpt.CheckpointCorruptError as e:
            fatal = str(e)
    if fatal is None:
        try:
            _check_disk_space(cfg, method, optimizers, scored=_scored(cfg), ema=ema)
        except OSError as e:
            fatal = str(e)
    if fatal is not None:
        # Deterministic: every attempt would fail the same way. Reporting (instead of
        # raising) ends the run without burning FailureConfig retries on it; the driver
        # turns ``fatal_error`` into the job's error (issue 19).
        if rank == 0:
            log.error("not training: %s", fatal)
        ray.train.report({"fatal_error": fatal, "step": step})
        return
    if restored is not None:
        step = state["step"]
        start_epoch, step_in_epoch, epoch_done = resume_position(
            state["epoch"], state["step_in_epoch"], spe
        )
        if epoch_done:  # the per-epoch LR step had not run when that checkpoint was taken
            for s in schedulers.values():
                s.step()
        run_id = state["extra"].get("mlflow_run_id") or None
        resumed_from = step
        if rank == 0:
            log.info(
                "resumed from checkpoint at step %d (epoch %d, step %d of it)",
                step,
                start_epoch,
                step_in_epoch,
            )

    tracker = _make_tracker(cfg, run_id) if rank == 0 else None
    if tracker is not None and restored is None:
        _log_start(tracker, cfg, spe, world)
    fixed = _fixed_samples(plan, cfg) if rank == 0 else None
    amp = _amp_context(cfg, device)
    images_per_step = cfg.train.batch_size * world
    last_losses: dict[str, float] = {}
    last_metrics: dict[str, float] = {}
    eval_step = -1  # the step `last_metrics` were measured at
    last_ckpt_step = step if restored is not None else -1
    t_window, n_window = time.perf_counter(), 0
    t_run, step_run = t_window, None  # ETA: mean pace since the first logged step
    t_start = time.perf_counter()
    steps_run = 0
    t_first = t_start
    steady_steps_per_s = 0.0

    def report(final: bool, final_eval: dict[str, float] | None = None) -> None:
        nonlocal last_ckpt_step
        extra = {"mlflow_run_id": tracker.run_id if tracker is not None else None}
        metrics: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "resumed_from_step": resumed_from,
            "steps_this_attempt": steps_run,
            "throughput/steps_per_s": steady_steps_per_s,
            **{f"loss/{k}": v for k, v in last_losses.items()},
        }
        if eval_step == step:  # a checkpoint carries the evaluation of its own weights only
            metrics.update(last_metrics)
        if rank == 0:
            metrics[ckpt.SCORE_KEY] = selection.score(
                metrics, cfg.storage.checkpoint_metric, cfg.storage.checkpoint_mode
            )
        upload_async = cfg.storage.upload == "async" and not final
        with _checkpoint_dir(upload_async) as d:
            if rank == 0:
                ckpt.save_training_state(
                    d,
                    networks=unwrapped_networks(method),
                    generator=ckpt.unwrap(method.generator()),
                    optimizers=optimizers,
                    schedulers=schedulers,
                    method_state=method.state_dict(),
                    step=step,
                    epoch=epoch,
                    step_in_epoch=step_in_epoch,
                    extra=extra,
                    config_yaml=dump_config(cfg),
                )
            if rank == 0 and ema is not None:
                ema.save(os.path.join(d, EMA_FILE))  # resume state
                ema.save(os.path.join(d, ckpt.GENERATOR_FILE))  # what is scored and registered
            ckpt.save_rng(d, rank)
            ckpt.write_manifest(d, rank, world)
            if final and rank == 0:
                metrics.update(
                    _finish(
                        tracker, cfg, method, d, last_metrics, final_eval or {}, fixed, plan, ema
                    )
                )
            mode = ray.train.CheckpointUploadMode.ASYNC if upload_async else None
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(d),
                **({"checkpoint_upload_mode": mode} if mode else {}),
            )
        last_ckpt_step = step

    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        if step >= total_steps:
            break
        method.on_epoch_start(
            epoch,
            EpochContext(
                epoch=epoch,
                num_epochs=epochs,
                device=device,
                rank=rank,
                world_size=world,
                store=plan.store(),
                all_reduce_mean=_all_reduce_mean,
                extra={"resumed_mid_epoch": step_in_epoch > 0},
            ),
        )
        todo = min(spe - step_in_epoch, total_steps - step)
        batches = watch_batches(
            plan.batches(todo, device),
            cfg.train.stall_timeout_s,
            lambda waited: stall_message(cfg, waited),
        )
        for batch in batches:
            if cfg.train.channels_last:
                batch = to_channels_last(batch)
            with amp:
                losses = method.train_step(batch)
            if ema is not None:
                ema.update(gen_module)
            step += 1
            step_in_epoch += 1
            steps_run += 1
            if steps_run == 1:
                t_first = time.perf_counter()  # throughput excludes the first (warm-up) step
            n_window += 1
            last_losses = {k: float(v) for k, v in losses.items()}
            if rank == 0 and (step % cfg.train.log_every == 0 or step == total_steps):
                dt = time.perf_counter() - t_window
                ips = n_window * images_per_step / max(dt, 1e-9)
                loss_txt = " ".join(f"{k}={v:.4f}" for k, v in sorted(last_losses.items()))
                if step_run is None:
                    t_run, step_run = time.perf_counter(), step
                log.info(
                    "step %d/%d epoch %d/%d %s | %.1f images/s%s",
                    step,
                    total_steps,
                    epoch + 1,
                    epochs,
                    loss_txt,
                    ips,
                    eta_text(step - step_run, time.perf_counter() - t_run, total_steps - step),
                )
                if tracker is not None:
                    tracker.log_metrics(
                        {
                            **{f"loss/{k}": v for k, v in last_losses.items()},
                            "throughput/images_per_s": ips,
                            "throughput/steps_per_s": n_window / max(dt, 1e-9),
                            "epoch": epoch,
                        },
                        step,
                    )
                t_window, n_window = time.perf_counter(), 0
            if (
                rank == 0
                and cfg.train.sample_every
                and step % cfg.train.sample_every == 0
                and step < total_steps
            ):
                with maybe_applied(ema, gen_module):
                    _log_samples(tracker, method, fixed, step)
            if (
                (rank == 0 or every_rank_evaluates)
                and cfg.train.eval_every
                and step % cfg.train.eval_every == 0
                and step < total_steps
            ):
                with maybe_applied(ema, gen_module):
                    last_metrics = evaluate(tracker, cfg, method, plan, step)
                eval_step = step
            if (
                (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0)
                or _eval_point(cfg, step)  # the scored weights must exist to be registered
            ) and step < total_steps:
                report(final=False)
            if step >= total_steps:
                break
        if step_in_epoch >= spe:
            for s in schedulers.values():
                s.step()
            step_in_epoch = 0
        if step >= total_steps:
            break
    if steps_run > 1:
        steady_steps_per_s = (steps_run - 1) / max(time.perf_counter() - t_first, 1e-9)
    if rank == 0:
        elapsed = time.perf_counter() - t_start
        log.info(
            "training done: %d steps in %.1f s (%.2f steps/s this attempt)",
            steps_run,
            elapsed,
            steps_run / max(elapsed, 1e-9),
        )
    final_eval: dict[str, float] = {}
    if cfg.train.evaluate and (rank == 0 or every_rank_evaluates):
        with maybe_applied(ema, gen_module):  # the weights the final checkpoint registers
            final_eval = evaluate(tracker, cfg, method, plan, step)
    report(final=True, final_eval=final_eval)


@contextmanager
def _checkpoint_dir(upload_async: bool) -> Iterator[str]:
    """A local directory for one checkpoint. Synchronous uploads are done when the report
    returns, so the directory goes; an asynchronous one belongs to Ray, which uploads it in
    the background and deletes it afterwards."""
    if upload_async:
        yield tempfile.mkdtemp(prefix="mdir-ckpt-")
        return
    with tempfile.TemporaryDirectory(prefix="mdir-ckpt-") as d:
        yield d


def _scored(cfg: TrainJobConfig) -> bool:
    return bool(cfg.train.evaluate)


def _eval_point(cfg: TrainJobConfig, step: int) -> bool:
    """Every rank knows where rank 0 evaluates: those steps are checkpoint steps too."""
    return bool(cfg.train.evaluate and cfg.train.eval_every and step % cfg.train.eval_every == 0)


def _restore(
    latest: Any,
    method: Any,
    optimizers: dict[str, Any],
    schedulers: dict[str, Any],
    rank: int,
    ema: GeneratorEMA | None = None,
) -> dict[str, Any]:
    """Load the newest intact checkpoint: `latest` unless its files differ from its
    manifest (truncated, zero-length, half-uploaded), then the older ones beside it, with
    a warning. Raises `CheckpointCorruptError` when none is intact, or when an intact one
    cannot be loaded (e.g. the networks' shapes changed): no retry can fix either."""
    seen: list[str] = []
    for cand in ckpt.checkpoint_candidates(latest):
        with cand.as_directory() as d:
            problems = ckpt.verify_checkpoint(d)
            if problems:
                seen.append(f"{cand.path}: {'; '.join(problems[:3])}")
                if rank == 0:
                    log.warning("checkpoint not intact, ignored: %s", seen[-1])
                continue
            if cand is not latest and rank == 0:
                log.warning("resuming from %s, the newest intact checkpoint", cand.path)
            try:
                state = ckpt.load_training_state(
                    d,
                    networks=unwrapped_networks(method),
                    optimizers=optimizers,
                    schedulers=schedulers,
                    rank=rank,
                )
                method.load_state_dict(state["method"])
                if ema is not None:
                    _restore_ema(ema, d, method, rank)
            except Exception as e:
                raise ckpt.CheckpointCorruptError(
                    f"checkpoint {cand.path} matches its manifest but cannot be loaded "
                    f"into this job: {type(e).__name__}: {e}"
                ) from e
            return state
    raise ckpt.CheckpointCorruptError(
        "no intact checkpoint to resume from: " + " | ".join(seen or [latest.path])
    )


def _restore_ema(ema: GeneratorEMA, directory: str, method: Any, rank: int) -> None:
    """The EMA of the checkpoint; one without it (EMA switched on for a resumed run) starts
    the average from the restored weights, with a warning."""
    path = os.path.join(directory, EMA_FILE)
    if os.path.exists(path):
        ema.load(path)
        return
    if rank == 0:
        log.warning("checkpoint has no %s: the EMA starts from the restored weights", EMA_FILE)
    fresh = GeneratorEMA(ckpt.unwrap(method.generator()), ema.decay)
    ema.shadow = fresh.shadow


def _check_disk_space(
    cfg: TrainJobConfig,
    method: Any,
    optimizers: dict[str, Any],
    scored: bool,
    ema: GeneratorEMA | None = None,
) -> None:
    """On local storage, refuse to start unless the disk holds the checkpoints Ray keeps
    (num_to_keep, + the latest beside the best ones when scored) and one being written."""
    import ray.train
    from pyarrow import fs as pafs

    storage = ray.train.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
        return
    per = ckpt.estimate_checkpoint_bytes(
        unwrapped_networks(method), ckpt.unwrap(method.generator()), optimizers
    )
    if ema is not None:  # ema.safetensors beside the generator file
        per += sum(v.numel() * v.element_size() for v in ema.shadow.values())
    n = cfg.storage.num_to_keep + 1 + int(scored)
    ckpt.check_disk_space(storage.experiment_fs_path, per, n)


def resume_position(epoch: int, step_in_epoch: int, steps_per_epoch: int) -> tuple[int, int, bool]:
    """Where a resumed attempt starts: (epoch, step within it, whether the checkpoint was
    taken after the last step of `epoch`). A checkpoint at an epoch's last step is saved
    before that epoch's LR-scheduler step and before the next `on_epoch_start`; resuming
    must finish the one and run the other once, not repeat the finished epoch."""
    if step_in_epoch >= steps_per_epoch:
        return epoch + 1, 0, True
    return epoch, step_in_epoch, False


# ---------------------------------------------------------------------------- rank-0 helpers


def _make_tracker(cfg: TrainJobConfig, run_id: str | None):
    from mdir.training.tracking import Tracker

    m = cfg.mlflow
    return Tracker(
        tracking_uri=m.tracking_uri,
        experiment=m.experiment,
        run_name=m.run_name or cfg.storage.name,
        run_id=run_id,
        parent_run_id=m.parent_run_id,
        tags={
            "mdir.method": cfg.method.name,
            "mdir.dataset": cfg.dataset_name(),
            "mdir.storage_name": str(cfg.storage.name),
        },
        timeout_s=m.timeout_s,
        max_retries=m.max_retries,
        buffer_size=m.buffer_size,
        enabled=m.enabled,
    )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _log_start(tracker: Any, cfg: TrainJobConfig, spe: int, world: int) -> None:
    tracker.log_params(
        {
            **flatten(cfg.model_dump(mode="json")),
            "derived.steps_per_epoch": spe,
            "derived.world_size": world,
        }
    )
    tracker.log_text(dump_config(cfg), "config/resolved_config.yaml")
    _log_dataset(tracker, cfg)
    tracker.set_tags({"mlflow.note.content": run_description(cfg, spe * cfg.train.epochs)})


def _log_dataset(tracker: Any, cfg: TrainJobConfig) -> None:
    """Name, digest and URI of the training data. The digest (sha256 of URI + manifest, first
    16 hex) includes the location: MLflow keeps one dataset per (name, digest) in an
    experiment, so identical copies at two paths would otherwise show the first path."""
    try:
        import hashlib

        from mdir.data import io
        from mdir.data.manifest import MANIFEST_NAME, read_manifest

        raw = io.read_bytes(io.join(cfg.data.uri, MANIFEST_NAME))
        name = read_manifest(cfg.data.uri).name
        digest = hashlib.sha256(cfg.data.uri.encode() + b"\n" + raw).hexdigest()[:16]
        tracker.log_dataset(name, digest, cfg.data.uri)
    except Exception as e:  # a description must not stop training
        log.warning("dataset not logged as the run's input: %s", e)


def run_description(
    cfg: TrainJobConfig, steps: int, metrics: dict[str, float] | None = None
) -> str:
    """The MLflow run page's description: method, data, schedule and headline metrics."""
    d = cfg.data
    total = min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps
    lines = [
        f"**{cfg.method.name}** on `{d.uri}` ({d.mode}: {', '.join(d.domain_a or ['all'])} → "
        f"{', '.join(d.domain_b or ['all'])}, {d.image_size} px), {total} steps × "
        f"{cfg.train.batch_size} images × {cfg.scaling.num_workers} workers.",
        "Sample grids: artifacts `samples/`; model card: `model_card.md`.",
    ]
    shown = {
        k.removeprefix("eval/"): v for k, v in (metrics or {}).items() if k.startswith("eval/")
    }
    if shown:
        lines.append(
            "Final evaluation: " + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(shown.items()))
        )
    return "\n\n".join(lines)


def _fixed_samples(
    plan: Any, cfg: TrainJobConfig
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    try:
        return plan.samples(cfg.train.num_samples)
    except Exception as e:  # a missing val split must not kill training
        log.warning("no sample images (%s); sample grids disabled", e)
        return None


def eta_text(done: int, seconds: float, remaining: int) -> str:
    """' | ETA 4m10s' at the mean pace of `done` steps in `seconds` ('' before any)."""
    if done <= 0 or seconds <= 0:
        return ""
    left = int(remaining * seconds / done)
    return f" | ETA {left // 60}m{left % 60:02d}s"


def grid_image(
    src: torch.Tensor, out: torch.Tensor, tgt: torch.Tensor | None, title: str | None = None
) -> np.ndarray:
    """Labelled grid, one row per sample: source | translation | target ([-1, 1] → uint8)."""
    from mdir.metrics.gan import unit_to_uint8
    from mdir.viz import labelled_grid

    cols = [unit_to_uint8(c.cpu()) for c in [src, out] + ([tgt] if tgt is not None else [])]
    names = ["source", "translation"] + (["target / reference"] if tgt is not None else [])
    cells = [[c[i] for c in cols] for i in range(src.shape[0])]
    return labelled_grid(cells, names, title=title)


def condition_grid(
    method: Any, plan: Any, fixed: Any, step: int, sources: int = 3
) -> np.ndarray | None:
    """Reference-guided methods (MDUIT): a few fixed sources, each translated towards one
    reference image of every condition in the data (top row: the references). None when
    the data has fewer than two conditions or no image store."""
    from mdir.metrics.gan import unit_to_uint8
    from mdir.viz import labelled_grid

    store = plan.store()
    if store is None or fixed is None:
        return None
    meta, ids = store.meta(), store.ids()
    picked = [
        (name, np.flatnonzero(meta["condition"] == ci)) for ci, name in enumerate(store.conditions)
    ]
    picked = [(name, int(ids[hit[0]])) for name, hit in picked if len(hit)]
    if len(picked) < 2:
        return None
    refs = store.load([i for _, i in picked])
    src = fixed[0][:sources]
    src_u8 = unit_to_uint8(src.cpu())
    cells = [[np.full_like(src_u8[0], 255), *unit_to_uint8(refs.cpu())]]
    for i in range(src.shape[0]):
        out = translate_live(method, src[i : i + 1].expand(len(refs), -1, -1, -1), refs)
        cells.append([src_u8[i], *unit_to_uint8(out)])
    return labelled_grid(
        cells,
        ["source"] + [name for name, _ in picked],
        ["reference"] + [f"source {i + 1}" for i in range(src.shape[0])],
        title=f"step {step}: each source towards every condition",
    )


def save_grid(
    path: str | Path,
    src: torch.Tensor,
    out: torch.Tensor,
    tgt: torch.Tensor | None,
    title: str | None = None,
) -> str:
    """`grid_image` as a PNG at `path`."""
    from PIL import Image

    Image.fromarray(grid_image(src, out, tgt, title)).save(path)
    return str(path)


def _log_samples(
    tracker: Any, method: Any, fixed: Any, step: int, out_dir: str | None = None
) -> str | None:
    if fixed is None:
        return None
    try:
        src, tgt = fixed
        out = translate_live(method, src, tgt)
        name = f"samples_step{step:07d}.png"
        if out_dir is not None:  # kept: the final grid the job reports
            path = save_grid(os.path.join(out_dir, name), src, out, tgt, title=f"step {step}")
            if tracker is not None:
                tracker.log_artifact(path, "samples")
            return path
        if tracker is not None:  # intermediate grids go to MLflow only (no file left behind)
            tracker.log_image(grid_image(src, out, tgt, title=f"step {step}"), f"samples/{name}")
        return None
    except Exception as e:
        log.warning("sample grid at step %d failed: %s", step, e)
        return None


def _finish(
    tracker: Any,
    cfg: TrainJobConfig,
    method: Any,
    ckpt_dir: str,
    metrics: dict[str, float],
    final_eval: dict[str, float],
    fixed: Any,
    plan: Any,
    ema: GeneratorEMA | None = None,
) -> dict[str, Any]:
    """Rank 0 at the end: final samples, the final evaluation's numbers (`final_eval`,
    measured by the loop just before), checkpoint artifact, model card, registration of the best-scored checkpoint's generator (the final one when nothing was
    scored). Returns what goes into the final report (run id, model URI, grid path, score).
    With an EMA, the pictures and the evaluation use the EMA weights, as registered."""
    from mdir.registry import generators as registry

    meta = ckpt.read_meta(ckpt_dir)
    step = int(meta.get("step", 0))
    out: dict[str, Any] = {}
    grid_dir = os.path.join(tempfile.gettempdir(), "mdir-samples", cfg.storage.name or "run")
    os.makedirs(grid_dir, exist_ok=True)
    with maybe_applied(ema, ckpt.unwrap(method.generator())):
        grid = _log_samples(tracker, method, fixed, step, out_dir=grid_dir)
    if grid:
        out["sample_grid"] = grid
    if tracker is not None and spec_of(cfg.method).needs_reference:
        try:
            with maybe_applied(ema, ckpt.unwrap(method.generator())):
                arr = condition_grid(method, plan, fixed, step)
            if arr is not None:
                tracker.log_image(arr, f"samples/conditions_step{step:07d}.png")
        except Exception as e:  # a picture must not fail the run
            log.warning("condition grid at step %d failed: %s", step, e)
    final_metrics = {**metrics, **final_eval}
    out.update(final_metrics)
    final_score = selection.score(
        final_eval, cfg.storage.checkpoint_metric, cfg.storage.checkpoint_mode
    )
    out[ckpt.SCORE_KEY] = final_score
    if tracker is None or not tracker.enabled:
        return out
    for f in (ckpt.GENERATOR_FILE, ckpt.STATE_FILE, ckpt.CONFIG_FILE, ckpt.META_FILE):
        p = os.path.join(ckpt_dir, f)
        if os.path.exists(p):
            tracker.log_artifact(p, "checkpoint")
    if os.path.exists(os.path.join(ckpt_dir, ckpt.NETWORKS_FILE)):
        tracker.log_artifact(os.path.join(ckpt_dir, ckpt.NETWORKS_FILE), "checkpoint")
    work = tempfile.mkdtemp(prefix="mdir-registered-")
    gen_path, reg_step, reg_metrics = _registered_generator(
        ckpt_dir, step, final_score, final_metrics, work
    )
    out["registered_step"] = reg_step
    tracker.set_tags(
        {
            "mdir.registered_step": str(reg_step),
            "mdir.final_step": str(step),
            "mdir.generator_weights": _weights_label(ema),
            "mlflow.note.content": run_description(cfg, step, final_metrics),
        }
    )
    tracker.log_text(registry.model_card(cfg, reg_metrics, reg_step), "model_card.md")
    model_uri = None
    if cfg.mlflow.register:
        version_tags = {
            "mdir.checkpoint_step": str(reg_step),
            "mdir.generator_weights": _weights_label(ema),
        }
        key = selection.selection_key(reg_metrics, cfg.storage.checkpoint_metric)
        if key:
            version_tags["mdir.selection_metric"] = key.removeprefix("eval/")
        model_uri = tracker.call_now(
            lambda c, rid: registry.register_generator(
                cfg, gen_path, run_id=rid, metrics=reg_metrics, client=c, tags=version_tags
            ),
            timeout=max(60.0, 6 * cfg.mlflow.timeout_s),
        )
    tracker.close(flush_timeout=cfg.mlflow.flush_timeout_s)
    out["mlflow_run_id"] = tracker.run_id
    if model_uri:
        out["model_uri"] = model_uri
    return out


def _weights_label(ema: GeneratorEMA | None) -> str:
    """What the registered generator file holds: ``raw`` or ``ema(<decay>)``."""
    return "raw" if ema is None else f"ema({ema.decay:g})"


def _registered_generator(
    ckpt_dir: str, step: int, final_score: float, final_metrics: dict[str, Any], work: str
) -> tuple[str, int, dict[str, Any]]:
    """(generator file, step, its eval metrics) of the best-scored point among the
    checkpoints Ray Train kept (it keeps the best by `SCORE_KEY`) and the final state.
    The chosen file is checked against its checkpoint's manifest before it is registered."""
    import ray.train

    candidates: list[tuple[int, float, Any]] = [(step, final_score, None)]
    try:
        reported = ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120
        )
    except Exception as e:  # noqa: BLE001 - then the final weights, said loudly
        log.warning("cannot list the kept checkpoints (%s); registering the final weights", e)
        reported = []
    for rc in reported:
        m = rc.metrics or {}
        s, st = m.get(ckpt.SCORE_KEY), m.get("step")
        if isinstance(s, int | float) and isinstance(st, int | float):
            candidates.append((int(st), float(s), rc))
    best = selection.best_point(candidates)
    final_gen = os.path.join(ckpt_dir, ckpt.GENERATOR_FILE)
    if best is None or best[2] is None:
        return final_gen, step, final_metrics
    rc = best[2]
    try:
        path = ckpt.fetch_verified_file(rc.checkpoint, ckpt.GENERATOR_FILE, work)
    except Exception as e:  # noqa: BLE001
        log.warning(
            "best checkpoint (step %d) %s unusable (%s); registering the final weights",
            best[0],
            rc.checkpoint.path,
            e,
        )
        return final_gen, step, final_metrics
    log.info(
        "registering the best-scored checkpoint: step %d (final step %d) from %s",
        best[0],
        step,
        rc.checkpoint.path,
    )
    return str(path), best[0], {k: v for k, v in rc.metrics.items() if k.startswith("eval/")}
