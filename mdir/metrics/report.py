"""Did the generator translate? One table: untranslated sources vs real targets beside
translated sources vs real targets, on the same held-out images.

The first row is the bar to clear: a translator that does its job brings every column of
the second row well below the first (FID, KID, colour-histogram distance) and moves the
mean luminance towards the real targets'. Feature metrics use the standard Inception
weights when present and carry the `_random_inception` label otherwise (`mdir.metrics.gan`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mdir.metrics.appearance import colour_histogram_distance, mean_luminance
from mdir.metrics.config import EvalConfig
from mdir.metrics.gan import compute_image_metrics, get_extractor, to_uint8_nhwc, translate_images


@dataclass
class TranslationReport:
    """Rows ``source`` (untranslated) and ``translated``, each {column: value}."""

    rows: dict[str, dict[str, float]]
    target_luminance: float
    num_images: int
    extractor_label: str | None
    fake_images: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "target_luminance": self.target_luminance,
            "num_images": self.num_images,
            "features": self.extractor_label,
            "warnings": self.warnings,
        }

    def markdown(self, source: str = "day", target: str = "night") -> str:
        cols = sorted({c for r in self.rows.values() for c in r}, key=_column_order)
        names = {
            "source": f"real {source} vs real {target}",
            "translated": f"translated {source} vs real {target}",
        }
        lines = [
            "| images | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for key, row in self.rows.items():
            cells = [f"{row[c]:.4g}" if c in row else "–" for c in cols]
            lines.append(f"| {names.get(key, key)} | " + " | ".join(cells) + " |")
        lines.append(
            f"\n{self.num_images} held-out images per set; real {target} mean luminance "
            f"{self.target_luminance:.3f}; features: {self.extractor_label or 'none'}."
        )
        return "\n".join(lines)


def _column_order(col: str) -> tuple[int, str]:
    order = ("fid", "kid", "luminance", "colour_hist")
    return next((i for i, p in enumerate(order) if col.startswith(p)), len(order)), col


def translation_report(
    translate: Callable[..., torch.Tensor],
    sources: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    cfg: EvalConfig,
    references: np.ndarray | torch.Tensor | None = None,
) -> TranslationReport:
    """Score the untranslated `sources` and their translations against the real `targets`
    (uint8, NHWC or NCHW) with one feature extractor and the same
    image count. FID and KID columns come from `cfg.metrics` ∩ {fid, kid}."""
    src, tgt = to_uint8_nhwc(sources), to_uint8_nhwc(targets)
    ref = to_uint8_nhwc(references) if references is not None else None
    n = min(len(src), len(tgt), cfg.num_images or len(src))
    src, tgt = src[:n], tgt[:n]
    ref = ref[:n] if ref is not None else None
    fake = translate_images(translate, src, cfg.batch_size, ref)
    feat_cfg = cfg.model_copy(update={"metrics": [m for m in cfg.metrics if m in ("fid", "kid")]})
    extractor = get_extractor(feat_cfg) if feat_cfg.metrics else None
    rows: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    label = None
    for key, images in (("source", src), ("translated", fake)):
        row: dict[str, float] = {}
        if extractor is not None:
            res = compute_image_metrics(tgt, images, feat_cfg, extractor=extractor)
            row.update(res.metrics)
            label = res.extractor_label
            warnings += [w for w in res.warnings if w not in warnings]
        row["luminance"] = mean_luminance(images)
        row["colour_hist_tv"] = colour_histogram_distance(images, tgt)
        rows[key] = row
    return TranslationReport(rows, mean_luminance(tgt), n, label, fake, warnings)
