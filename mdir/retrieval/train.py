"""Distributed GeM fine-tuning on Ray Train (thesis 3.3–3.4; Radenović et al. TPAMI 2018).

Per epoch, on every rank:

1. **mine** (`mdir.retrieval.mining`): draw queries and a pool with an epoch-seeded RNG
   (identical on all ranks), embed them with the current network — extraction is sharded
   over the ranks and all-gathered — and select tuples (q, p, n1..n5);
2. **train**: the global batch of `optim.batch_size` tuples is split evenly over the ranks
   (same number of steps everywhere, so DDP never waits on a missing rank); images of a
   rank's tuples are loaded in a background thread (prefetch, so the store/decoder does
   not block the step), optionally GAN-augmented on the worker's device, embedded, and the
   contrastive loss is back-propagated. The loss is cirtorch's *sum* over the pairs of the
   global batch: each rank computes its local sum × world size, and DDP's gradient
   averaging turns that into the gradient of the global sum, so 1 and N workers take the
   same step;
3. **evaluate** (every `eval.every` epochs) and **report** metrics + checkpoint (rank 0
   logs through training's buffered `Tracker`: metrics survive an MLflow outage).

After the last epoch, the learned whitening Lw is computed from matching training pairs
and installed in the network, the final evaluation runs with it, and the network is saved
in the final checkpoint; the driver (`run_training`) logs and registers it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdir.config import dump_config
from mdir.registry.aliases import ResolvedModel, resolve_model
from mdir.retrieval.augment import GanAugmenter
from mdir.retrieval.checkpoint import load_checkpoint, save_checkpoint
from mdir.retrieval.config import RetrievalJobConfig
from mdir.retrieval.data import Images, SplitData, open_split, to_device
from mdir.retrieval.descriptors import extract
from mdir.retrieval.evaluate import EvalSet, evaluate_model
from mdir.retrieval.mining import draw_queries_and_pool, mine_tuples
from mdir.retrieval.registry import load_model_files, log_and_register
from mdir.retrieval.whitening import Whitening
from mdir.training.tracking import Tracker

log = logging.getLogger(__name__)

FINAL_DIR = "final_model"


# ----------------------------------------------------------------------------- driver side


class LaunchError(RuntimeError):
    """The job cannot start (bad data URI, unresolvable generator, ...); raised before Ray."""


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    run_id: str | None
    model_uri: str | None
    generator: dict[str, Any] | None
    augment: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    descriptors: dict[str, list] | None = None
    #: per epoch: the seed, a digest of the drawn queries + pool, the steps (the comparison
    #: checks that both arms followed the same plan)
    plan: list[dict[str, Any]] = field(default_factory=list)


def validate_before_launch(cfg: RetrievalJobConfig) -> ResolvedModel | None:
    """Fail fast, before any cluster resources: dataset reachable, generator alias resolvable."""
    from mdir.data.io import check_reachable

    try:
        check_reachable(cfg.data.uri, manifest=True)
    except Exception as e:
        raise LaunchError(f"data.uri: {e}") from e
    if cfg.eval.uri:
        try:
            check_reachable(cfg.eval.uri, manifest=True)
        except Exception as e:
            raise LaunchError(f"eval.uri: {e}") from e
    if cfg.data.pairs_file and not Path(cfg.data.pairs_file).is_file():
        raise LaunchError(f"data.pairs_file: {cfg.data.pairs_file} does not exist")
    if cfg.data.positives == "pairs" and not cfg.data.pairs_file:
        from mdir.data.manifest import read_manifest

        layout = (read_manifest(cfg.data.uri).extra or {}).get("layout", {}) or {}
        if not (layout.get("pairs") or {}).get(cfg.data.train_split):
            raise LaunchError(
                f"data.positives=pairs: no data.pairs_file and the manifest of {cfg.data.uri} "
                f"has no query/positive pairs for split {cfg.data.train_split!r}"
            )
    if cfg.augment.dataset:
        from mdir.retrieval.augment import translation_provenance

        try:
            check_reachable(cfg.augment.dataset, manifest=True)
            translation_provenance(cfg.augment.dataset)
        except Exception as e:
            raise LaunchError(f"augment.dataset: {e}") from e
    if not cfg.augment.generator:
        return None
    from mdir.registry.uri import ModelNotFoundError

    try:
        return resolve_model(cfg.augment.generator, field="augment.generator")
    except ModelNotFoundError as e:
        raise LaunchError(str(e)) from e


def _flat_params(cfg: RetrievalJobConfig) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else k, sub)
        else:
            out[prefix] = str(v)[:500]

    walk("", cfg.model_dump(mode="json"))
    out["mining.margin_resolved"] = str(cfg.margin)
    out["optim.lr_resolved"] = str(cfg.lr)
    return out


def run_training(
    cfg: RetrievalJobConfig,
    *,
    run_name: str | None = None,
    return_descriptors: bool = False,
    tags: dict[str, str] | None = None,
    local: bool = False,
) -> RetrievalResult:
    """Validate, start an MLflow run, fit the `TorchTrainer`, register the model.

    `local=True` runs the same loop in this process (one worker, no Ray) — for debugging and
    as the single-process reference in tests."""
    import mlflow
    from mlflow import MlflowClient

    if local and cfg.scaling.num_workers != 1:
        raise LaunchError("local runs use one worker: set scaling.num_workers=1")
    generator = validate_before_launch(cfg)
    tracking_uri = mlflow.get_tracking_uri()
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow.experiment)
    run_tags = {"mdir.job": "retrieval", "mdir.dataset": cfg.dataset_name, **(tags or {})}
    if generator:
        run_tags.update(
            {
                "augment.generator_uri": generator.uri,
                "augment.generator_name": generator.name,
                "augment.generator_version": generator.version,
                "augment.generator_run_id": generator.run_id or "",
            }
        )
    provenance = None
    if cfg.augment.dataset:  # translations read from a dataset: record which model made them
        from mdir.retrieval.augment import translation_provenance

        provenance = translation_provenance(cfg.augment.dataset)
        run_tags.update({f"augment.dataset_{k}": v for k, v in provenance.items()})
    run = client.create_run(exp_id, run_name=run_name or cfg.mlflow.run_name, tags=run_tags)
    run_id = run.info.run_id
    params = _flat_params(cfg)
    if generator:
        params["augment.generator_version"] = generator.version
    if provenance:
        params["augment.dataset_model_version"] = provenance["model_version"]
    for k, v in params.items():
        client.log_param(run_id, k, v)
    client.log_text(run_id, dump_config(cfg), "config.yaml")

    name = (
        cfg.storage.name
        or f"retrieval-{cfg.dataset_name}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:8]}"
    )
    storage = (
        cfg.storage.path if "://" in cfg.storage.path else str(Path(cfg.storage.path).resolve())
    )
    loop_cfg = {
        "cfg": cfg.model_dump(mode="json"),
        "generator": generator.pinned_uri if generator else None,
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "return_descriptors": return_descriptors,
    }
    try:
        if local:
            with tempfile.TemporaryDirectory() as tmp:
                out = train_local(loop_cfg, Path(tmp) / "ckpt")
                final_dir = Path(tmp) / "ckpt" / FINAL_DIR
                model_uri = _register(
                    cfg, run_id, final_dir, generator, out.get("metrics", {}), client
                )
        else:
            out = _fit_on_ray(cfg, loop_cfg, name, storage)
            model_uri = None
            if out.get("_checkpoint") is not None:
                with out.pop("_checkpoint").as_directory() as d:
                    model_uri = _register(
                        cfg, run_id, Path(d) / FINAL_DIR, generator, out.get("metrics", {}), client
                    )
        client.set_terminated(run_id, status="FINISHED")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    metrics = out.get("metrics", {})
    return RetrievalResult(
        metrics=metrics,
        run_id=run_id,
        model_uri=model_uri,
        generator={"uri": generator.uri, "name": generator.name, "version": generator.version}
        if generator
        else None,
        augment=out.get("augment", {}),
        history=out.get("history", []),
        descriptors=out.get("descriptors"),
        plan=out.get("plan", []),
    )


def _fit_on_ray(cfg: RetrievalJobConfig, loop_cfg: dict, name: str, storage: str) -> dict[str, Any]:
    """Fit the `TorchTrainer`; returns rank 0's return value plus ``_checkpoint`` (final)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mdir.runtime import worker_runtime_env

    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=0),
            worker_runtime_env=worker_runtime_env(),
        ),
    )
    result = trainer.fit()
    out: dict[str, Any] = dict(result.return_value or {})
    out["_checkpoint"] = result.checkpoint
    return out


def _register(
    cfg: RetrievalJobConfig, run_id: str, final_dir: Path, generator, metrics: dict, client
) -> str | None:
    """Log the final network (with Lw) to the run and register it (alias `mlflow.alias`)."""
    model, _ = load_model_files(final_dir)
    extra = {"generator": generator.pinned_uri if generator else None, "metrics": metrics}
    name = cfg.model_name if cfg.mlflow.register_model else None
    uri = log_and_register(model, run_id, name, cfg.mlflow.alias, extra)
    finite = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }
    from mdir.registry.aliases import set_version_tag

    for k in ("recall_at_1/night", "recall_at_1/day", "map"):
        if k in finite and name:
            mv = client.get_model_version_by_alias(name, cfg.mlflow.alias)
            set_version_tag(client, name, mv.version, "metric." + k, f"{finite[k]:.6g}")
    return uri


# ----------------------------------------------------------------------------- worker side


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of `values` (what the tracker gets: MLflow rejects NaN / inf)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }


def _freeze_batchnorm(m: torch.nn.Module) -> None:
    """BatchNorm layers (ResNet trunks) keep their ImageNet statistics while fine-tuning
    (cirtorch ``set_batchnorm_eval``): tuples are embedded in shape groups or one image at a
    time, whose batch statistics would be meaningless."""
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.eval()


def _contrastive(desc: torch.Tensor, tuple_len: int, margin: float) -> torch.Tensor:
    """Contrastive loss over consecutive tuples [q, p, n1..] (``mdir.losses.contrastive_loss``)."""
    from mdir.losses import contrastive_loss

    n_tuples = desc.shape[0] // tuple_len
    one = torch.tensor([-1, 1] + [0] * (tuple_len - 2), device=desc.device)
    return contrastive_loss(desc, one.repeat(n_tuples), margin=margin)


def _make_augmenter(
    loop_cfg: dict, cfg: RetrievalJobConfig, data: SplitData, rank: int, device
) -> tuple[GanAugmenter | None, dict]:
    if cfg.augment.dataset:
        return _dataset_augmenter(cfg, rank)
    uri = loop_cfg.get("generator")
    if not uri:
        return None, {}
    from mdir.registry.generators import load_translator

    translator = load_translator(uri, device=device)
    method = str(getattr(translator, "method", ""))
    needs_ref = bool(getattr(translator, "needs_reference", False))
    ref_data = data
    ref_rows = data.rows_with_condition([cfg.augment.target_condition])
    if needs_ref and len(ref_rows) == 0:
        # the tuples may exclude the target condition (e.g. train without night images): draw
        # MDUIT appearance references from the whole training split instead
        ref_data = open_split(
            cfg.data.uri,
            cfg.data.train_split,
            cfg.data.train_max_side,
            [cfg.augment.target_condition],
        )
        ref_rows = np.arange(len(ref_data), dtype=np.int64)

    def draw_reference(n: int, rng: np.random.Generator) -> Images:
        return ref_data.load(rng.choice(ref_rows, size=n, replace=True).tolist())

    aug = GanAugmenter(
        translator,
        probability=cfg.augment.probability,
        pad_multiple=cfg.augment.pad_multiple,
        needs_reference=needs_ref,
        draw_reference=draw_reference,
        seed=cfg.seed * 1000 + rank,
    )
    info = {"uri": uri, "version": str(getattr(translator, "version", "")), "method": method}
    return aug, info


def _dataset_augmenter(cfg: RetrievalJobConfig, rank: int) -> tuple[GanAugmenter, dict]:
    """`DatasetAugmenter` over the train split of ``augment.dataset`` (translations looked
    up by source id, loaded at the training size like the source images)."""
    from mdir.retrieval.augment import DatasetAugmenter, translation_provenance

    uri = str(cfg.augment.dataset)
    split = open_split(uri, cfg.data.train_split, cfg.data.train_max_side)
    row_of = {int(i): r for r, i in enumerate(split.ids)}
    aug = DatasetAugmenter(
        lambda ids: split.load([row_of[int(i)] for i in ids]),
        split.ids,
        probability=cfg.augment.probability,
        seed=cfg.seed * 1000 + rank,
    )
    prov = translation_provenance(uri)
    info = {"uri": uri, "version": prov["model_version"], "method": "dataset:" + prov["model_name"]}
    return aug, info


@dataclass
class WorkerEnv:
    """What the loop needs from its runtime: Ray Train workers, or this process (`--local`)."""

    rank: int
    world: int
    device: torch.device
    wrap: Any  # nn.Module -> nn.Module (DDP under Ray with world > 1)
    report: Any  # (metrics, checkpoint directory | None) -> None
    resume_from: Any = None  # () -> context manager yielding a checkpoint dir, or None


def _ray_env() -> WorkerEnv:
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    ctx = ray.train.get_context()
    world = ctx.get_world_size()

    def report(metrics: dict, directory: str | None) -> None:
        ray.train.report(
            metrics, checkpoint=Checkpoint.from_directory(directory) if directory else None
        )

    ckpt = ray.train.get_checkpoint()
    return WorkerEnv(
        rank=ctx.get_world_rank(),
        world=world,
        device=get_device(),
        wrap=(lambda m: prepare_model(m)) if world > 1 else (lambda m: m),
        report=report,
        resume_from=ckpt.as_directory if ckpt is not None else None,
    )


def train_worker(loop_cfg: dict) -> dict[str, Any]:
    """Ray Train per-worker loop (see the module docstring)."""
    return _train(loop_cfg, _ray_env())


def train_local(loop_cfg: dict, out_dir: Path) -> dict[str, Any]:
    """The same loop in this process, one worker, no Ray (`--local`, tests, debugging); the
    final checkpoint is copied to `out_dir`."""
    import shutil

    def report(metrics: dict, directory: str | None) -> None:
        if directory and (Path(directory) / FINAL_DIR).is_dir():
            shutil.copytree(directory, out_dir, dirs_exist_ok=True)

    env = WorkerEnv(rank=0, world=1, device=torch.device("cpu"), wrap=lambda m: m, report=report)
    return _train(loop_cfg, env)


def _train(loop_cfg: dict, env: WorkerEnv) -> dict[str, Any]:
    import torch.distributed as dist

    cfg = RetrievalJobConfig.model_validate(loop_cfg["cfg"])
    if loop_cfg.get("tracking_uri"):
        # workers do not inherit the driver's environment: the generator download and the
        # metric logging must talk to the driver's tracking server
        import mlflow

        mlflow.set_tracking_uri(loop_cfg["tracking_uri"])
    rank, world, device = env.rank, env.world, env.device
    distributed = world > 1 and dist.is_initialized()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # training's tracker: buffered and retried, so metrics survive an MLflow outage; the
    # driver created the run and ends it (end_run=False below)
    run_id = loop_cfg.get("run_id")
    tracker = Tracker(
        loop_cfg.get("tracking_uri"),
        cfg.mlflow.experiment,
        run_id=run_id,
        enabled=rank == 0 and bool(run_id),
    )

    d = cfg.data
    data = open_split(
        d.uri,
        d.train_split,
        d.train_max_side,
        d.train_conditions or None,
        d.positives,
        d.max_translation_m,
        d.max_rotation_deg,
        d.pairs_file,
    )
    eval_set = EvalSet.open(cfg, uri=cfg.eval.uri)

    from mdir.retrieval.model import build_model

    model = build_model(cfg.model).to(device)
    net = env.wrap(model)
    pool_params = list(model.net.pool.parameters())
    pool_ids = {id(p) for p in pool_params}
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if id(p) not in pool_ids]},
            # cirtorch: GeM p learns 10× faster and without weight decay
            {"params": pool_params, "lr": cfg.lr * 10, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=math.exp(-cfg.optim.lr_decay)
    )
    augmenter, gen_info = _make_augmenter(loop_cfg, cfg, data, rank, device)
    eligible_rows = np.zeros(len(data), dtype=bool)
    eligible_rows[data.rows_with_condition(cfg.augment.source_conditions)] = True

    start_epoch, history = 0, []
    plan: list[dict[str, Any]] = []
    if env.resume_from is not None:  # resume (worker restart or re-submitted run name)
        with env.resume_from() as cd:
            st = load_checkpoint(cd, model, optimizer, scheduler, rank)
            start_epoch, history = st["epoch"] + 1, st.get("history", [])
            if augmenter is not None and "augment" in st:
                augmenter.counter.seen = st["augment"]["seen"]
                augmenter.counter.applied = st["augment"]["applied"]

    all_rows = np.arange(len(data), dtype=np.int64)
    trainable = data.matching.queries_with_positives(all_rows, all_rows)
    if len(trainable) == 0:
        raise ValueError(
            "no training query has a positive: check data.positives and the thresholds"
        )
    B = cfg.optim.batch_size
    b = B // world
    tuple_len = 2 + cfg.mining.neg_num
    prefetch = ThreadPoolExecutor(max_workers=1)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.time()
        rng = np.random.default_rng([cfg.seed, epoch])
        queries, pool = draw_queries_and_pool(
            rng, trainable, all_rows, cfg.mining.query_size, cfg.mining.pool_size
        )
        tuples, mstats = mine_tuples(
            model,
            data.load,
            data.matching,
            queries,
            pool,
            all_rows,
            cfg.mining.neg_num,
            device,
            cfg.mining.batch_size,
        )
        tuples = tuples[rng.permutation(len(tuples))]
        steps = len(tuples) // B
        if cfg.optim.steps_per_epoch:
            steps = min(steps, cfg.optim.steps_per_epoch)
        draw = hashlib.sha256(np.concatenate([queries, pool]).astype(np.int64).tobytes())
        plan.append(
            {"epoch": epoch, "seed": cfg.seed, "draw": draw.hexdigest()[:16], "steps": steps}
        )
        if steps == 0:
            raise ValueError(
                f"epoch {epoch}: only {len(tuples)} tuples mined, fewer than optim.batch_size={B}"
            )

        def local_rows(s: int, tuples: np.ndarray = tuples) -> np.ndarray:
            return tuples[s * B + rank * b : s * B + (rank + 1) * b].reshape(-1)

        net.train()
        model.apply(_freeze_batchnorm)
        loss_sum = torch.zeros(1, device=device, dtype=torch.float64)
        fut = prefetch.submit(data.load, local_rows(0).tolist())
        for s in range(steps):
            rows = local_rows(s)
            images = to_device(fut.result(), device)
            if s + 1 < steps:
                fut = prefetch.submit(data.load, local_rows(s + 1).tolist())
            if augmenter is not None:
                # draws for the whole global batch from a (seed, epoch, step) generator, each rank
                # taking its slice: the same images are translated on 1 or N workers
                step_rng = np.random.default_rng([cfg.seed, epoch, s, 7])
                u = step_rng.random(B * tuple_len)[
                    rank * b * tuple_len : (rank + 1) * b * tuple_len
                ]
                ref_rng = np.random.default_rng([cfg.seed, epoch, s, 8, rank])
                images, _ = augmenter(
                    images,
                    eligible=eligible_rows[rows],
                    uniforms=u,
                    ref_rng=ref_rng,
                    ids=data.ids[rows],
                )
            desc = net(images)
            loss = _contrastive(desc, tuple_len, cfg.margin)
            optimizer.zero_grad(set_to_none=True)
            (loss * world).backward()
            optimizer.step()
            loss_sum += loss.detach().double()
        scheduler.step()
        if distributed:
            dist.all_reduce(loss_sum)
        epoch_metrics: dict[str, float] = {
            "epoch": epoch,
            "loss": float(loss_sum.item()) / (steps * B),  # per tuple
            "steps": steps,
            "gem_p": float(model.net.pool.p.detach().mean()),
            "lr": scheduler.get_last_lr()[0],
            "mining/tuples": mstats.queries,
            "mining/short_of_negatives": mstats.short_of_negatives,
            "mining/pos_sim": mstats.mean_positive_sim,
            "mining/neg_sim": mstats.mean_negative_sim,
            "epoch_s": time.time() - t0,
        }
        if augmenter is not None:
            counts = torch.tensor(
                [augmenter.counter.seen, augmenter.counter.applied, augmenter.counter.failed],
                device=device,
                dtype=torch.float64,
            )
            if distributed:
                dist.all_reduce(counts)
            epoch_metrics.update(
                {
                    "augment/seen": counts[0].item(),
                    "augment/applied": counts[1].item(),
                    "augment/failed": counts[2].item(),
                    "augment/rate": counts[1].item() / max(counts[0].item(), 1.0),
                }
            )
        last = epoch == cfg.optim.epochs - 1
        if not last and cfg.eval.every and (epoch + 1) % cfg.eval.every == 0:
            epoch_metrics.update(
                evaluate_model(model, eval_set, cfg.eval, device, cfg.mining.batch_size)
            )
        history.append(epoch_metrics)
        tracker.log_metrics(
            _finite({k: v for k, v in epoch_metrics.items() if k != "epoch"}), epoch
        )
        state = {"history": history}
        if augmenter is not None:
            state["augment"] = augmenter.counter.as_dict()
        if last:
            break
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_checkpoint(tmp, model, optimizer, scheduler, epoch, state)
            env.report(epoch_metrics, tmp if rank == 0 else None)
    prefetch.shutdown()

    # --- learned whitening Lw from matching training pairs (post-processing, stored in the net)
    final: dict[str, float] = {}
    if cfg.model.whitening:
        vecs = extract(model, data.load, all_rows, device=device, batch_size=cfg.mining.batch_size)
        qi, pi = _whitening_pairs(vecs, trainable, data)
        final["whitening/pairs"] = len(qi)
        final.update(
            {
                f"nowhite/{k}": v
                for k, v in evaluate_model(
                    model, eval_set, cfg.eval, device, cfg.mining.batch_size
                ).items()
            }
        )
        model.set_whitening(Whitening.learn(vecs, qi, pi, dim=cfg.model.whitening_dim))
    final.update(evaluate_model(model, eval_set, cfg.eval, device, cfg.mining.batch_size))
    metrics = {**(history[-1] if history else {}), **final}
    tracker.log_metrics(_finite(final), cfg.optim.epochs)
    tracker.close(flush_timeout=30.0, end_run=False)

    out: dict[str, Any] = {
        "metrics": metrics,
        "history": history,
        "generator": gen_info,
        "plan": plan,
    }
    if augmenter is not None:
        out["augment"] = {
            k: metrics.get(f"augment/{k}") for k in ("seen", "applied", "failed", "rate")
        }
    if loop_cfg.get("return_descriptors"):
        vecs = extract(
            model,
            eval_set.data.load,
            np.arange(len(eval_set.data)),
            device=device,
            batch_size=cfg.mining.batch_size,
        )
        out["descriptors"] = {"rows": eval_set.data.ids.tolist(), "vecs": vecs.tolist()}
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            from mdir.retrieval.registry import save_model_files

            save_model_files(
                model, Path(tmp) / FINAL_DIR, {"metrics": metrics, "generator": gen_info}
            )
            # written after the model files: the manifest (written last) covers them too
            st = {"history": history, "final": True}
            save_checkpoint(tmp, model, optimizer, scheduler, cfg.optim.epochs - 1, st)
        env.report(metrics, tmp if rank == 0 else None)
    return out


def _whitening_pairs(
    vecs: np.ndarray, queries: np.ndarray, data: SplitData
) -> tuple[np.ndarray, np.ndarray]:
    """One pair per training query: its most similar matching image (under the trained net)."""
    all_rows = np.arange(len(data))
    qi, pi = [], []
    for q in queries:
        m = data.matching.positive_mask(int(q), all_rows)
        cand = np.flatnonzero(m)
        if len(cand) == 0:
            continue
        best = cand[np.argmax(vecs[cand] @ vecs[q])]
        qi.append(int(q))
        pi.append(int(best))
    return np.asarray(qi, dtype=np.int64), np.asarray(pi, dtype=np.int64)
