"""Checks of a training plan that need no worker: shapes, resources, paths, MDUIT's signals.

Each check is a plain function of the config (and, for resources, of the cluster's totals),
raises `ConfigError` naming the fields to change, and imports no torch, so that a typo or
an impossible plan is reported in seconds. `mdir.training.run.validate_before_launch` calls
them; the rules are written here once:

* **Shapes** (`check_shapes`): the networks' down-samplings must divide ``data.image_size``
  (pix2pix U-Net: 2**num_downs; CycleGAN ResNet G: 4; MDUIT E_c: 2**n_downsample) and a
  PatchGAN with ``n_layers_d`` stride-2 convs needs ``image_size // 2**n_layers_d ≥ 3``
  (its two stride-1 k=4 convs take 2 px off, and an empty map has no patches).
* **Resources** (`resource_plan`, `check_plan`): Ray Train workers hold
  ``num_workers × cpus_per_worker`` CPUs for the whole run; Ray Data's map tasks run next to
  them, ``data.parallelism`` tasks per stream (unpaired data has two streams: A and B) of
  ``data.task_cpus`` each; evaluation on Ray adds ``eval.num_workers`` one-CPU actors. A
  plan whose training workers leave no room for one data task starts and then waits
  forever for its first batch, so the whole plan must fit.
* **Paths** (`resolve_local_paths`): a relative local ``data.uri`` / ``storage.path`` is
  made absolute against the directory the job was submitted from; Ray workers run in other
  directories, where the relative path names nothing.
* **MDUIT** (`mduit_warnings`, `check_vgg_weights`): content positives come from poses or
  place ids; data with neither leaves the contrastive terms without signal. A random VGG-16
  is refused unless ``method.allow_random_vgg`` says so, and said loudly when allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdir.config import ConfigError
from mdir.data import io

if TYPE_CHECKING:  # annotations only: training.config imports this module
    from mdir.training.config import TrainJobConfig

#: file torchvision's VGG-16 enum downloads to (see `mdir.models.weights.CACHED_FILES`)
VGG16_CACHED_FILE = "vgg16-397923af.pth"


# ---------------------------------------------------------------------------------- paths


def resolve_local_paths(cfg: TrainJobConfig, base: str | os.PathLike[str] | None = None):
    """`cfg` with a relative local ``data.uri`` and ``storage.path`` made absolute against
    `base` (default: the current directory, i.e. where the job was submitted from)."""
    data_uri = io.absolute_local(cfg.data.uri, base)
    storage = io.absolute_local(cfg.storage.path, base)
    if data_uri == cfg.data.uri and storage == cfg.storage.path:
        return cfg
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"uri": data_uri}),
            "storage": cfg.storage.model_copy(update={"path": storage}),
        }
    )


# --------------------------------------------------------------------------------- shapes


def check_shapes(cfg: TrainJobConfig) -> None:
    """Image size vs the networks' down-samplings (see the module docstring)."""
    from mdir.methods.specs import spec_of

    m, size = cfg.method, cfg.data.image_size
    problem = spec_of(m).check_size(m, size)  # the method's own limits (its spec)
    if problem:
        raise ConfigError(problem)
    if size // 2**m.n_layers_d < 3:
        raise ConfigError(
            f"data.image_size: {size} px is too small for method.n_layers_d={m.n_layers_d} "
            f"(a PatchGAN with {m.n_layers_d} stride-2 layers needs ≥ {3 * 2**m.n_layers_d} px)"
        )


# ------------------------------------------------------------------------------ resources


@dataclass(frozen=True)
class ResourcePlan:
    """CPUs and GPUs one training run holds at once (see the module docstring)."""

    train_cpus: float
    data_cpus: float
    eval_cpus: float
    gpus: float
    streams: int

    @property
    def cpus(self) -> float:
        return self.train_cpus + self.data_cpus + self.eval_cpus

    def describe(self, cfg: TrainJobConfig) -> str:
        s, d = cfg.scaling, cfg.data
        parts = [
            f"training {s.num_workers} scaling.num_workers × {s.cpus_per_worker:g} "
            f"scaling.cpus_per_worker = {self.train_cpus:g}"
        ]
        if self.data_cpus:
            parts.append(
                f"Ray Data {self.streams} stream(s) × {d.parallelism} data.parallelism × "
                f"{d.task_cpus:g} data.task_cpus = {self.data_cpus:g}"
            )
        if self.eval_cpus:
            parts.append(
                f"evaluation {cfg.eval.num_workers} eval.num_workers × 1 = {self.eval_cpus:g}"
            )
        return " + ".join(parts) + f" = {self.cpus:g} CPUs"


def data_streams(cfg: TrainJobConfig) -> int:
    """Ray Data streams of the training pipeline: A and B (unpaired), else one."""
    return 2 if cfg.data.mode == "unpaired" else 1


def resource_plan(cfg: TrainJobConfig) -> ResourcePlan:
    s, d = cfg.scaling, cfg.data
    streams = data_streams(cfg)
    data_cpus = streams * d.parallelism * d.task_cpus if cfg.train.loader == "ray_data" else 0.0
    eval_workers = getattr(cfg.eval, "num_workers", 0) if cfg.train.evaluate else 0
    return ResourcePlan(
        train_cpus=s.num_workers * s.cpus_per_worker,
        data_cpus=data_cpus,
        eval_cpus=float(eval_workers),
        gpus=float(s.num_workers if s.use_gpu else 0),
        streams=streams,
    )


def check_plan(cfg: TrainJobConfig, cluster: dict[str, float]) -> ResourcePlan:
    """Raise `ConfigError` naming the fields when the run's whole plan does not fit into
    the cluster's totals (``ray.cluster_resources()``); return the plan otherwise."""
    plan = resource_plan(cfg)
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    s = cfg.scaling
    if plan.gpus > gpus + 1e-9:
        raise ConfigError(
            f"scaling.use_gpu: {s.num_workers} workers need {s.num_workers} GPUs, the cluster has {gpus:g}"
        )
    if plan.train_cpus > cpus + 1e-9:
        raise ConfigError(
            f"scaling.num_workers: {s.num_workers} workers × scaling.cpus_per_worker "
            f"{s.cpus_per_worker:g} CPU = {plan.train_cpus:g} CPUs, but the cluster has {cpus:g}"
        )
    if plan.cpus > cpus + 1e-9:
        fields = ["scaling.num_workers", "scaling.cpus_per_worker"]
        if plan.data_cpus:
            fields += ["data.parallelism", "data.task_cpus"]
        if plan.eval_cpus:
            fields.append("eval.num_workers")
        raise ConfigError(
            f"{', '.join(fields)}: the run needs {plan.describe(cfg)} at once, but the cluster "
            f"has {cpus:g}; the training workers would wait forever for their first batch. "
            "Lower one of these fields."
        )
    return plan


# ---------------------------------------------------------------------------------- MDUIT


def _hub_checkpoints() -> Path:
    """torch.hub's checkpoint directory, computed as torch does, without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def vgg_weights_source(cfg: TrainJobConfig) -> str | None:
    """Where MDUIT's VGG-16 weights will come from (same order as `load_vgg16`), or None."""
    src = getattr(cfg.method, "vgg_weights", None) or os.environ.get("MDIR_VGG16_WEIGHTS")
    if src:
        return src
    cached = _hub_checkpoints() / VGG16_CACHED_FILE
    return str(cached) if cached.is_file() else None


def check_vgg_weights(cfg: TrainJobConfig) -> None:
    """MDUIT: the VGG-16 weights E_a needs exist, or a random VGG is explicitly allowed."""
    from mdir.methods.specs import spec_of

    if not spec_of(cfg.method).needs_vgg:
        return
    src = vgg_weights_source(cfg)
    if src is not None:
        path = Path(src.removeprefix("file://")).expanduser()
        if not path.is_file():
            field = "method.vgg_weights" if cfg.method.vgg_weights else "MDIR_VGG16_WEIGHTS"
            raise ConfigError(f"{field}: VGG-16 weights file {src!r} does not exist")
        return
    if not cfg.method.allow_random_vgg:
        raise ConfigError(
            "method.vgg_weights: no VGG-16 weights (method.vgg_weights, $MDIR_VGG16_WEIGHTS, or "
            f"{VGG16_CACHED_FILE} in {_hub_checkpoints()}); nothing is downloaded. MDUIT's "
            "appearance encoder would train on a random VGG-16: set method.allow_random_vgg=true "
            "only for tests and demos"
        )


def mduit_warnings(cfg: TrainJobConfig) -> list[str]:
    """What an MDUIT run should say at start: a random VGG-16, or data without poses or
    places (then no image has a content positive and L_con^c / L_NCE carry no signal)."""
    from mdir.methods.specs import spec_of

    spec = spec_of(cfg.method)
    if not (spec.needs_vgg or spec.needs_poses):
        return []
    out: list[str] = []
    if spec.needs_vgg and vgg_weights_source(cfg) is None and cfg.method.allow_random_vgg:
        out.append(
            "MDUIT: E_a uses a RANDOM VGG-16 (method.allow_random_vgg=true, no weights found): "
            "appearance features are meaningless; for tests and demos only"
        )
    if not spec.needs_poses:
        return out
    try:
        has_signal = content_positives_exist(cfg.data.uri, cfg.data.train_split)
    except Exception as e:  # the data checks report unreadable data; this is only advice
        out.append(f"MDUIT: could not read poses/places of {cfg.data.uri!r} ({e})")
        return out
    if not has_signal:
        out.append(
            f"MDUIT: split {cfg.data.train_split!r} of {cfg.data.uri!r} has no poses and no "
            "place ids shared by two images: no image has a content positive, so the consistency "
            "and contrastive losses (loss/con_c, loss/con_a, loss/nce) carry no signal; ingest "
            "the data with poses or places"
        )
    return out


def content_positives_exist(uri: str, split: str) -> bool:
    """True when some image of `split` can have a content positive: two rows with a pose,
    or a place id (≥ 0) that two rows share (`mdir.methods.pairing` rules)."""
    import numpy as np
    import pyarrow.compute as pc

    from mdir.data.manifest import read_manifest
    from mdir.data.shards import read_all

    t = read_all(read_manifest(uri), ["split", "place", "pose"])
    t = t.filter(pc.equal(t["split"], split))
    poses = t["pose"].to_pylist()
    if sum(p is not None and not any(v != v for v in p) for p in poses) >= 2:
        return True
    place = np.asarray(t["place"].to_numpy(zero_copy_only=False), dtype=np.int64)
    place = place[place >= 0]
    return bool(place.size) and int(np.bincount(place).max()) >= 2


def plan_summary(cfg: TrainJobConfig) -> dict[str, Any]:
    """The resource plan as plain numbers (for logs and ``--dry-run``)."""
    p = resource_plan(cfg)
    return {"cpus": p.cpus, "train_cpus": p.train_cpus, "data_cpus": p.data_cpus,
            "eval_cpus": p.eval_cpus, "gpus": p.gpus}  # fmt: skip
