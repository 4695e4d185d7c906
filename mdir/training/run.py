"""Launch a training job on Ray Train: validate, build the `TorchTrainer`, fit, summarise.

`validate_before_launch` fails fast, before any worker starts, with a `ConfigError`
naming the field: method/data mode mismatch (``data.mode``), dataset missing or without
the split (``data.uri`` / ``data.train_split``), unreachable storage (``storage.path``),
more workers / CPUs / GPUs than the cluster has (``scaling.*``).

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

#: Environment variables handed to the workers (credentials come from the environment only).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "RAY_DATA_DISABLE_PROGRESS_BARS",
    "MDIR_TORCH_THREADS",
    "MDIR_VGG16_WEIGHTS",
    "MDIR_INCEPTION_WEIGHTS",
    "TORCH_HOME",
)


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


def _check_storage(path: str) -> None:
    from mdir.data import io

    if io.is_remote(path):
        try:
            io.check_reachable(path, must_exist=False)
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
        io.check_reachable(cfg.data.uri, manifest=True)
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
    from mdir.methods import get_method_factory

    try:
        factory = get_method_factory(cfg.method.name)
    except KeyError as e:
        raise ConfigError(f"method.name: {e.args[0]}") from None
    mode = getattr(factory, "data_mode", None)
    if mode is not None and mode != cfg.data.mode:
        raise ConfigError(
            f"data.mode: method {cfg.method.name!r} needs data mode {mode!r}, config has {cfg.data.mode!r}"
        )


def check_resources(cfg: TrainJobConfig) -> None:
    """Compare the request with the connected cluster's totals (Ray must be initialised)."""
    import ray

    total = ray.cluster_resources()
    s = cfg.scaling
    cpus = total.get("CPU", 0.0)
    if s.num_workers * s.cpus_per_worker > cpus + 1e-9:
        raise ConfigError(
            f"scaling.num_workers: {s.num_workers} workers × scaling.cpus_per_worker {s.cpus_per_worker} CPU "
            f"= {s.num_workers * s.cpus_per_worker} CPUs, but the cluster has {cpus:g}"
        )
    if s.use_gpu and s.num_workers > total.get("GPU", 0.0) + 1e-9:
        raise ConfigError(
            f"scaling.use_gpu: {s.num_workers} workers need {s.num_workers} GPUs, the cluster has {total.get('GPU', 0):g}"
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
    _check_method(cfg)
    if check_data:
        _check_data(cfg)
    _check_storage(cfg.storage.path)
    if cfg.train.evaluate:
        _check_evaluation(cfg)
    if check_cluster:
        check_resources(cfg)


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` / RAY_ADDRESS, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS")
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if addr:
        if addr.split(":")[0] in ("127.0.0.1", "localhost"):
            # A loopback-only head: keep Ray's client on 127.0.0.1 (DESIGN.md pitfalls).
            from mdir.services import use_loopback

            use_loopback()
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or "RAY_JOB_ID" in os.environ
        # Inside `ray job submit` the job's runtime_env (working dir) applies; don't replace it.
        # Workers get the forwarded variables through RunConfig.worker_runtime_env anyway.
        ray.init(
            address=addr,
            runtime_env=None if in_job or not env else {"env_vars": env},
            log_to_driver=True,
        )
    else:
        # A private head on 127.0.0.1 with its own token (a plain local ray.init() would
        # write ~/.ray/auth_token and silently switch auth on for everyone's clusters);
        # stopped when this process exits.
        import atexit
        import tempfile

        from mdir.services import start_ray_head

        head = start_ray_head(tempfile.mkdtemp(prefix="mdir-ray-"), num_cpus=os.cpu_count() or 2)

        def _stop() -> None:  # disconnect first: a driver whose head vanishes exits with 1
            ray.shutdown()
            head.stop()

        atexit.register(_stop)
        head.init(runtime_env={"env_vars": env} if env else None, log_to_driver=True)


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


def build_trainer(
    cfg: TrainJobConfig,
    *,
    extra_callbacks: Sequence[Any] = (),
    run_config_kwargs: dict[str, Any] | None = None,
    plan: Any = None,
    method_factory: Any = None,
):
    """A `TorchTrainer` running `mdir.training.loop.train_loop_per_worker` for `cfg`.

    `plan` (a `DataPlan`) defaults to the shards of ``cfg.data``; `method_factory`
    defaults to ``mdir.methods.METHODS[cfg.method.name]`` (tests pass fakes)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
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
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    rc_kwargs: dict[str, Any] = dict(
        name=cfg.storage.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.num_to_keep),
        callbacks=list(extra_callbacks) or None,
        worker_runtime_env={"env_vars": env} if env else None,
    )
    rc_kwargs.update(run_config_kwargs or {})
    loop_config: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "plan": plan,
        "steps_per_epoch": spe,
    }
    if method_factory is not None:
        loop_config["method_factory"] = method_factory
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
        error=None if err is None else f"{type(err).__name__}: {err}",
    )


def train(
    cfg: TrainJobConfig,
    *,
    address: str | None = None,
    plan: Any = None,
    method_factory: Any = None,
    validate: bool = True,
    run_config_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Validate (fail fast), connect to / start Ray, fit, and summarise the run."""
    cfg = resolve_names(cfg)
    if validate:
        validate_before_launch(cfg, check_data=plan is None, check_cluster=False)
    ensure_ray(address)
    if validate:
        check_resources(cfg)
    trainer = build_trainer(
        cfg, plan=plan, method_factory=method_factory, run_config_kwargs=run_config_kwargs
    )
    log.info("training %s → %s", cfg.method.name, storage_run_uri(cfg))
    result = trainer.fit()
    return result_from(str(cfg.storage.name), result)
