"""Evaluate a registered generator: translate an evaluation split and compute the GAN
metrics (`mdir eval gan --model`, `jobs/evaluate.py`).

Above the registry, training and metrics: the images come through the training data plan
of the run that registered the model (same reader, resize, order and count as the
in-training evaluation), so both paths give the same numbers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mdir.metrics.config import EvalConfig
from mdir.metrics.gan import GanEvalResult
from mdir.metrics.report import TranslationReport, translation_report
from mdir.metrics.runner import is_shard_dataset, load_image_set

log = logging.getLogger(__name__)

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
    from mdir.registry.generators import load_translator

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
    if translator.needs_reference:  # appearance reference: the targets, as in training
        ref = tgt_a[np.arange(len(src_a)) % len(tgt_a)]

    def translate(x, reference=None):
        import torch

        from mdir.methods.anysize import translate_any_size

        dev = next(translator.generator.parameters()).device
        r = reference.to(dev) if isinstance(reference, torch.Tensor) else None
        # full images at their size: padded to the generator's stride multiple, cropped back
        return translate_any_size(
            lambda t: translator.translate(t, r), x.to(dev), multiple=translator.size_multiple
        ).cpu()

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
