"""MDUIT's spec (see `mdir.methods.spec`); the method is `mdir.methods.mduit`.

MDUIT translates towards a reference appearance (``needs_reference``), its E_a needs
VGG-16 weights (``needs_vgg``) and its pairing needs poses or places (``needs_poses``).
"""

from __future__ import annotations

from typing import Any

from mdir.methods.config import MDUITConfig
from mdir.methods.spec import MethodSpec


def _method_class() -> type:
    from mdir.methods.mduit import MDUIT

    return MDUIT


def _generator(cfg: MDUITConfig) -> Any:
    from mdir.methods.mduit import build_mduit_translator

    return build_mduit_translator(cfg)


def _summary(size: int) -> dict[str, tuple[Any, tuple[Any, ...], Any]]:
    import torch

    from mdir.methods.mduit import build_mduit_networks

    cfg = MDUITConfig()
    m, _ = build_mduit_networks(cfg, load_pretrained=False)
    img, pair = torch.empty(1, 3, size, size), torch.empty(1, 6, size, size)
    s = size // 2**cfg.n_downsample
    feat = torch.empty(1, m["E_c"].out_channels, s, s)
    return {
        "E_c": (m["E_c"], (img,), None),
        "E_a": (m["E_a"], (img,), m["E_a"].vgg),
        "G": (m["G"], (feat,), None),
        "D_i": (m["D_i"], (img,), None),
        "D_a": (m["D_a"], (pair,), None),
        "H": (m["H"], (feat,), None),
    }


def _check_size(m: MDUITConfig, size: int) -> str | None:
    if size % 2**m.n_downsample == 0:
        return None
    return (
        f"data.image_size: {size} px is not divisible by 2**method.n_downsample = "
        f"{2**m.n_downsample} (MDUIT's content encoder)"
    )


def _size_multiple(m: MDUITConfig) -> int:
    """E_c down-samples n_downsample times, G up-samples as often (E_a pools any size)."""
    return 2**m.n_downsample


SPEC = MethodSpec(
    name="mduit",
    config=MDUITConfig,
    method_class=_method_class,
    build_generator=_generator,
    summary=_summary,
    needs_reference=True,
    needs_vgg=True,
    needs_poses=True,
    check_size=_check_size,
    size_multiple=_size_multiple,
    batch_keys=("A", "T", "T_pos", "S_neg", "T_neg"),
    bench_config={"allow_random_vgg": True},
    bench_lite={
        "ngf": 8,
        "ndf": 8,
        "n_res_enc": 1,
        "n_res_dec": 1,
        "ea_hidden": 16,
        "proj_hidden": 16,
        "proj_dim": 16,
    },  # fmt: skip
    bench_tiny=(
        "method.ngf=8",
        "method.ndf=16",
        "method.n_res_enc=1",
        "method.n_res_dec=1",
        "method.ea_hidden=16",
        "method.proj_hidden=32",
        "method.proj_dim=16",
        "method.n_neg=4",
        "method.allow_random_vgg=true",
    ),  # fmt: skip
)
