"""`TrainJobConfig`: everything one training job needs, as one typed, frozen config.

Sections: ``method`` (a `mdir.methods.config.MethodConfig`, discriminated on ``name``),
``data`` (`mdir.data.config.DataConfig`), ``train`` (schedule and cadences), ``scaling``
(Ray workers / GPUs), ``storage`` (checkpoint location, run name, failures), ``mlflow``
(tracking and registry) and ``eval`` (`mdir.metrics.config.EvalConfig`). Loaded from YAML
with ``key.sub=value`` overrides by `load_job_config`; an unknown key or a wrong type
raises `mdir.config.ConfigError` naming the dotted field.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mdir.config import ConfigError, StrictModel, apply_overrides, read_yaml, validate
from mdir.data.config import DataConfig
from mdir.methods.specs import MethodConfig

try:  # the metrics area owns EvalConfig; keep training importable while it lands
    from mdir.metrics.config import EvalConfig
except ModuleNotFoundError:  # pragma: no cover - early development only

    class EvalConfig(StrictModel):  # type: ignore[no-redef]
        """Placeholder until `mdir.metrics.config.EvalConfig` exists (no metrics run)."""

        enabled: bool = Field(False, description="Run evaluation at eval points.")


class TrainSection(StrictModel):
    """Schedule and cadences of the loop (all counted in optimisation steps)."""

    epochs: int = Field(
        1, ge=1, description="Passes over the training split (MDUIT: 50; thesis: 200)."
    )
    max_steps: int = Field(
        0,
        ge=0,
        description="Stop after this many steps in total (0 = epochs × steps per epoch). For tests and smoke runs.",
    )
    batch_size: int = Field(
        1,
        ge=1,
        description="Images per worker per step. With train.global_batch_size set, derived "
        "from it (global / scaling.num_workers); give it alone only for per-worker tuning.",
    )
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Images per optimisation step over all workers, as the papers count their "
        "batch (MDUIT: 1, thesis: 5). Must divide by scaling.num_workers; the per-worker "
        "train.batch_size is derived. None = train.batch_size × scaling.num_workers.",
    )
    seed: int = Field(
        0, description="Seed of torch / numpy / python RNGs (each rank adds its rank)."
    )
    checkpoint_every: int = Field(
        500, ge=0, description="Checkpoint every N steps (0 = only at the end)."
    )
    sample_every: int = Field(
        500,
        ge=0,
        description="Log a sample grid (source | translation | target) every N steps (0 = only at the end).",
    )
    eval_every: int = Field(
        0,
        ge=0,
        description="Evaluate (FID/KID/IS/PRD on the validation split) every N steps (0 = only at the end).",
    )
    log_every: int = Field(10, ge=1, description="Log losses and throughput every N steps.")
    num_samples: int = Field(
        4, ge=1, le=64, description="Fixed validation images shown in each sample grid."
    )
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto",
        description="Mixed precision: auto = bf16 autocast on GPU, off on CPU; bf16 forces it; off disables.",
    )
    find_unused_parameters: bool = Field(
        False,
        description="DDP find_unused_parameters (only for methods whose step leaves parameters unused).",
    )
    evaluate: bool = Field(
        True,
        description="Run the evaluation at eval points and at the end (needs the eval section).",
    )
    loader: Literal["ray_data", "memory"] = Field(
        "ray_data",
        description="ray_data: shards streamed through Ray Data and split across workers (real datasets); "
        "memory: each rank decodes its share of a small split in memory (tests, tiny demos on 2 cores).",
    )
    eval_images: int = Field(
        2000,
        ge=2,
        description="Validation images translated for the evaluation at each eval point (at "
        "most the split's size). FID/KID rankings on fewer images are noise-dominated: the "
        "default 2000 means min(2000, val split size).",
    )
    eval_sharded: bool = Field(
        False,
        description="Share each evaluation among all workers: every rank translates and "
        "extracts features of its block of whole batches, rank 0 merges the features and "
        "computes the metrics once (the same numbers as rank 0 alone, about num_workers "
        "times sooner). Off = rank 0 evaluates while the other ranks wait.",
    )
    channels_last: bool = Field(
        False,
        description="Networks and image batches in channels-last (NHWC) memory format; measured "
        "1.02–1.15× on an H100 at batch 1 (docs/bench/step_*_h100.json), worth it with bf16 on "
        "tensor cores. Same results as NCHW up to float rounding.",
    )
    sync_batchnorm: bool = Field(
        False,
        description="Compute BatchNorm statistics over all workers' batches (pix2pix under DDP "
        "with small per-worker batches): torch's SyncBatchNorm on GPU, mdir's all-reduce "
        "BatchNorm on CPU/gloo. Off = per-worker statistics (the reference's single-GPU "
        "behaviour when one worker).",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the generator's weights with this "
        "decay β (θ_ema ← β·θ_ema + (1−β)·θ each step; StarGAN v2 uses 0.999) and evaluate, "
        "checkpoint as the generator, and register the EMA weights instead of the raw ones. "
        "None = the raw weights.",
    )
    stall_timeout_s: float = Field(
        600.0,
        ge=0,
        description="Fail with an error naming the resources when a worker waits this long for "
        "one training batch (a starved or stuck data pipeline); 0 = wait forever.",
    )

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        """YAML 1.1 reads a bare ``off`` (``--set train.amp=off``) as false."""
        return "off" if v is False else v


class ScalingSection(StrictModel):
    """How many Ray Train workers and what each one gets."""

    num_workers: int = Field(1, ge=1, description="Training workers (DDP ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); otherwise CPU with gloo.")
    cpus_per_worker: float = Field(
        1.0,
        gt=0,
        description="CPUs reserved per worker; on 2-core machines use 0.5 so Ray Data still gets CPU.",
    )
    cluster_config: str | None = Field(
        None,
        description="For autoscaling clusters: the cluster launcher YAML (e.g. cluster/gpu-aws.yaml) "
        "or KubeRay RayCluster/RayJob manifest the cluster was started from. Requests are then "
        "checked against its node types (what the autoscaler can add) instead of the nodes up "
        "now, which on a cluster that starts with 0 GPU workers would refuse every GPU job.",
    )


class StorageSection(StrictModel):
    """Where checkpoints go; the same path + name resumes a run (Ray Train V2)."""

    path: str = Field(
        "./runs",
        description="Checkpoint root: local path or s3:// URI (AWS_* variables from the environment).",
    )
    name: str | None = Field(
        None,
        description="Run name under `path`; re-submitting the same name resumes. None = <method>-<dataset>-<timestamp>.",
    )
    max_failures: int = Field(
        1, ge=-1, description="Worker-group restarts from the latest checkpoint (-1 = unlimited)."
    )
    num_to_keep: int = Field(
        2,
        ge=1,
        description="Checkpoints kept in storage. With evaluation, the best-scored ones are kept "
        "(plus the latest, for resume); without, the newest.",
    )
    checkpoint_metric: str | None = Field(
        None,
        description="Evaluation key (as Tune names it, e.g. fid_legacy) that ranks checkpoints: the "
        "best one is kept and registered. None = the first fid* key the evaluation reports. Tune "
        "sets it to the sweep's metric.",
    )
    checkpoint_mode: Literal["min", "max"] = Field(
        "min", description="Whether a lower (min: FID, KID) or higher checkpoint_metric is better."
    )
    upload: Literal["sync", "async"] = Field(
        "sync",
        description="Checkpoint upload: sync = every worker waits at the report until the "
        "checkpoint is in storage; async = training goes on while Ray uploads it in the "
        "background (Ray's CheckpointUploadMode.ASYNC; worth it for large checkpoints on "
        "S3). A checkpoint counts only once its upload committed, so a crash mid-upload "
        "resumes from the previous one. The final checkpoint is always uploaded synchronously.",
    )
    check_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Deadline (s) of each pre-launch reachability check of storage.path and "
        "data.uri; an endpoint that never answers is reported after this long.",
    )


warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class MlflowSection(StrictModel):
    """Tracking and registry on the server given by MLFLOW_TRACKING_URI."""

    enabled: bool = Field(True, description="Log to MLflow (rank 0 only).")
    tracking_uri: str | None = Field(
        None, description="Tracking URI; None = MLFLOW_TRACKING_URI from the environment."
    )
    experiment: str = Field("mdir", description="Experiment name.")
    run_name: str | None = Field(None, description="MLflow run name (None = the storage run name).")
    parent_run_id: str | None = Field(
        None, description="Nest the run under this parent (Tune sweeps)."
    )
    register: bool = Field(True, description="Register the final generator in the Model Registry.")
    model_name: str | None = Field(
        None, description="Registered model name (None = mdir-<method>-<dataset>)."
    )
    alias: str = Field("candidate", description="Alias set on the new model version.")
    dataset_name: str | None = Field(
        None, description="Dataset name used in the model name (None = last part of data.uri)."
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="HTTP timeout of one tracking call (a slow server never stalls training longer).",
    )
    max_retries: int = Field(
        2, ge=0, description="Retries of one tracking call before it is buffered and retried later."
    )
    buffer_size: int = Field(
        10000, ge=10, description="Tracking calls kept in memory while the server is unreachable."
    )
    flush_timeout_s: float = Field(
        120.0,
        ge=0,
        description="At the end of training, how long rank 0 waits for buffered tracking calls to "
        "reach a server that is down or restarting (what is still buffered then is reported as "
        "not delivered). Training itself never waits on MLflow.",
    )


class TrainJobConfig(StrictModel):
    """A complete training job (what `jobs/*.py` and `mdir train` load)."""

    method: MethodConfig = Field(
        description="Method and its hyper-parameters (name: pix2pix | cyclegan | mduit)."
    )
    data: DataConfig = Field(description="Training data (shards) and preprocessing.")
    train: TrainSection = Field(default_factory=TrainSection, description="Schedule and cadences.")
    scaling: ScalingSection = Field(
        default_factory=ScalingSection, description="Ray Train workers."
    )
    storage: StorageSection = Field(
        default_factory=StorageSection, description="Checkpoints and resume."
    )
    mlflow: MlflowSection = Field(
        default_factory=MlflowSection, description="MLflow tracking and registry."
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Evaluation metrics at eval points."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainJobConfig:
        if self.storage.name is not None and not re.fullmatch(
            r"[A-Za-z0-9._-]+", self.storage.name
        ):
            raise ValueError("storage.name may only contain letters, digits, '.', '_' and '-'")
        self._derive_batch()
        return self

    def _derive_batch(self) -> None:
        """Make train.batch_size (per worker) and train.global_batch_size agree.

        Rule: global_batch_size given → batch_size = global / num_workers (it must divide;
        a batch_size given too must equal that); only batch_size given → global =
        batch_size × num_workers. Both end up set, so MLflow params and checkpoints record
        both. Runs at validation, so a bad pair fails before anything launches."""
        t, n = self.train, self.scaling.num_workers
        if t.global_batch_size is None:
            per_worker = t.batch_size
        else:
            per_worker, rest = divmod(t.global_batch_size, n)
            if rest or per_worker == 0:
                raise ValueError(
                    f"train.global_batch_size: {t.global_batch_size} images per step cannot be "
                    f"split evenly over scaling.num_workers={n} workers; use a multiple of {n} "
                    "or change the worker count"
                )
            if "batch_size" in t.model_fields_set and t.batch_size != per_worker:
                raise ValueError(
                    f"train.global_batch_size: {t.global_batch_size} over {n} workers is "
                    f"{per_worker} per worker, but train.batch_size={t.batch_size}; set only "
                    "train.global_batch_size"
                )
        new = t.model_copy(update={"batch_size": per_worker, "global_batch_size": per_worker * n})
        object.__setattr__(self, "train", new)  # frozen model: set once, while validating

    def dataset_name(self) -> str:
        """Dataset name used in run and model names (last path part of data.uri)."""
        if self.mlflow.dataset_name:
            return self.mlflow.dataset_name
        name = self.data.uri.rstrip("/").split("/")[-1] or "data"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name)

    def model_name(self) -> str:
        """Registered model name: mdir-<method>-<dataset> unless set."""
        return self.mlflow.model_name or f"mdir-{self.method.name}-{self.dataset_name()}"


def load_job_config(
    path: str | Path | None, overrides: list[str] | None = None, method: str | None = None
) -> TrainJobConfig:
    """YAML file + ``key.sub=value`` overrides → `TrainJobConfig`.

    `method` (from ``mdir train METHOD`` / the job file) must agree with ``method.name`` in
    the file; when the file has none, it selects the method config."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    if method is not None:
        m = data.setdefault("method", {})
        if not isinstance(m, dict):
            raise ConfigError("method: must be a mapping")
        if m.get("name") not in (None, method):
            raise ConfigError(
                f"method.name: config says {m.get('name')!r} but the job/command is for {method!r}"
            )
        m["name"] = method
    cfg = validate(TrainJobConfig, data, source=str(path) if path else "config")
    # Relative local paths mean "from where I submit": Ray workers run elsewhere.
    from mdir.training.preflight import resolve_local_paths

    return resolve_local_paths(cfg)
