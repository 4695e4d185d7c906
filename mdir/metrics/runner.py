"""Orchestration behind `mdir eval gan` and `jobs/evaluate.py`: load image sets (a folder
of image files, or an mdir shard dataset by URI), translate an evaluation split with a
registered generator, compute the metrics, log them (and the PRD plot) to MLflow.

Bad image files are skipped and counted per reason, never fatal.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdir.metrics.config import EvalConfig
from mdir.metrics.gan import GanEvalResult, compute_image_metrics
from mdir.metrics.naming import MLFLOW_TAG
from mdir.metrics.report import TranslationReport, translation_report

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


RESOLVED_CONFIG = "config/resolved_config.yaml"
"""Artifact of every training run: the job config the run trained (and evaluated) with."""


def training_config_of(run_id: str | None) -> Any | None:
    """The `TrainJobConfig` a registered model's run logged, or None (no run / no config)."""
    if not run_id:
        return None
    import mlflow
    import yaml

    from mdir.training.config import TrainJobConfig

    try:
        with tempfile.TemporaryDirectory(prefix="mdir-cfg-") as d:
            p = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=RESOLVED_CONFIG, dst_path=d
            )
            data = yaml.safe_load(Path(p).read_text())
    except Exception as e:  # not an mdir training run (e.g. registered by hand)
        log.info(
            "run %s has no %s (%s): reading the split as image files", run_id, RESOLVED_CONFIG, e
        )
        return None
    return TrainJobConfig.model_validate(data)


def training_eval_images(
    train_cfg: Any,
    data_uri: str,
    cfg: EvalConfig,
    source_conditions: list[str],
    target_conditions: list[str],
    image_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sources, real targets) exactly as the in-training evaluation reads them: the run's
    data settings on `data_uri` / `cfg.split`, through the training data plan (same reader,
    resize, order, count and target cycling), so both paths give the same numbers."""
    from mdir.training.data_plan import ShardDataPlan

    update: dict[str, Any] = {"uri": data_uri, "val_split": cfg.split}
    if source_conditions:
        update["domain_a"] = source_conditions
    if target_conditions:
        update["domain_b"] = target_conditions
    if image_size:
        update["image_size"] = image_size
    data = train_cfg.data.model_copy(update=update)
    n = cfg.num_images or train_cfg.train.eval_images
    return ShardDataPlan(data, train_cfg.train.batch_size).eval_images(n)


def _model_images(
    model_uri: str,
    data_uri: str,
    cfg: EvalConfig,
    source_conditions: list[str],
    target_conditions: list[str],
    image_size: int | None,
    device: str,
) -> tuple[Callable, np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """(translate, sources, real targets, references or None, info) of a registered
    generator on `cfg.split`, read as in training when the run's config is known."""
    try:
        from mdir.training.registry import load_translator
    except ImportError as e:  # pragma: no cover - depends on the training area
        raise RuntimeError(
            "`--model` needs mdir.training.registry.load_translator (training area), which "
            f"could not be imported: {e}. Use --real/--fake folders instead."
        ) from e

    if not source_conditions or not target_conditions:
        raise ValueError(
            "--model needs --source and --target conditions (e.g. --source day --target night)"
        )
    translator = load_translator(model_uri, device=device)
    train_cfg = training_config_of(translator.run_id) if is_shard_dataset(data_uri) else None
    if train_cfg is not None:
        src_a, tgt_a = training_eval_images(
            train_cfg, data_uri, cfg, source_conditions, target_conditions, image_size
        )
        images_from = "training data plan"
    else:
        src_a, tgt_a = _split_images(
            data_uri, cfg, source_conditions, target_conditions, image_size
        )
        images_from = "image files"
    ref = None
    if translator.method == "mduit":  # appearance reference: the targets, as in training
        ref = tgt_a[np.arange(len(src_a)) % len(tgt_a)]

    def translate(x, reference=None):
        import torch

        dev = next(translator.generator.parameters()).device
        r = reference.to(dev) if isinstance(reference, torch.Tensor) else None
        return translator.translate(x.to(dev), r).cpu()

    info = {
        "model_uri": model_uri,
        "model_version": translator.version,
        "run_id": translator.run_id,
        "method": translator.method,
        "data": data_uri,
        "split": cfg.split,
        "source": source_conditions,
        "target": target_conditions,
        "images_from": images_from,
    }
    return translate, src_a, tgt_a, ref, info


def evaluate_model(
    model_uri: str,
    data_uri: str,
    cfg: EvalConfig,
    source_conditions: list[str],
    target_conditions: list[str],
    image_size: int | None = None,
    device: str = "cpu",
) -> tuple[GanEvalResult, dict]:
    """Translate the `cfg.split` images of `source_conditions` with a registered generator
    and compare with the real `target_conditions` images of the same split."""
    from mdir.metrics.gan import evaluate_translation_detailed

    translate, src_a, tgt_a, ref, info = _model_images(
        model_uri, data_uri, cfg, source_conditions, target_conditions, image_size, device
    )
    res = evaluate_translation_detailed(translate, src_a, tgt_a, cfg, reference_images=ref)
    return res, info


def report_model(
    model_uri: str,
    data_uri: str,
    cfg: EvalConfig,
    source_conditions: list[str],
    target_conditions: list[str],
    image_size: int | None = None,
    device: str = "cpu",
    examples: int = 8,
) -> tuple[TranslationReport, list[list[np.ndarray]], dict]:
    """`translation_report` of a registered generator on `cfg.split` (untranslated vs
    translated sources against the real targets), plus up to `examples` rows
    [source, translation, real target] of the same place and pose for a grid."""
    translate, src_a, tgt_a, ref, info = _model_images(
        model_uri, data_uri, cfg, source_conditions, target_conditions, image_size, device
    )
    rep = translation_report(translate, src_a, tgt_a, cfg, ref)
    rows = _same_pose_examples(
        translate, data_uri, cfg.split, source_conditions, target_conditions,
        src_a.shape[1], examples, cfg.batch_size, with_reference=ref is not None,
    )  # fmt: skip
    return rep, rows, info


def _same_pose_examples(
    translate: Callable,
    data_uri: str,
    split: str,
    source_conditions: list[str],
    target_conditions: list[str],
    size: int,
    k: int,
    batch_size: int,
    with_reference: bool,
) -> list[list[np.ndarray]]:
    """[source, translation, target] rows whose source and target show the same place from
    the same pose (synthetic and other posed data); [] when the split has no such pairs."""
    if k <= 0 or not is_shard_dataset(data_uri):
        return []
    from mdir.data.store import ShardImageStore
    from mdir.metrics.gan import to_uint8_nhwc, translate_images

    src = ShardImageStore(data_uri, split, size, conditions=source_conditions)
    tgt = ShardImageStore(data_uri, split, size, conditions=target_conditions)
    sm, tm = src.meta(), tgt.meta()
    by_view = {
        (int(p), tuple(np.round(q, 3))): i
        for i, (p, q) in enumerate(zip(tm["place"], tm["pose"], strict=True))
    }
    pairs = []
    for i, (p, q) in enumerate(zip(sm["place"], sm["pose"], strict=True)):
        j = by_view.get((int(p), tuple(np.round(q, 3))))
        if j is not None:
            pairs.append((i, j))
        if len(pairs) == k:
            break
    if not pairs:
        return []
    s_img = to_uint8_nhwc(src.load_uint8([int(src.ids()[i]) for i, _ in pairs]))
    t_img = to_uint8_nhwc(tgt.load_uint8([int(tgt.ids()[j]) for _, j in pairs]))
    fake = translate_images(translate, s_img, batch_size, t_img if with_reference else None)
    return [[s_img[n], fake[n], t_img[n]] for n in range(len(pairs))]


def _split_images(
    data_uri: str,
    cfg: EvalConfig,
    source_conditions: list[str],
    target_conditions: list[str],
    image_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Source / target images of `cfg.split` read as image files (models without a
    training config)."""
    src = load_image_set(
        data_uri, split=cfg.split, conditions=source_conditions, limit=cfg.num_images
    )
    tgt = load_image_set(
        data_uri, split=cfg.split, conditions=target_conditions, limit=cfg.num_images
    )
    if len(src.images) < 2 or len(tgt.images) < 2:
        raise ValueError(
            f"split {cfg.split!r} of {data_uri} has {len(src.images)} source ({source_conditions}) "
            f"and {len(tgt.images)} target ({target_conditions}) images; need ≥ 2 each"
        )
    src_a = src.stacked(image_size)
    tgt_a = tgt.stacked(image_size or src_a.shape[1])
    return src_a, tgt_a


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
