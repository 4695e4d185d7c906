"""Metric names that say which feature extractor produced them.

A number computed from a randomly initialised Inception must never be reported as "FID":
`metric_key("fid", "random_inception") == "fid_random_inception"`.
"""

from __future__ import annotations

STANDARD_LABEL = "inception"
"""Label of the standard FID Inception-v3 (pt_inception-2015-12-05 weights)."""

RANDOM_LABEL = "random_inception"
"""Label of a randomly initialised Inception-v3 (only with allow_random)."""

FEATURE_METRICS = ("fid", "kid", "kid_std", "is", "is_std", "prd_f8", "prd_f1_8")
"""Keys whose values depend on the feature extractor."""

MLFLOW_TAG = "mdir.feature_extractor"
"""MLflow tag naming the feature extractor behind the logged metrics."""


def metric_key(base: str, extractor_label: str) -> str:
    """`base` for the standard extractor, `base_<label>` for any other (e.g. random)."""
    if extractor_label == STANDARD_LABEL:
        return base
    return f"{base}_{extractor_label}"
