"""Typed configuration of the retrieval fine-tuning job (`RetrievalJobConfig`).

Defaults follow the thesis (section 3.3/3.4) and the original GeM fine-tuning
(Radenović, Tolias, Chum, TPAMI 2018, "cirtorch"): VGG-16 trunk, GeM with learnable
p (init 3), L2N, contrastive loss with margin τ = 0.75 for VGG-16 (TPAMI 2018, section 5)
and 0.85 for ResNet (cirtorch README's ResNet-101 training command; the train script's own
default, 0.7, is used by neither), tuples of 1 query + 1 positive + 5 hard negatives, 2000
queries and a 20000-image pool re-mined every epoch, Adam with lr 1e-6 for VGG (5e-7 for
ResNet), weight decay 1e-6, lr decay exp(-0.01·epoch), 5 tuples per batch, training images
with the longer side at 362 px and test images at 1024 px, aspect ratio kept (cirtorch
``imresize``), learned whitening Lw as post-processing. GAN augmentation translates each training image with probability 0.15
after reflection-padding it to a multiple of 256 (thesis 3.4). Positives from poses use the
MDUIT thresholds (rotation < 8°, translation < 7 m).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mdir.config import StrictModel, load_config

Arch = Literal["vgg16", "resnet50", "resnet101", "tiny"]

#: margin τ of the contrastive loss per trunk: VGG-16 0.75 (Radenović et al. TPAMI 2018),
#: ResNet 0.85 (cirtorch README: resnet101 --loss-margin 0.85); tiny follows VGG
DEFAULT_MARGIN: dict[str, float] = {
    "vgg16": 0.75,
    "resnet50": 0.85,
    "resnet101": 0.85,
    "tiny": 0.75,
}
#: Adam learning rate per trunk (same sources; cirtorch README: resnet101 --lr 5e-7)
DEFAULT_LR: dict[str, float] = {"vgg16": 1e-6, "resnet50": 5e-7, "resnet101": 5e-7, "tiny": 1e-6}


class RetrievalModelConfig(StrictModel):
    arch: Arch = Field(
        "vgg16",
        description="Conv trunk: vgg16 (thesis), resnet50, resnet101 (cirtorch's best), or tiny (tests/demo).",
    )
    weights: str | None = Field(
        None,
        description="Local path of ImageNet trunk weights (never downloaded); None = torch hub cache.",
    )
    allow_random: bool = Field(
        False,
        description="Allow a randomly initialised trunk when no pretrained weights are found.",
    )
    width: int = Field(
        16, gt=0, description="Channel width of the tiny trunk (ignored for vgg/resnet)."
    )
    gem_p: float = Field(3.0, gt=0, description="Initial GeM pooling exponent p (learnable).")
    whitening: bool = Field(
        True,
        description="Learn whitening Lw from matching pairs after training (stored with the model).",
    )
    whitening_dim: int | None = Field(
        None, gt=0, description="Keep this many whitened dimensions (None = all)."
    )


class RetrievalDataConfig(StrictModel):
    uri: str = Field(
        description="Dataset root (local path or s3://) with Parquet shards and manifest.json."
    )
    name: str | None = Field(
        None,
        description="Dataset name used in `mdir-retrieval-<name>`; default: last URI component.",
    )
    train_split: str = Field("train", description="Split used for tuples, mining and whitening.")
    train_max_side: int = Field(
        362,
        gt=0,
        description="Training images: longer side in pixels, aspect kept, never enlarged (thesis / cirtorch: 362).",
    )
    test_max_side: int = Field(
        1024,
        gt=0,
        description="Evaluation images: longer side in pixels, aspect kept, never enlarged (cirtorch test: 1024).",
    )
    train_conditions: list[str] = Field(
        default_factory=list, description="Conditions used for training tuples (empty = all)."
    )
    positives: Literal["auto", "place", "pose", "pairs"] = Field(
        "auto",
        description="Matching information: place ids, pose thresholds, or query/positive pairs (data.pairs_file, else the pairs the ingest layout stored, e.g. Retrieval-SfM's qidxs/pidxs); auto = pose if poses exist, else place.",
    )
    max_translation_m: float = Field(
        7.0, gt=0, description="Pose positives: camera centres closer than this (MDUIT: 7 m)."
    )
    max_rotation_deg: float = Field(
        8.0, gt=0, description="Pose positives: relative rotation below this (MDUIT: 8°)."
    )
    pairs_file: str | None = Field(
        None,
        description="CSV/JSON of (query, positive) row ids or source paths; positives=pairs without it uses the manifest's pairs.",
    )


class MiningConfig(StrictModel):
    query_size: int = Field(
        2000, gt=0, description="Training queries drawn per epoch (cirtorch --query-size)."
    )
    pool_size: int = Field(
        20000,
        gt=0,
        description="Database images from which hard negatives are mined per epoch (cirtorch --pool-size).",
    )
    neg_num: int = Field(5, gt=0, description="Hard negatives per tuple (thesis: 5).")
    margin: float | None = Field(
        None,
        gt=0,
        description="Contrastive margin τ; None = the trunk's default (0.75 VGG-16, 0.85 ResNet).",
    )
    batch_size: int = Field(
        32, gt=0, description="Images per forward pass while mining/extracting descriptors."
    )


class OptimConfig(StrictModel):
    epochs: int = Field(
        100, gt=0, description="Epochs; each epoch re-mines tuples (cirtorch: 100)."
    )
    batch_size: int = Field(
        5, gt=0, description="Tuples per optimisation step over all workers (cirtorch: 5)."
    )
    steps_per_epoch: int | None = Field(
        None, gt=0, description="Cap on steps per epoch (None = query_size / batch_size)."
    )
    lr: float | None = Field(
        None, gt=0, description="Adam learning rate; None = 1e-6 for VGG, 5e-7 for ResNet."
    )
    weight_decay: float = Field(1e-6, ge=0, description="Adam weight decay (cirtorch: 1e-6).")
    lr_decay: float = Field(
        0.01, ge=0, description="Learning rate × exp(-lr_decay · epoch) (cirtorch: 0.01)."
    )


class AugmentConfig(StrictModel):
    generator: str | None = Field(
        None,
        description="Registered translator, e.g. models:/mdir-cyclegan-synth@champion; None = no GAN augmentation.",
    )
    probability: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Probability that a training image is translated (thesis: 0.15).",
    )
    pad_multiple: int = Field(
        256,
        gt=0,
        description="Reflection-pad images to a multiple of this before translating (U-Net needs 256).",
    )
    target_condition: str = Field(
        "night", description="Condition of the reference images drawn for MDUIT."
    )
    source_conditions: list[str] = Field(
        default_factory=list,
        description="Only images of these conditions are translated (empty = every image, as in the thesis).",
    )
    dataset: str | None = Field(
        None,
        description="A dataset written by `mdir data translate` from this job's data.uri: a selected "
        "training image is replaced by its stored translation (same source id) instead of being "
        "translated on the fly; images without one are not eligible. Exclusive with generator; "
        "the run records the dataset's model name and version.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> AugmentConfig:
        if self.generator and self.dataset:
            raise ValueError(
                "augment.generator and augment.dataset are exclusive: translate on the fly "
                "(generator) or read translations (dataset)"
            )
        return self


class RetrievalEvalConfig(StrictModel):
    uri: str | None = Field(
        None,
        description="Dataset evaluated during and after training (e.g. an roxford5k ingest); None = data.uri.",
    )
    split: str = Field(
        "test",
        description="Split of the evaluation queries (and of the database unless database_split is set).",
    )
    database_split: str | None = Field(
        None,
        description="Split of the database images when it differs from the queries' (RobotCar style: a train reference).",
    )
    database_conditions: list[str] = Field(
        default_factory=lambda: ["day"], description="Conditions of database images."
    )
    query_conditions: list[str] = Field(
        default_factory=list,
        description="Conditions of query images (empty = all non-database conditions; all when database_split differs).",
    )
    night_conditions: list[str] = Field(
        default_factory=lambda: ["night"],
        description="Query conditions counted as Night (the rest are Day) in the split metrics.",
    )
    scales: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Descriptor scales; several = GeM-p average of the per-scale descriptors (cirtorch: [1, 0.7071, 0.5]).",
    )
    crop_queries: bool = Field(
        True,
        description="Crop revisited Oxford/Paris queries to their bounding box before extraction (the revisited protocol).",
    )
    recall_n: list[int] = Field(default_factory=lambda: [1, 5, 10], description="N of recall@N.")
    search: Literal["auto", "exact", "faiss"] = Field(
        "auto", description="Nearest-neighbour search backend."
    )
    exact_max: int = Field(
        50_000_000,
        gt=0,
        description="auto: exact search while queries × database ≤ this, faiss above.",
    )
    every: int = Field(1, ge=0, description="Evaluate every N epochs (0 = only at the end).")
    limit: int | None = Field(
        None, gt=0, description="Use at most this many evaluation images (None = all)."
    )


class ScalingSection(StrictModel):
    num_workers: int = Field(
        1, gt=0, description="Ray Train workers (DDP ranks); optim.batch_size must be a multiple."
    )
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs reserved per worker (0.5 on 2-core machines)."
    )


class StorageSection(StrictModel):
    path: str = Field("./ray_results", description="RunConfig storage path (local or s3://).")
    name: str | None = Field(
        None, description="Run name (same name resumes); None = a fresh timestamped name."
    )


class MlflowSection(StrictModel):
    experiment: str = Field("mdir-retrieval", description="MLflow experiment name.")
    register_model: bool = Field(
        True, description="Register the final network as `model_name` with `alias`."
    )
    model_name: str | None = Field(
        None, description="Registered name; None = mdir-retrieval-<dataset>."
    )
    alias: str = Field("candidate", description="Alias set on the new model version.")
    run_name: str | None = Field(None, description="MLflow run name.")


class RetrievalJobConfig(StrictModel):
    """Everything the retrieval job reads; see the module docstring for the defaults' sources."""

    model: RetrievalModelConfig = Field(
        default_factory=RetrievalModelConfig, description="Embedding network."
    )
    data: RetrievalDataConfig = Field(description="Training data and matching information.")
    mining: MiningConfig = Field(default_factory=MiningConfig, description="Tuple mining.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimisation.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="GAN augmentation.")
    eval: RetrievalEvalConfig = Field(
        default_factory=RetrievalEvalConfig, description="Evaluation."
    )
    scaling: ScalingSection = Field(
        default_factory=ScalingSection, description="Ray Train scaling."
    )
    storage: StorageSection = Field(
        default_factory=StorageSection, description="Checkpoint storage."
    )
    mlflow: MlflowSection = Field(
        default_factory=MlflowSection, description="Tracking and registration."
    )
    seed: int = Field(
        0, description="Seed of model init, query/pool sampling and augmentation draws."
    )

    @model_validator(mode="after")
    def _check(self) -> RetrievalJobConfig:
        if self.optim.batch_size % self.scaling.num_workers:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must be a multiple of scaling.num_workers "
                f"({self.scaling.num_workers}) so every rank gets the same number of tuples"
            )
        return self

    @property
    def margin(self) -> float:
        """τ: explicit value or the trunk's default."""
        return (
            self.mining.margin
            if self.mining.margin is not None
            else DEFAULT_MARGIN[self.model.arch]
        )

    @property
    def lr(self) -> float:
        return self.optim.lr if self.optim.lr is not None else DEFAULT_LR[self.model.arch]

    @property
    def dataset_name(self) -> str:
        if self.data.name:
            return self.data.name
        return Path(self.data.uri.rstrip("/")).name or "dataset"

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or f"mdir-retrieval-{self.dataset_name}"


def load_retrieval_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> RetrievalJobConfig:
    """YAML + ``key=value`` overrides → validated config (`ConfigError` names bad fields).
    A relative local ``data.uri`` / ``data.pairs_file`` is made absolute against the current
    directory (where the job is submitted from): Ray workers run in other directories."""
    from mdir.data.io import absolute_local

    cfg = load_config(RetrievalJobConfig, path, overrides)
    data = {"uri": absolute_local(cfg.data.uri)}
    if cfg.data.pairs_file:
        data["pairs_file"] = absolute_local(cfg.data.pairs_file)
    update = {"data": cfg.data.model_copy(update=data)}
    if cfg.eval.uri:
        update["eval"] = cfg.eval.model_copy(update={"uri": absolute_local(cfg.eval.uri)})
    return cfg.model_copy(update=update)
