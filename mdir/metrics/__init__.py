"""Image-quality metrics (FID, KID, IS, PRD, SSIM / MS-SSIM) and retrieval / localization
metrics. Every function is pure (arrays in, numbers out) and checked against formulas.

Public names (contract; imported lazily so that `mdir --help` stays fast):

- `frechet_distance(mu1, sigma1, mu2, sigma2) -> float` — float64 Fréchet distance
  (`mdir.metrics.fid`), no `scipy.linalg.sqrtm`.
- `GaussianStats` — streaming float64 mean/covariance: `.update(feats)`, `.merge(other)`
  (exact pairwise merge across workers), `.mean`, `.cov`, `.frechet_distance(other)`.
- `FeatureExtractor` (`mdir.metrics.features`) — FID Inception-v3 (pool 2048 + 1008
  logits without the fc bias, when the weights have the fc); protocol `legacy` / `clean`;
  weights from a local path / `MDIR_INCEPTION_WEIGHTS` / cache (`mdir metrics weights
  import`, `mdir.metrics.weights`), never downloaded; `allow_random=True` gives
  `.label == "random_inception"`.
- `EvalConfig` (`mdir.metrics.config`) — which metrics, sizes, KID/IS/PRD settings,
  `inception_weights`, `allow_random_features`, `batch_size`, `num_workers`.
- `evaluate_translation(translate, source_images, real_target_images, cfg,
  reference_images=None) -> dict[str, float]` (`mdir.metrics.gan`) — keys `fid_<protocol>`,
  `kid_<protocol>`, `kid_std_<protocol>`, `is_<protocol>`, `is_std_<protocol>`,
  `prd_f8_<protocol>`, `prd_f1_8_<protocol>` (+ `ssim`, `ms_ssim` when paired); with random
  features each feature key gets the suffix `_random_inception`; degenerate values omitted.
- `metric_key(base, extractor_label, protocol)` (`mdir.metrics.naming`) — builds those keys;
  `FEATURE_EXTRACTOR_TAG` = "mdir.feature_extractor" is the MLflow tag to set, with the
  value `feature_extractor_tag(cfg)` (label + weight source).
- `revisited_map(ranks, gnd, protocol)`, `recall_at_n(ranks, positives, ns)`,
  `positives_within(...)`, `localization_recall(ranks, query_poses, db_poses,
  query_conditions, thresholds, top_k)` (`mdir.metrics.retrieval`); `ranks` is
  [n_queries, n_db] with database indices best first.
- `kernel_inception_distance`, `inception_score`, `compute_prd` / `plot_prd`, `ssim`,
  `ms_ssim`, `extract_features_distributed` (Ray).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "frechet_distance": "mdir.metrics.fid",
    "GaussianStats": "mdir.metrics.fid",
    "trace_sqrt_product": "mdir.metrics.fid",
    "FeatureExtractor": "mdir.metrics.features",
    "Features": "mdir.metrics.features",
    "EvalConfig": "mdir.metrics.config",
    "evaluate_translation": "mdir.metrics.gan",
    "evaluate_translation_detailed": "mdir.metrics.gan",
    "compute_image_metrics": "mdir.metrics.gan",
    "GanEvalResult": "mdir.metrics.gan",
    "feature_extractor_tag": "mdir.metrics.gan",
    "metric_key": "mdir.metrics.naming",
    "STANDARD_LABEL": "mdir.metrics.naming",
    "RANDOM_LABEL": "mdir.metrics.naming",
    "revisited_map": "mdir.metrics.retrieval",
    "recall_at_n": "mdir.metrics.retrieval",
    "positives_within": "mdir.metrics.retrieval",
    "localization_recall": "mdir.metrics.retrieval",
    "kernel_inception_distance": "mdir.metrics.kid",
    "inception_score": "mdir.metrics.inception_score",
    "compute_prd": "mdir.metrics.prd",
    "plot_prd": "mdir.metrics.prd",
    "PRDCurve": "mdir.metrics.prd",
    "ssim": "mdir.metrics.ssim",
    "ms_ssim": "mdir.metrics.ssim",
    "extract_features_distributed": "mdir.metrics.distributed",
}

FEATURE_EXTRACTOR_TAG = "mdir.feature_extractor"

__all__ = [*_EXPORTS, "FEATURE_EXTRACTOR_TAG"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'mdir.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
