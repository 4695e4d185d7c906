"""Launch a training job on Ray Train: validate, build the `TorchTrainer`, fit, summarise.

`validate_before_launch` fails fast, before any worker starts and without importing
torch, with a `ConfigError` naming the field: method/data mode mismatch (``data.mode``),
image size vs the networks' down-samplings (``data.image_size``, ``method.num_downs``),
missing VGG-16 weights for MDUIT (``method.vgg_weights``), dataset missing or without the
split (``data.uri`` / ``data.train_split``), unreachable storage (``storage.path``, bounded
by ``storage.check_timeout_s``), a resource plan (training workers + Ray Data tasks +
evaluation) larger than the cluster (``scaling.*``, ``data.parallelism``,
``data.task_cpus``), a local ``data.uri`` the cluster's nodes cannot see. The rules live in
`mdir.training.preflight`.

`build_trainer` wires the method-agnostic loop (`mdir.training.loop`) into a
`TorchTrainer`: ``ScalingConfig(num_workers, use_gpu, resources_per_worker)``, gloo on
CPU / NCCL on GPU, the Ray datasets of the `DataPlan` via ``datasets=``,
``RunConfig(storage_path, name, FailureConfig(max_failures), CheckpointConfig)``. Ray 2.60
Train V2: there is no ``Trainer.restore`` — the same ``storage.path`` + ``storage.name``
resumes from the latest checkpoint (also after the driver died).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mdir.config import ConfigError
from mdir.training.config import TrainJobConfig

log = logging.getLogger("mdir.training")


@dataclass
class TrainResult:
    """What `train` returns (and the job files print as one JSON line)."""

    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: str | None = None
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    sample_grid: str | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "run_name": self.name,
            "run_id": self.mlflow_run_id,
            "model_uri": self.model_uri,
            "sample_grid": self.sample_grid,
            "checkpoint": self.checkpoint_path,
            "step": self.metrics.get("step"),
            "metrics": {k: v for k, v in self.metrics.items() if k.startswith(("eval/", "loss/"))},
            "error": self.error,
        }


def resolve_names(cfg: TrainJobConfig) -> TrainJobConfig:
    """Fill ``storage.name`` (<method>-<dataset>-<UTC timestamp>) when unset."""
    if cfg.storage.name:
        return cfg
    name = f"{cfg.method.name}-{cfg.dataset_name()}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"name": name})})


def _check_storage(path: str, timeout_s: float | None = None) -> None:
    from mdir.data import io

    if io.is_remote(path):
        try:
            io.check_reachable(path, must_exist=False, timeout_s=timeout_s)
        except io.DataPathError as e:
            raise ConfigError(f"storage.path: {e}") from None
        return
    p = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(p, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"storage.path: cannot create {p!r}: {e}") from None
    if not os.access(p, os.W_OK):
        raise ConfigError(f"storage.path: {p!r} is not writable")


def _check_data(cfg: TrainJobConfig) -> None:
    from mdir.data import io
    from mdir.data.manifest import read_manifest

    try:
        io.check_reachable(cfg.data.uri, manifest=True, timeout_s=cfg.storage.check_timeout_s)
        m = read_manifest(cfg.data.uri)
    except Exception as e:
        raise ConfigError(f"data.uri: {e}") from None
    # the validation split feeds evaluation (FID curves, Tune's ranking): without it a run
    # (or every trial of a sweep) would train to the end and never report its metric
    fields = ("train_split", "val_split") if cfg.train.evaluate else ("train_split",)
    for fld in fields:
        split = getattr(cfg.data, fld)
        if split not in m.splits:
            hint = " (or train.evaluate=false)" if fld == "val_split" else ""
            raise ConfigError(
                f"data.{fld}: split {split!r} not in {cfg.data.uri!r} (has {m.splits}){hint}"
            )
    # Paired rows carry domain A's condition only (image_b is the other domain) and the
    # paired pipeline does not filter by condition, so domains are checked for the others.
    domain_fields = () if cfg.data.mode == "paired" else ("domain_a", "domain_b")
    for fld in domain_fields:
        bad = [c for c in getattr(cfg.data, fld) if c not in m.conditions]
        if bad:
            raise ConfigError(f"data.{fld}: unknown conditions {bad} (dataset has {m.conditions})")
    if cfg.data.mode == "paired" and not m.paired:
        raise ConfigError(
            f"data.mode: 'paired' but {cfg.data.uri!r} has no image_b (not a paired dataset)"
        )


def _check_method(cfg: TrainJobConfig) -> None:
    """Data mode, shape limits and MDUIT's VGG weights, from the config alone (no torch:
    the method's data mode is a class attribute of its config)."""
    from mdir.training import preflight

    mode = getattr(type(cfg.method), "data_mode", None)
    if mode is not None and mode != cfg.data.mode:
        raise ConfigError(
            f"data.mode: method {cfg.method.name!r} needs data mode {mode!r}, config has {cfg.data.mode!r}"
        )
    preflight.check_shapes(cfg)
    preflight.check_vgg_weights(cfg)


def check_resources(cfg: TrainJobConfig, *, check_data: bool = True) -> None:
    """Compare the whole plan (training workers + Ray Data tasks + evaluation) with the
    connected cluster's totals (Ray must be initialised; see `mdir.training.preflight`),
    and, with `check_data`, look for a local ``data.uri`` on every node."""
    import ray

    from mdir.training import preflight

    if cfg.scaling.cluster_config:  # an autoscaling cluster: check against its node types
        from mdir.training import autoscale

        types = autoscale.node_types_from_file(cfg.scaling.cluster_config)
        log.info("resource plan: %s", autoscale.check_autoscale_plan(cfg, types))
        log.info("the cluster has %s now", ray.cluster_resources())
    else:
        plan = preflight.check_plan(cfg, ray.cluster_resources())
        log.info("resource plan: %s", plan.describe(cfg))
    if check_data:
        check_visible_on_cluster(cfg.data.uri, "data.uri", timeout_s=cfg.storage.check_timeout_s)


def _path_exists(path: str) -> bool:
    return os.path.exists(path)


def check_visible_on_cluster(uri: str, field: str, timeout_s: float = 30.0) -> None:
    """A local `uri` must exist on every alive node (workers read it there): one zero-CPU
    task per node, pinned to it, looks. Remote URIs pass; a check that cannot run within
    `timeout_s` only warns (the run may still work)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from mdir.data import io

    if io.is_remote(uri):
        return
    path = io.absolute_local(uri).removeprefix("file://")
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_path_exists)
    refs = {
        n["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(path)
        for n in nodes
    }
    try:
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s), strict=True))
    except Exception as e:  # GetTimeoutError, a node lost meanwhile
        log.warning("%s: could not check %r on the cluster's nodes (%s)", field, path, e)
        return
    blind = sorted(node for node, ok in seen.items() if not ok)
    if blind:
        raise ConfigError(
            f"{field}: {path!r} is not visible on the cluster node(s) {blind} (workers read it "
            "there); "
            "put the data on storage every node sees (a shared filesystem or s3://)"
        )


def _check_evaluation(cfg: TrainJobConfig) -> None:
    """Evaluation that was asked for and cannot run (no FID weights) fails now, not as a
    warning after hours of training with a registered model that has no metrics."""
    from mdir.metrics.gan import check_evaluation_ready

    try:
        check_evaluation_ready(cfg.eval)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None


def validate_before_launch(
    cfg: TrainJobConfig, *, check_data: bool = True, check_cluster: bool = True
) -> None:
    """Every check that can fail before a worker starts (see the module docstring)."""
    from mdir.training import preflight

    _check_method(cfg)
    if check_data:
        _check_data(cfg)
        for warning in preflight.mduit_warnings(cfg):
            log.warning("%s", warning)
    _check_storage(cfg.storage.path, cfg.storage.check_timeout_s)
    if cfg.train.evaluate:
        _check_evaluation(cfg)
    if check_cluster:
        check_resources(cfg, check_data=check_data)


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` / RAY_ADDRESS, else start a private local head
    (`mdir.runtime.connect`: non-secret env forwarded, Ray's uv-run hook off)."""
    from mdir.runtime import connect

    connect(address, local="head", log_to_driver=True)


def _storage(path: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: s3 through s3fs wrapped for pyarrow
    (endpoint and credentials from the environment), local as an absolute path."""
    from mdir.data import io

    if io.is_remote(path):
        return path.split("://", 1)[1].rstrip("/"), io.arrow_filesystem(path)
    return os.path.abspath(os.path.expanduser(path)), None


def storage_run_uri(cfg: TrainJobConfig) -> str:
    """Where this run's checkpoints live (storage.path/storage.name)."""
    return cfg.storage.path.rstrip("/") + "/" + str(cfg.storage.name)


class DeterministicTrainingError(RuntimeError):
    """The workers stopped on an error that every retry would hit again (no intact
    checkpoint, too little disk): the run fails once, with the workers' message."""


def _fatal_report_callback():
    """A Train V2 `UserCallback` (built lazily: importing Ray's callback API costs seconds)
    that fails the run when rank 0 reports ``fatal_error``. The loop reports instead of
    raising because Ray retries every worker exception as a node failure; an exception
    raised here, in the controller, is not retried."""
    from ray.train.v2.api.callback import UserCallback

    class StopOnFatalReport(UserCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            msg = (metrics[0] if metrics else {}).get("fatal_error")
            if msg:
                raise DeterministicTrainingError(msg)

    return StopOnFatalReport()


def checkpoint_config(cfg: TrainJobConfig):
    """Ray keeps the `num_to_keep` best-scored checkpoints (and always the latest, for
    resume) when runs are evaluated, so the checkpoint that earned the run's score is
    still there to be registered; the newest ones otherwise. The score is the loop's
    ``selection/score`` (higher = better; see `mdir.training.selection`)."""
    from ray.train import CheckpointConfig

    from mdir.training.checkpoint import SCORE_KEY

    if not cfg.train.evaluate:
        return CheckpointConfig(num_to_keep=cfg.storage.num_to_keep)
    return CheckpointConfig(
        num_to_keep=cfg.storage.num_to_keep,
        checkpoint_score_attribute=SCORE_KEY,
        checkpoint_score_order="max",
    )


def build_trainer(
    cfg: TrainJobConfig,
    *,
    extra_callbacks: Sequence[Any] = (),
    run_config_kwargs: dict[str, Any] | None = None,
    plan: Any = None,
    method_factory: Any = None,
    evaluator: Any = None,
):
    """A `TorchTrainer` running `mdir.training.loop.train_loop_per_worker` for `cfg`.

    `plan` (a `DataPlan`) defaults to the shards of ``cfg.data``; `method_factory`
    defaults to ``mdir.methods.METHODS[cfg.method.name]``; `evaluator` replaces the loop's
    evaluation (tests pass fakes)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mdir.training.data_plan import MemoryDataPlan, ShardDataPlan
    from mdir.training.loop import train_loop_per_worker

    cfg = resolve_names(cfg)
    if plan is None:
        if cfg.train.loader == "memory":
            plan = MemoryDataPlan(cfg.data, cfg.train.batch_size, seed=cfg.train.seed)
        else:
            plan = ShardDataPlan(cfg.data, cfg.train.batch_size)
    datasets = plan.datasets()
    spe = plan.steps_per_epoch(cfg.scaling.num_workers)
    storage_path, storage_fs = _storage(cfg.storage.path)
    from mdir.runtime import worker_runtime_env

    rc_kwargs: dict[str, Any] = dict(
        name=cfg.storage.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
        checkpoint_config=checkpoint_config(cfg),
        callbacks=[_fatal_report_callback(), *extra_callbacks],
        worker_runtime_env=worker_runtime_env(),
    )
    rc_kwargs.update(run_config_kwargs or {})
    loop_config: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "plan": plan,
        "steps_per_epoch": spe,
    }
    if method_factory is not None:
        loop_config["method_factory"] = method_factory
    if evaluator is not None:
        loop_config["evaluator"] = evaluator
    s = cfg.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(**rc_kwargs),
        datasets=datasets or None,
    )


def result_from(name: str, result: Any) -> TrainResult:
    metrics = dict(result.metrics or {})
    ck = getattr(result, "checkpoint", None)
    err = getattr(result, "error", None)
    return TrainResult(
        name=name,
        metrics=metrics,
        checkpoint_path=ck.path if ck is not None else None,
        mlflow_run_id=metrics.get("mlflow_run_id"),
        model_uri=metrics.get("model_uri"),
        sample_grid=metrics.get("sample_grid"),
        error=f"{type(err).__name__}: {err}" if err is not None else metrics.get("fatal_error"),
    )


def train(
    cfg: TrainJobConfig,
    *,
    address: str | None = None,
    plan: Any = None,
    method_factory: Any = None,
    evaluator: Any = None,
    validate: bool = True,
    run_config_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Validate (fail fast), connect to / start Ray, fit, and summarise the run."""
    from mdir.training.preflight import resolve_local_paths

    cfg = resolve_local_paths(resolve_names(cfg))
    if validate:
        validate_before_launch(cfg, check_data=plan is None, check_cluster=False)
    ensure_ray(address)
    if validate:
        check_resources(cfg, check_data=plan is None)
    trainer = build_trainer(
        cfg,
        plan=plan,
        method_factory=method_factory,
        evaluator=evaluator,
        run_config_kwargs=run_config_kwargs,
    )
    log.info("training %s → %s", cfg.method.name, storage_run_uri(cfg))
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Train V2 raises what failed every attempt
        log.error("training %s failed: %s: %s", cfg.storage.name, type(e).__name__, e)
        return TrainResult(name=str(cfg.storage.name), error=f"{type(e).__name__}: {e}")
    return result_from(str(cfg.storage.name), result)
