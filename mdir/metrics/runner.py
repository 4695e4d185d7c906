"""Orchestration behind `mdir eval gan` and `jobs/evaluate.py`: load image sets (a folder
of image files, or an mdir shard dataset by URI), compute the metrics, log them (and the
PRD plot) to MLflow. Translating a split with a registered generator is
`mdir.evaluation.model` (it reads the training data plan, a layer above metrics).

Bad image files are skipped and counted per reason, never fatal.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mdir.metrics.config import EvalConfig
from mdir.metrics.gan import GanEvalResult, compute_image_metrics
from mdir.metrics.naming import MLFLOW_TAG

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


@dataclass
class ImageSet:
    """uint8 HWC images (stacked when all shapes agree), their metadata and skip counts."""

    images: list[np.ndarray]
    meta: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    source: str = ""

    def stacked(self, size: int | None = None) -> np.ndarray:
        """[N, H, W, 3]; images of other sizes are resized (PIL bicubic) to the first one's
        size, or to `size`×`size` when given."""
        from PIL import Image

        if not self.images:
            raise ValueError(f"no images in {self.source}")
        h, w = (size, size) if size else self.images[0].shape[:2]
        out = []
        for im in self.images:
            if im.shape[:2] != (h, w):
                im = np.asarray(Image.fromarray(im).resize((w, h), Image.BICUBIC))
            out.append(im)
        return np.stack(out)


def is_shard_dataset(uri: str) -> bool:
    """True when `uri` holds an mdir dataset (a manifest.json at its root)."""
    from mdir.data.io import get_fs

    fs, path = get_fs(uri)
    return fs.exists(path.rstrip("/") + "/manifest.json")


def _decode_file(fs: Any, path: str) -> np.ndarray:
    from PIL import Image

    with fs.open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def iter_folder(
    uri: str, limit: int | None = None, skipped: Counter | None = None
) -> Iterator[tuple[dict, np.ndarray]]:
    """(metadata, uint8 image) for every image file below a folder (local or s3://)."""
    from mdir.data.io import get_fs

    fs, path = get_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"image folder not found: {uri}")
    n = 0
    for p in sorted(fs.find(path)):
        if not p.lower().endswith(IMAGE_EXTS):
            if skipped is not None:
                skipped["not_an_image_file"] += 1
            continue
        try:
            img = _decode_file(fs, p)
        except Exception as e:  # corrupt / truncated: skip and count
            if skipped is not None:
                skipped[f"undecodable:{type(e).__name__}"] += 1
            log.warning("skipping %s: %s", p, e)
            continue
        if min(img.shape[:2]) < 2:
            if skipped is not None:
                skipped["too_small"] += 1
            continue
        yield {"source": p}, img
        n += 1
        if limit is not None and n >= limit:
            return


def load_image_set(
    uri: str,
    split: str | None = None,
    conditions: list[str] | None = None,
    limit: int | None = None,
) -> ImageSet:
    """All images of a folder, or of `split`/`conditions` of an mdir shard dataset."""
    skipped: Counter = Counter()
    if is_shard_dataset(uri):
        from mdir.data.pipeline import iter_images

        rows = list(iter_images(uri, split=split, conditions=conditions or None, limit=limit))
    else:
        rows = list(iter_folder(uri, limit=limit, skipped=skipped))
    return ImageSet([r[1] for r in rows], [r[0] for r in rows], skipped, uri)


def evaluate_folders(
    real: str, fake: str, cfg: EvalConfig, split: str | None = None
) -> tuple[GanEvalResult, dict]:
    """Metrics between two image sets (folders or shard datasets)."""
    rs = load_image_set(real, split=split, limit=cfg.num_images)
    fs_ = load_image_set(fake, split=split, limit=cfg.num_images)
    if len(rs.images) < 2 or len(fs_.images) < 2:
        raise ValueError(
            f"need ≥ 2 images per set: {real} has {len(rs.images)}, {fake} has {len(fs_.images)}"
        )
    res = compute_image_metrics(_as_array(rs), _as_array(fs_), cfg)
    info = {
        "real": real,
        "fake": fake,
        "skipped_real": dict(rs.skipped),
        "skipped_fake": dict(fs_.skipped),
    }
    return res, info


def _as_array(s: ImageSet) -> np.ndarray | list[np.ndarray]:
    """Stacked when shapes agree (SSIM needs that), else the list (Inception resizes each)."""
    return np.stack(s.images) if len({im.shape for im in s.images}) == 1 else list(s.images)


def extractor_tag(res: GanEvalResult) -> str:
    """Value of the `mdir.feature_extractor` MLflow tag."""
    if res.extractor_label is None:
        return "none (no feature metrics)"
    return f"{res.extractor_label}: {res.extractor_source}"


def log_to_mlflow(
    res: GanEvalResult, run_id: str, prefix: str = "eval/", step: int | None = None
) -> None:
    """Log metrics, the feature-extractor tag and the PRD plot to an existing MLflow run."""
    from mlflow.tracking import MlflowClient

    from mdir.metrics.prd import plot_prd

    client = MlflowClient()
    for k, v in res.metrics.items():
        client.log_metric(run_id, f"{prefix}{k}", float(v), step=step or 0)
    client.log_metric(run_id, f"{prefix}num_real", float(res.num_real), step=step or 0)
    client.log_metric(run_id, f"{prefix}num_fake", float(res.num_fake), step=step or 0)
    client.set_tag(run_id, MLFLOW_TAG, extractor_tag(res))
    if res.extractor_label is not None:
        for k, v in res.tags().items():  # mdir.fid.protocol / .features / .n_images
            client.set_tag(run_id, k, v)
    if res.prd is not None:
        with tempfile.TemporaryDirectory(prefix="mdir-prd-") as d:
            p = plot_prd(
                {"fake vs real": res.prd},
                os.path.join(d, "prd.png"),
                title=f"PRD ({res.extractor_label})",
            )
            client.log_artifact(run_id, p, artifact_path="eval")


def result_json(res: GanEvalResult, info: dict) -> dict[str, Any]:
    """The object `--json` prints."""
    return {
        "metrics": res.metrics,
        "feature_extractor": res.extractor_label,
        "feature_extractor_source": res.extractor_source,
        "num_real": res.num_real,
        "num_fake": res.num_fake,
        "warnings": res.warnings,
        **info,
    }
