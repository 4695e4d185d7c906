"""Networks: output shapes, exact default parameter counts, grouped appearance conv, GeM,
retrieval net and weight loading (no downloads)."""

from __future__ import annotations

import pytest
import torch

from mdir.methods.config import CycleGANConfig, MDUITConfig, Pix2PixConfig
from mdir.models.init import count_params
from mdir.models.mduit import (
    AppearanceEncoder,
    ContentEncoder,
    Decoder,
    ProjectionHead,
    appearance_conv,
)
from mdir.models.patchgan import PatchDiscriminator
from mdir.models.pooling import GeM, gem, l2n
from mdir.models.resnet_gen import ResnetGenerator
from mdir.models.retrieval import RetrievalNet
from mdir.models.unet import UnetGenerator
from mdir.models.weights import VGG16Trunk, load_vgg16

# Expected parameter counts of the original junyanz pytorch-CycleGAN-and-pix2pix default
# networks (ngf = ndf = 64), derived layer by layer from its networks.py (k = 4 convs in
# the U-Net / PatchGAN, conv bias only where the norm is not BatchNorm; InstanceNorm has
# no affine parameters) and matching the sizes it prints ("54.414 M", "2.769 M",
# "11.378 M", "2.765 M"):
# * unet_256 G (BatchNorm): outermost conv 3·64·16 + convT 128·3·16 + 3 = 9,219;
#   64↔128 level 131,072 + 256 + 262,144 + 128 = 393,600; 128↔256 level 1,573,632;
#   256↔512 level 6,292,992; three 512↔512 levels 3 × 12,584,960; innermost
#   4,194,304 + 4,194,304 + 1,024 = 8,389,632 → 54,413,955.
# * PatchGAN D on 6 channels (BatchNorm): 6·64·16+64 + 64·128·16+256 + 128·256·16+512
#   + 256·512·16+1024 + 512·16+1 = 2,768,705.
# * resnet_9blocks G (InstanceNorm, biases): 9,472 + 73,856 + 295,168 + 9 × 1,180,160
#   + 295,040 + 73,792 + 9,411 = 11,378,179.
# * PatchGAN D on 3 channels (InstanceNorm, biases): 3,136 + 131,200 + 524,544
#   + 2,097,664 + 8,193 = 2,764,737.
PIX2PIX_G, PIX2PIX_D = 54_413_955, 2_768_705
CYCLEGAN_G, CYCLEGAN_D = 11_378_179, 2_764_737


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_parameter_counts_equal_original():
    from mdir.methods.cyclegan import build_cyclegan_discriminator, build_cyclegan_generator
    from mdir.methods.pix2pix import build_pix2pix_discriminator, build_pix2pix_generator

    with torch.device("meta"):  # exact counts without allocating 70 M parameters
        assert count_params(build_pix2pix_generator(Pix2PixConfig())) == PIX2PIX_G
        assert count_params(build_pix2pix_discriminator(Pix2PixConfig())) == PIX2PIX_D
        assert count_params(build_cyclegan_generator(CycleGANConfig())) == CYCLEGAN_G
        assert count_params(build_cyclegan_discriminator(CycleGANConfig())) == CYCLEGAN_D
        # dropout adds no parameters
        assert count_params(build_cyclegan_generator(CycleGANConfig(dropout=True))) == CYCLEGAN_G


def test_mduit_default_filter_shapes():
    from mdir.methods.mduit import build_mduit_networks

    with torch.device("meta"):
        nets, label = build_mduit_networks(MDUITConfig(), load_pretrained=False)
        assert label == "random"
        f = nets["E_c"](torch.empty(1, 3, 256, 256))
        w = nets["E_a"](torch.empty(1, 3, 256, 256))
    assert tuple(f.shape) == (1, 256, 64, 64)  # f_s: c = 256 at h/4 × w/4
    assert tuple(w.shape) == (1, 256, 5, 5)  # W_t: 1×256×5×5 per image after 256 groups
    assert count_params(nets["E_a"].vgg) == 1_735_488  # VGG-16 conv1_1 … conv3_3
    assert count_params(nets["E_a"], trainable_only=True) == count_params(nets["E_a"].head)


@pytest.mark.parametrize("size", [32, 64])
def test_unet_and_patchgan_shapes(size):
    g = UnetGenerator(3, 3, num_downs=5, ngf=4, dropout=True)
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    d = PatchDiscriminator(6, ndf=4, n_layers=3)
    # k4 s2 p1 three times (…/8) then two k4 s1 p1 (−1 each)
    assert d(torch.cat([x, y], 1)).shape == (2, 1, size // 8 - 2, size // 8 - 2)
    with pytest.raises(ValueError, match="divisible by 32"):
        g(torch.rand(1, 3, 48, 40))


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_resnet_generator_shapes(size):
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=2, dropout=True)
    x = torch.rand(1, 3, *size)
    assert g(x).shape == x.shape


@pytest.mark.parametrize("size", [32, 48])
def test_mduit_network_shapes(size):
    e_c = ContentEncoder(ngf=4, n_downsample=2, n_res=1)
    e_a = AppearanceEncoder(VGG16Trunk().features, e_c.out_channels, hidden=8, kernel_size=5)
    g = Decoder(e_c.out_channels, 2, 1)
    h = ProjectionHead(e_c.out_channels, 8, 6)
    x = torch.rand(2, 3, size, size) * 2 - 1
    f = e_c(x)
    w = e_a(x)
    assert f.shape == (2, 16, size // 4, size // 4) and w.shape == (2, 16, 5, 5)
    y = g(appearance_conv(f, w))
    assert y.shape == x.shape
    z = h(f)
    assert z.shape == (2, 6)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_appearance_conv_equals_per_sample_loop():
    torch.manual_seed(0)
    f = torch.randn(3, 4, 9, 7)
    w = torch.randn(3, 4, 5, 5)
    out = appearance_conv(f, w)
    for b in range(3):  # each sample with its own depthwise filter bank
        ref = torch.nn.functional.conv2d(f[b : b + 1], w[b].unsqueeze(1), padding=2, groups=4)
        assert torch.allclose(out[b : b + 1], ref, atol=1e-5)
    # channel c of sample b only sees channel c of that sample
    ref = torch.nn.functional.conv2d(f[1:2, 2:3], w[1:2, 2:3], padding=2)
    assert torch.allclose(out[1:2, 2:3], ref, atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        appearance_conv(f, w[:2])


def test_gem_values():
    x = torch.tensor([1.0, 8.0]).view(1, 1, 1, 2)
    assert gem(x, 3.0).item() == pytest.approx(((1 + 512) / 2) ** (1 / 3), rel=1e-5)
    assert gem(x, 1.0).item() == pytest.approx(4.5, rel=1e-5)  # p = 1: average pooling
    m = GeM()
    assert m.p.requires_grad and m.p.item() == 3.0
    assert m(torch.full((2, 5, 3, 3), 2.0)).shape == (2, 5)
    assert torch.allclose(l2n(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]), atol=1e-5)


def test_retrieval_net_tiny_and_vgg():
    net = RetrievalNet("tiny", tiny_width=8, whitening=True, whitening_dim=4)
    d = net(torch.rand(3, 3, 32, 32))
    assert d.shape == (3, 4)
    assert torch.allclose(d.norm(dim=1), torch.ones(3), atol=1e-5)
    assert net.meta["outputdim"] == 4 and net.weights_label == "random"
    d.sum().backward()
    assert net.pool.p.grad is not None  # p is learned
    vgg = RetrievalNet("vgg16", allow_random=True)
    assert vgg(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    assert vgg.weights_label == "random"


def test_load_vgg16_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub_home"))
    monkeypatch.delenv("MDIR_VGG16_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_vgg16(None, allow_random=False)
    model, label = load_vgg16(None, allow_random=True)
    assert label == "random"
    # a local file with the full torchvision key layout (classifier keys are ignored)
    src = VGG16Trunk()
    sd = {**src.state_dict(), "classifier.0.weight": torch.zeros(2, 2)}
    path = tmp_path / "vgg.pth"
    torch.save(sd, path)
    model, label = load_vgg16(str(path))
    assert label == f"file:{path}"
    assert torch.equal(model.features[0].weight, src.features[0].weight)
    # the same file through the environment (what cluster workers get), config source unset
    monkeypatch.setenv("MDIR_VGG16_WEIGHTS", str(path))
    model, label = load_vgg16(None)
    assert label == f"file:{path}" and torch.equal(model.features[2].weight, src.features[2].weight)
    monkeypatch.delenv("MDIR_VGG16_WEIGHTS")
    # the torch hub cache file is picked up when present
    cache = tmp_path / "hub_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(src.state_dict(), cache / "vgg16-397923af.pth")
    model, label = load_vgg16(None)
    assert label == "torchvision:IMAGENET1K_V1"
    assert torch.equal(model.features[28].weight, src.features[28].weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_vgg16(str(tmp_path / "missing.pth"))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a vgg16"):
        load_vgg16(str(tmp_path / "bad.pth"))


def test_models_summary_json_format():
    from typer.testing import CliRunner

    from mdir.cli import app

    res = CliRunner().invoke(app, ["models", "summary", "mduit", "--json"])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.output)
    assert out["method"] == "mduit"
    assert set(out["networks"]) == {"E_c", "E_a", "G", "D_i", "D_a", "H"}
    assert out["networks"]["E_a"]["frozen_params"] == 1_735_488
    assert out["networks"]["G"]["output_shape"] == [1, 3, 256, 256]
    res = CliRunner().invoke(app, ["models", "summary", "pix2pix", "--json"])
    nets = json.loads(res.output)["networks"]
    assert nets["G"]["params"] == PIX2PIX_G and nets["D"]["params"] == PIX2PIX_D
    res = CliRunner().invoke(app, ["models", "summary", "nope"])
    assert res.exit_code != 0
