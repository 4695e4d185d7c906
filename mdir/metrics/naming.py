"""Metric names that say which protocol and feature network produced them.

A number is only comparable with another computed under the same resize protocol and by
the same network, so both are in the key: `metric_key("fid", "inception", "legacy") ==
"fid_legacy"` (the standard inception-2015-12-05 network, TF / pytorch-fid resize), and a
randomly initialised Inception is never reported as "FID":
`metric_key("fid", "random_inception", "legacy") == "fid_legacy_random_inception"`.
The image count goes into the MLflow tag `mdir.fid.n_images` (keys stay stable over runs).
"""

from __future__ import annotations

from typing import Literal

STANDARD_LABEL = "inception"
"""Label of the standard FID Inception-v3 (inception-2015-12-05 weights)."""

RANDOM_LABEL = "random_inception"
"""Label of a randomly initialised Inception-v3 (only with allow_random)."""

STANDARD_FEATURES = "inception-2015-12-05"
"""Value of the `mdir.fid.features` tag for the standard network."""

Protocol = Literal["legacy", "clean"]
PROTOCOLS: tuple[str, ...] = ("legacy", "clean")
"""legacy: TF / pytorch-fid bilinear resize without antialias; clean: clean-fid's PIL bicubic."""

FEATURE_METRICS = ("fid", "kid", "kid_std", "is", "is_std", "prd_f8", "prd_f1_8")
"""Keys whose values depend on the feature extractor."""

MLFLOW_TAG = "mdir.feature_extractor"
"""MLflow tag naming the feature extractor (and its weight source) behind the logged metrics."""

PROTOCOL_TAG = "mdir.fid.protocol"
FEATURES_TAG = "mdir.fid.features"
N_IMAGES_TAG = "mdir.fid.n_images"


def metric_key(base: str, extractor_label: str, protocol: str = "legacy") -> str:
    """`<base>_<protocol>` for the standard network, `<base>_<protocol>_<label>` otherwise."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown FID protocol {protocol!r}; use one of {PROTOCOLS}")
    key = f"{base}_{protocol}"
    return key if extractor_label == STANDARD_LABEL else f"{key}_{extractor_label}"


def features_name(extractor_label: str | None) -> str:
    """Value of the `mdir.fid.features` tag: the network's name, or the random label."""
    if extractor_label is None:
        return "none"
    return STANDARD_FEATURES if extractor_label == STANDARD_LABEL else extractor_label


def fid_tags(extractor_label: str | None, protocol: str, n_images: int) -> dict[str, str]:
    """The MLflow tags every run that logs feature metrics carries."""
    return {
        PROTOCOL_TAG: protocol,
        FEATURES_TAG: features_name(extractor_label),
        N_IMAGES_TAG: str(int(n_images)),
    }
