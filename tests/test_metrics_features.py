"""FID Inception: architecture/state-dict compatibility, local weight loading (never a
download), random-feature labelling, the clean-fid resize, and evaluate_translation keys."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import inception as tvi

from mdir.metrics import EvalConfig, FeatureExtractor, evaluate_translation
from mdir.metrics.features import (
    FEATURE_DIM,
    NUM_LOGITS,
    WEIGHTS_ENV,
    FIDInception,
    random_init_,
    resize_for_inception,
)
from mdir.metrics.gan import evaluate_translation_detailed, uint8_to_unit, unit_to_uint8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_cached_weights(monkeypatch, tmp_path):
    """No env var, an empty torch hub cache and HOME: nothing to find locally."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    monkeypatch.setenv("MDIR_CACHE_DIR", str(tmp_path / "mdir-cache"))


def test_state_dict_matches_torchvision_inception_names_and_shapes():
    """pt_inception-2015-12-05 is a torchvision Inception3 (1008 classes, no aux) state
    dict; ours must have exactly those names and shapes."""
    ours = FIDInception().state_dict()
    ref = tvi.Inception3(num_classes=NUM_LOGITS, aux_logits=False, init_weights=False).state_dict()
    assert set(ours) == set(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)
    # TF semantics: Mixed_7c pools with max, the other blocks exclude padding from averages
    net = FIDInception()
    assert net.Mixed_7c.pool == "max" and net.Mixed_7b.pool == "avg"


def test_missing_weights_fail_clearly_unless_random_allowed(no_cached_weights):
    with pytest.raises(FileNotFoundError, match="allow_random"):
        FeatureExtractor()
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureExtractor(weights="/nonexistent/pt_inception.pth")
    fe = FeatureExtractor(allow_random=True, device="cpu")
    assert fe.label == "random_inception" and "NOT the FID network" in fe.source


def test_local_weights_load_from_path_env_and_cache(no_cached_weights, tmp_path, monkeypatch):
    sd = random_init_(FIDInception(), seed=3).state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # like the TF port
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, pth)
    from safetensors.torch import save_file

    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))

    imgs = np.random.default_rng(0).integers(0, 256, (1, 48, 40, 3), dtype=np.uint8)
    by_path = FeatureExtractor(weights=str(pth), device="cpu")
    assert by_path.label == "inception" and str(pth) in by_path.source
    f_path = by_path.extract(imgs)
    assert f_path.pool.shape == (1, FEATURE_DIM) and f_path.logits.shape == (1, NUM_LOGITS)
    assert f_path.pool.dtype == np.float32 and np.isfinite(f_path.pool).all()
    # same weights through the seed-3 random init: identical features, other label
    rnd = FeatureExtractor(allow_random=True, seed=3, device="cpu")
    np.testing.assert_allclose(rnd.extract(imgs).pool, f_path.pool, rtol=1e-5, atol=1e-6)
    assert rnd.label == "random_inception"

    monkeypatch.setenv(WEIGHTS_ENV, str(st))
    assert FeatureExtractor(device="cpu").label == "inception"
    monkeypatch.delenv(WEIGHTS_ENV)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / pth.name).write_bytes(pth.read_bytes())
    assert FeatureExtractor(device="cpu").label == "inception"

    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not an FID Inception"):
        FeatureExtractor(weights=str(bad))


def test_clean_fid_resize_is_pil_bicubic_per_channel_float():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = resize_for_inception(img)
    assert out.shape == (3, 299, 299) and out.dtype == np.float32
    ch1 = Image.fromarray(img[:, :, 1].astype(np.float32), mode="F").resize(
        (299, 299), Image.BICUBIC
    )
    # clipped to [0, 255] like clean-fid (bicubic overshoots at edges)
    np.testing.assert_array_equal(out[1], np.clip(np.asarray(ch1), 0, 255))
    const = np.full((20, 30, 3), 77, np.uint8)
    np.testing.assert_allclose(resize_for_inception(const), 77.0, atol=1e-3)
    same = rng.integers(0, 256, (299, 299, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_for_inception(same), same.transpose(2, 0, 1))


def test_translation_io_round_trip_is_exact():
    img = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(unit_to_uint8(uint8_to_unit(img)), img)


def test_evaluate_translation_random_features_are_labelled_everywhere(no_cached_weights):
    tgt = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    cfg = EvalConfig(
        allow_random_features=True,
        metrics=["fid", "kid", "is", "prd", "ssim", "ms_ssim"],
        kid_subsets=3,
        prd_num_runs=1,
        prd_num_angles=51,
        is_splits=2,
        batch_size=4,
        device="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # identity translation of the targets themselves: FID 0, SSIM 1
        res = evaluate_translation_detailed(lambda x: x, tgt, tgt, cfg)
    assert any("2048" in str(w.message) for w in caught)
    keys = set(res.metrics)
    assert {"fid", "kid", "is", "prd_f8", "prd_f1_8", "fid_legacy", "kid_legacy"}.isdisjoint(keys)
    # IS on random features, KID's std over subsets that are the whole set and PRD on 3
    # images mean nothing: omitted with the reason, never reported
    assert keys == {"fid_legacy_random_inception", "kid_legacy_random_inception", "ssim"}
    for what in ("IS omitted", "KID std omitted", "PRD omitted"):
        assert any(w.startswith(what) for w in res.warnings), what
    assert res.extractor_label == "random_inception" and res.prd is None
    assert res.metrics["fid_legacy_random_inception"] == pytest.approx(0.0, abs=1e-6)
    assert res.metrics["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert "ms_ssim" not in keys and any("ms_ssim skipped" in w for w in res.warnings)
    # the public contract returns the same numbers as a plain dict
    again = evaluate_translation(
        lambda x: x, tgt, tgt, cfg.model_copy(update={"metrics": ["ssim"]})
    )
    assert again == {"ssim": res.metrics["ssim"]}
