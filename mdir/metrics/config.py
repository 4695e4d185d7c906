"""`EvalConfig`: which image-quality metrics to compute and how (one section of job configs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mdir.config import StrictModel
from mdir.metrics.naming import Protocol

MetricName = Literal["fid", "kid", "is", "prd", "ssim", "ms_ssim"]


class EvalConfig(StrictModel):
    """Evaluation settings shared by training, Tune and `mdir eval` (so the numbers agree)."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: ["fid", "kid", "is", "prd"],
        description="Metrics to compute. fid/kid/is/prd use Inception features; ssim/ms_ssim "
        "need paired data (translated source vs its real target, same count and size).",
    )
    split: str = Field(
        "val",
        description="Split that `mdir eval` / jobs/evaluate.py evaluate. Training curves and Tune "
        "always evaluate on data.val_split (model selection never sees the test split); use the "
        "test split here only for the final report.",
    )
    num_images: int | None = Field(
        None,
        ge=2,
        description="Use at most this many images per set (first N); None = all. FID is "
        "biased below 2048 images (a warning is emitted and KID is reported beside it).",
    )
    batch_size: int = Field(
        32, ge=1, description="Images per forward pass of the feature network and the translator."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Device for the feature network: auto = cuda when available."
    )
    inception_weights: str | None = Field(
        None,
        description="Local path of the FID Inception-v3 weights (pt_inception-2015-12-05, "
        ".pth state dict or .safetensors). None = env MDIR_INCEPTION_WEIGHTS, then the torch "
        "hub cache. Never downloaded.",
    )
    fid_protocol: Protocol = Field(
        "legacy",
        description="Resize protocol of the feature metrics, part of every key (fid_legacy, "
        "fid_clean): legacy = TF FID / pytorch-fid bilinear resize without antialias (the "
        "papers' numbers); clean = clean-fid's PIL bicubic in float, clipped.",
    )
    require_standard_weights: bool = Field(
        False,
        description="Fail before training starts (and in `mdir eval`) when the standard "
        "inception-2015-12-05 weights are not found, even if allow_random_features is set.",
    )
    allow_random_features: bool = Field(
        False,
        description="Without standard weights, run on a randomly initialised (seeded) Inception "
        "instead of failing. Every metric key then ends in `_random_inception` and IS is omitted.",
    )
    kid_subsets: int = Field(100, ge=1, description="KID: number of random subsets averaged.")
    kid_subset_size: int = Field(
        1000, ge=2, description="KID: subset size (capped at the smaller set size)."
    )
    is_splits: int = Field(
        10, ge=1, description="Inception Score: number of splits (mean ± std over splits)."
    )
    prd_num_clusters: int = Field(
        20, ge=2, description="PRD: k-means clusters on the union of real and fake features."
    )
    prd_num_angles: int = Field(1001, ge=3, description="PRD: number of slopes λ on the curve.")
    prd_num_runs: int = Field(10, ge=1, description="PRD: k-means runs whose curves are averaged.")
    seed: int = Field(
        0, description="Seed of KID subsets, PRD k-means and the random feature network."
    )
    num_workers: int = Field(
        0,
        ge=0,
        description="Ray workers for feature extraction of large sets (0 = in this process). "
        "Per-worker statistics are merged exactly.",
    )
