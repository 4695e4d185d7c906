"""Feature-free appearance checks and the translation report (issue 20: 'did it translate?')."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdir.metrics.appearance import colour_histogram, colour_histogram_distance, mean_luminance
from mdir.metrics.config import EvalConfig
from mdir.metrics.report import translation_report


def test_mean_luminance_is_bt601_luma():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    img[0, ..., 0] = 255  # pure red
    img[1, ..., 2] = 255  # pure blue
    assert mean_luminance(img) == pytest.approx((0.299 + 0.114) / 2)
    assert mean_luminance(np.full((1, 2, 2, 3), 255, np.uint8)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        mean_luminance(np.zeros((4, 4, 3), np.uint8))


def test_colour_histogram_distance_is_total_variation():
    black = np.zeros((1, 4, 4, 3), np.uint8)
    white = np.full((1, 4, 4, 3), 255, np.uint8)
    half = np.concatenate([black[:, :2], white[:, :2]], 1)  # half black, half white pixels
    h = colour_histogram(half, bins=4)
    assert (
        h.sum() == pytest.approx(1.0) and h[0] == pytest.approx(0.5) and h[-1] == pytest.approx(0.5)
    )
    assert colour_histogram_distance(black, white) == pytest.approx(1.0)
    assert colour_histogram_distance(black, half) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert colour_histogram_distance(x, x) == 0.0


def _synth(cond: str, n: int, size: int = 32) -> np.ndarray:
    from mdir.data.synth import render_place

    out = [r["image"] for p in range(n) for r in render_place(p, 1, [cond], size, seed=1)]
    return np.stack(out[:n])


def test_report_rows_identity_and_darkening():
    day, night = _synth("day", 12), _synth("night", 12)
    cfg = EvalConfig(
        metrics=["kid"], allow_random_features=True, device="cpu", batch_size=12, kid_subset_size=6
    )
    ident = translation_report(lambda x: x, day, night, cfg)
    s, t = ident.rows["source"], ident.rows["translated"]
    # identity: the translated row is the untranslated row (one extractor, same images)
    for k in s:
        assert t[k] == pytest.approx(s[k], rel=1e-6, abs=1e-9), k
    assert ident.target_luminance == pytest.approx(mean_luminance(night))
    assert s["luminance"] == pytest.approx(mean_luminance(day))
    # a translator that darkens and tints moves both feature-free columns towards night
    dark = translation_report(
        lambda x: (x + 1) * torch.tensor([0.2, 0.2, 0.35]).view(1, 3, 1, 1) - 1, day, night, cfg
    )
    d = dark.rows["translated"]
    assert abs(d["luminance"] - ident.target_luminance) < abs(
        s["luminance"] - ident.target_luminance
    )
    assert d["colour_hist_tv"] < s["colour_hist_tv"]
    md = dark.markdown("day", "night")
    assert "real day vs real night" in md and "translated day vs real night" in md
    assert any(k.startswith("kid") and k.endswith("_random_inception") for k in d)  # labelled
