"""Any-size translation (issue 16, item 1): `mdir.methods.anysize` and
`Translator.translate_image`, with tiny real generators of every method (no services).

Tiling is measured against the untiled translation of the same image:

* "away from tile borders" = pixels at least `margin` px from every inner tile edge (a line
  where a tile starts or ends inside the image);
* a seam is measured per column (row) boundary as the mean over rows (columns) and channels
  of |y[x+1] − y[x]|; "no seam" = the largest value on the tile edges is no larger than the
  largest elsewhere. A control shows that the measure finds the seams of naive tiling (hard
  cuts, no overlap) with an operator that normalises per call, like instance norm does.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mdir.methods import build_generator
from mdir.methods.anysize import (
    DEFAULT_MAX_PIXELS,
    ramp_window,
    reflect_pad_to_multiple,
    tile_starts,
    translate_any_size,
)
from mdir.methods.specs import get_spec
from mdir.registry.generators import Translator

# pix2pix in eval mode (dropout off, running statistics): these tests compare translations
# of the same pixels, which the reference's train-mode test time makes random by design.
TINY = {
    "pix2pix": {"ngf": 4, "ndf": 4, "num_downs": 5, "test_mode": "eval"},
    "cyclegan": {"ngf": 4, "ndf": 4, "n_blocks": 1},
    "cut": {"ngf": 4, "ndf": 4, "n_blocks": 1},
    "mduit": {
        "ngf": 4, "ndf": 4, "n_res_enc": 1, "n_res_dec": 1, "ea_hidden": 8,
        "proj_hidden": 8, "proj_dim": 8, "allow_random_vgg": True,
    },
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _translator(method: str, **overrides) -> Translator:
    cfg = get_spec(method).config(**{**TINY[method], **overrides})
    torch.manual_seed(0)
    return Translator(build_generator(cfg).eval(), cfg, "test", None, None)


def _smooth_image(h: int, w: int, seed: int = 0, ramp: bool = True) -> torch.Tensor:
    """[3,H,W] in [-1, 1]: bicubic-upsampled coarse noise, plus a left-to-right ramp (tiles
    then have different statistics, which is what makes naive tiling show seams)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 32 + 2, w // 32 + 2, generator=g) * 2 - 1
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    return (0.5 * x + (torch.linspace(-0.5, 0.5, w) if ramp else 0)).clamp(-1, 1)[0]


def _edge_distance(h: int, w: int, tile: int, overlap: int) -> torch.Tensor:
    """[H, W]: distance of each pixel to the nearest inner tile edge (large if none)."""

    def one(length: int) -> torch.Tensor:
        s = tile_starts(length, tile, overlap)
        edges = s[1:] + [a + tile for a in s[:-1]]
        pos = torch.arange(length)
        if not edges:
            return torch.full((length,), 10**6)
        return torch.stack([(pos - e).abs() for e in edges]).min(0).values

    return torch.minimum(one(h)[:, None], one(w)[None, :])


def _line_gradient(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean |difference| across each boundary between neighbouring lines along `dim`."""
    n = y.shape[dim]
    d = (y.narrow(dim, 1, n - 1) - y.narrow(dim, 0, n - 1)).abs()
    return d.mean(dim=[a for a in range(y.dim()) if a != dim % y.dim()])


def _seam_gap(y: torch.Tensor, dim: int, borders: list[int]) -> tuple[float, float]:
    """(largest line gradient on `borders`, largest elsewhere)."""
    g = _line_gradient(y, dim)
    on = torch.zeros_like(g, dtype=torch.bool)
    on[borders] = True
    return float(g[on].max()), float(g[~on].max())


def _tile_borders(length: int, tile: int, overlap: int) -> list[int]:
    s = tile_starts(length, tile, overlap)
    return sorted(set(s[1:]) | {a + tile - 1 for a in s[:-1]})


# ---------------------------------------------------------------- strides from the spec


@pytest.mark.parametrize("method", sorted(TINY))
def test_size_multiple_is_what_the_network_needs(method):
    """The spec's multiple works at odd multiples and fails half a multiple (or 1 px) off:
    it is both sufficient and necessary."""
    tr = _translator(method)
    m = tr.size_multiple
    ref = torch.zeros(1, 3, 48, 48)

    def runs(h: int, w: int) -> bool:
        try:
            y = tr.translate(torch.zeros(1, 3, h, w), ref if tr.needs_reference else None)
        except (RuntimeError, ValueError):  # torch's shape error, or the net's own check
            return False
        return tuple(y.shape[-2:]) == (h, w)

    assert runs(3 * m, 5 * m)
    assert not runs(3 * m, 5 * m + 1)
    assert not runs(3 * m + m // 2, 5 * m)


def test_spec_multiples_follow_the_config():
    assert _translator("pix2pix", num_downs=6).size_multiple == 64
    assert _translator("mduit", n_downsample=3).size_multiple == 8
    assert _translator("cyclegan").size_multiple == _translator("cut").size_multiple == 4


# ---------------------------------------------------------------- any size, every method


@pytest.mark.parametrize("method", sorted(TINY))
def test_333x517_comes_back_333x517(method):
    tr = _translator(method)
    x = torch.rand(3, 333, 517) * 2 - 1
    ref = torch.rand(3, 120, 90) * 2 - 1 if tr.needs_reference else None
    y = tr.translate_image(x, ref)
    assert y.shape == (3, 333, 517) and torch.isfinite(y).all() and y.abs().max() <= 1
    y4 = tr.translate_image(x[None], ref)  # [1,3,H,W] keeps its batch axis
    assert y4.shape == (1, 3, 333, 517) and torch.allclose(y4[0], y, atol=1e-6)
    # an input of an allowed size goes through untouched: exactly the generator's output
    m = tr.size_multiple
    z = torch.rand(1, 3, 2 * m, 3 * m) * 2 - 1
    r4 = None if ref is None else ref[None]
    assert torch.allclose(tr.translate_image(z, ref), tr.translate(z, r4), atol=1e-6)


def test_mduit_without_reference_is_a_clear_error():
    with pytest.raises(ValueError, match="reference"):
        _translator("mduit").translate_image(torch.zeros(3, 40, 40))


def test_padding_is_reflected_and_cropped_back_exactly():
    x = torch.rand(1, 3, 37, 70) * 2 - 1
    seen = []

    def negate(t):
        seen.append(tuple(t.shape))
        return -t

    y = translate_any_size(negate, x, multiple=32)
    assert seen == [(1, 3, 64, 96)] and torch.equal(y, -x)
    p, (top, left) = reflect_pad_to_multiple(x, 32)
    assert torch.equal(p[..., top : top + 37, left : left + 70], x)
    assert torch.equal(p[..., top - 1, left : left + 70], x[..., 1, :])  # mirrored row
    # a tiny input padded past its own size (rounds of reflection), and a 1-pixel row
    assert translate_any_size(negate, x[..., :5, :7], multiple=64).shape == (1, 3, 5, 7)
    assert translate_any_size(negate, x[..., :1, :9], multiple=8).shape == (1, 3, 1, 9)


def test_bad_arguments_name_the_argument():
    x = torch.zeros(3, 8, 8)
    for kw, name in (
        ({"multiple": 0}, "multiple"),
        ({"multiple": 4, "tile": 64, "overlap": 64}, "overlap"),
        ({"multiple": 4, "tile": 0}, "tile"),
    ):
        with pytest.raises(ValueError, match=name):
            translate_any_size(lambda t: t, x, **kw)
    with pytest.raises(ValueError, match="image"):
        translate_any_size(lambda t: t, torch.zeros(4, 8, 8), multiple=4)
    with pytest.raises(ValueError, match="multiple=3"):  # a generator that changes the size
        translate_any_size(lambda t: t[..., :-1, :], x, multiple=3)


# ---------------------------------------------------------------- tiles


def test_tiles_cover_the_image_with_the_overlap():
    for length in (256, 257, 700, 1000, 1337):
        s = tile_starts(length, 256, 64)
        assert s[0] == 0 and s[-1] + 256 == max(length, 256)
        assert all(b - a <= 256 - 64 for a, b in zip(s, s[1:], strict=False))
    w = ramp_window(100, 30, 30)
    assert w[30:70].eq(1).all() and (w > 0).all() and w[0] < 0.01
    # two neighbours' ramps over the same pixels cross-fade to exactly 1
    rise, fall = ramp_window(40, 40, 0), ramp_window(40, 0, 40)
    assert torch.allclose(rise + fall, torch.ones(40, dtype=torch.float64))


def test_tiled_pointwise_and_local_operators_equal_untiled():
    """The blend is a partition of unity: a pointwise map is reproduced exactly; a local
    3×3 blur (zero padding, receptive field 1 px) exactly away from the tile edges, and to
    the size of the edge weights (< 1e-3) on them."""
    x = _smooth_image(300, 420)

    def point(t):
        return torch.tanh(1.5 * t)

    k = torch.ones(3, 1, 3, 3) / 9

    def blur(t):
        return F.conv2d(t, k, padding=1, groups=3)

    kw = {"multiple": 4, "max_pixels": 1, "tile": 128, "overlap": 32}
    assert torch.allclose(translate_any_size(point, x, **kw), point(x), atol=1e-6)
    far = _edge_distance(300, 420, 128, 32) >= 2
    tiled, full = translate_any_size(blur, x, **kw), blur(x[None])[0]
    assert (tiled - full).abs()[:, far].max() < 1e-6
    assert (tiled - full).abs().max() < 1e-3


def test_tiled_generator_close_to_untiled_away_from_borders():
    """Real tiny generators on a 600×760 image, tiled (64 px overlap) vs untiled, on pixels
    ≥ 32 px from every inner tile edge. pix2pix's U-Net (batch norm: fixed statistics in
    eval) differs only through its receptive field: mean < 1e-3, max < 0.05 in 256 px tiles.
    CycleGAN's ResNet (instance norm) normalises per tile unless the tiles share pooled
    statistics (`translate_image`'s default, `mdir.methods.tile_norm`). Measured mean |Δ|
    per-tile → shared, 256 px tiles: 0.063 → 0.011 on stationary content, 0.168 → 0.057 on
    the drifting ramp image (512 px tiles: 0.027 → 0.013, 0.108 → 0.044)."""
    measured = {}
    tr = _translator("pix2pix", ngf=8)
    x = _smooth_image(600, 760, ramp=False)
    far = _edge_distance(600, 760, 256, 64) >= 32
    d = tr.translate_image(x, max_pixels=None) - tr.translate_image(x, max_pixels=1, tile=256)
    assert d.abs()[:, far].mean() < 1e-3 and d.abs()[:, far].max() < 0.05
    tr = _translator("cyclegan", ngf=8, n_blocks=2)
    for ramp in (False, True):
        x = _smooth_image(600, 760, ramp=ramp)
        full = tr.translate_image(x, max_pixels=None)
        for shared in (False, True):
            tiled = tr.translate_image(x, max_pixels=1, tile=256, shared_norms=shared)
            measured[ramp, shared] = float((full - tiled).abs()[:, far].mean())
    assert measured[False, True] < 0.02 and measured[True, True] < 0.08, measured  # range 2
    for ramp in (False, True):  # pooling the statistics at least halves the difference
        assert measured[ramp, True] < 0.5 * measured[ramp, False], measured


@pytest.mark.parametrize(
    "norm", [torch.nn.InstanceNorm2d(6), torch.nn.InstanceNorm2d(6, affine=True),
             torch.nn.GroupNorm(1, 6), torch.nn.GroupNorm(3, 6)],
)  # fmt: skip
def test_pooled_normalisation_is_the_layer_with_given_statistics(norm):
    """With the input's own statistics, `_normalise` is exactly what the layer computes."""
    from mdir.methods.tile_norm import _groups, _normalise, per_call_norms

    if getattr(norm, "weight", None) is not None:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 9, 11) * 3 + 1
    g = _groups(norm, x)
    own = _normalise(norm, x, g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True))
    assert torch.allclose(own, norm(x), atol=1e-5)
    assert per_call_norms(torch.nn.Sequential(norm)) == [norm]
    # batch norm (fixed statistics in eval) is left alone
    assert per_call_norms(torch.nn.Sequential(torch.nn.BatchNorm2d(6))) == []


def _instance_norm_blur(t: torch.Tensor) -> torch.Tensor:
    """Statistics per call (as instance norm computes them per tile), then a local blur."""
    z = (t - t.mean(dim=(2, 3), keepdim=True)) / (t.std(dim=(2, 3), keepdim=True) + 1e-5)
    k = torch.ones(3, 1, 5, 5) / 25
    return torch.tanh(0.5 * F.conv2d(F.pad(z, (2, 2, 2, 2), mode="reflect"), k, groups=3))


def test_no_seam_across_tile_borders():
    h, w, tile, overlap = 600, 760, 256, 64
    x = _smooth_image(h, w)
    # control: naive tiling (hard 200×190 cuts) of a per-call-normalising operator shows
    # seams by this measure — the measure can fail
    naive = torch.zeros_like(x)
    for t in range(0, h, 200):
        for left in range(0, w, 190):
            patch = x[None, :, t : t + 200, left : left + 190]
            naive[:, t : t + 200, left : left + 190] = _instance_norm_blur(patch)[0]
    on, off = _seam_gap(naive, -1, [189, 379, 569])
    assert on > 2 * off, (on, off)
    # blended tiles of the same operator, and of a real instance-norm generator (tiles with
    # their own statistics, and sharing pooled ones): no seam
    tr = _translator("cyclegan", ngf=8, n_blocks=2)
    kw = {"max_pixels": 1, "tile": tile, "overlap": overlap}
    for name, y in (
        ("instance-norm blur", translate_any_size(_instance_norm_blur, x, multiple=4, **kw)),
        ("cyclegan", tr.translate_image(x, shared_norms=False, **kw)),
        ("cyclegan shared norms", tr.translate_image(x, **kw)),
    ):
        for dim, length in ((-1, w), (-2, h)):
            on, off = _seam_gap(y, dim, _tile_borders(length, tile, overlap))
            assert on <= off, (name, dim, on, off)


def test_default_max_pixels_matches_the_cli():
    from mdir.registry import cli

    assert cli.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


# ---------------------------------------------------------------- decoding photos


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_exif_rotated_photo_is_decoded_as_displayed():
    from mdir.data.images import decode_photo

    stored = np.zeros((40, 60, 3), np.uint8)  # stored landscape, 40 high × 60 wide
    stored[:10, :20] = (255, 0, 0)  # red block at the stored top-left
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif.tobytes())
    arr, _ = decode_photo(buf.getvalue())
    assert arr.shape == (60, 40, 3)  # displayed portrait
    # clockwise: the stored top-left corner ends at the displayed top-right
    assert (arr[:20, -10:] == (255, 0, 0)).all() and (arr[-20:, :10] == 0).all()


def test_16bit_gray_rgba_palette_decoded_as_ingest_does():
    from mdir.data.images import decode_photo

    g16 = (np.arange(48 * 32, dtype=np.uint16).reshape(48, 32) * 40).astype(np.uint16)
    arr, why = decode_photo(_png(g16))  # PIL mode I;16
    assert why == "16bit" and arr.shape == (48, 32, 3)
    expect = (g16.astype(np.int64) * 255 // 65535).astype(np.uint8)
    assert (arr[..., 0] == expect).all() and (arr[..., 1] == arr[..., 2]).all()

    gray = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    arr, why = decode_photo(_png(gray))
    assert why == "grayscale" and (arr == gray[..., None]).all()

    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent → the white background
    rgba[:, :16, 3] = 255  # left half opaque red-ish
    arr, why = decode_photo(_png(rgba, "RGBA"))
    assert why == "alpha"
    assert (arr[:, :16] == (200, 0, 0)).all() and (arr[:, 16:] == 255).all()

    pal = Image.fromarray(gray).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    arr, why = decode_photo(buf.getvalue())
    assert why == "palette" and arr.shape == (24, 32, 3)


def test_bad_photo_is_a_named_bad_input():
    from mdir.data.images import BadInput, decode_photo

    for data, reason in ((b"", "empty"), (b"not an image at all", "not_image")):
        with pytest.raises(BadInput) as e:
            decode_photo(data)
        assert e.value.reason == reason
