"""pix2pix's spec (see `mdir.methods.spec`); the method is `mdir.methods.pix2pix`."""

from __future__ import annotations

from typing import Any

from mdir.methods.config import Pix2PixConfig
from mdir.methods.spec import MethodSpec


def _method_class() -> type:
    from mdir.methods.pix2pix import Pix2Pix

    return Pix2Pix


def _generator(cfg: Pix2PixConfig) -> Any:
    from mdir.methods.pix2pix import build_pix2pix_generator

    return build_pix2pix_generator(cfg)


def _summary(size: int) -> dict[str, tuple[Any, tuple[Any, ...], Any]]:
    import torch

    from mdir.methods.pix2pix import build_pix2pix_discriminator, build_pix2pix_generator

    cfg = Pix2PixConfig()
    img, pair = torch.empty(1, 3, size, size), torch.empty(1, 6, size, size)
    return {
        "G": (build_pix2pix_generator(cfg), (img,), None),
        "D": (build_pix2pix_discriminator(cfg), (pair,), None),
    }


def _check_size(m: Pix2PixConfig, size: int) -> str | None:
    need = 2**m.num_downs
    if size % need == 0:
        return None
    fit = (size & -size).bit_length() - 1  # largest k with 2**k dividing size
    hint = (
        f"use method.num_downs={min(fit, 8)} (the U-Net needs ≥ 5)"
        if fit >= 5
        else "use a data.image_size divisible by 32 (the U-Net needs ≥ 5 down-samplings)"
    )
    return (
        f"data.image_size: {size} px is not divisible by 2**method.num_downs = {need} "
        f"(pix2pix U-Net with {m.num_downs} down-samplings); {hint}"
    )


def _inference_train_mode(m: Pix2PixConfig) -> bool:
    return m.test_mode == "train"


def _size_multiple(m: Pix2PixConfig) -> int:
    """The U-Net halves the size num_downs times and concatenates equal-size skips."""
    return 2**m.num_downs


SPEC = MethodSpec(
    name="pix2pix",
    config=Pix2PixConfig,
    method_class=_method_class,
    build_generator=_generator,
    summary=_summary,
    check_size=_check_size,
    inference_train_mode=_inference_train_mode,
    size_multiple=_size_multiple,
    bench_lite={"ngf": 8, "ndf": 8},
    bench_tiny=("method.ngf=16", "method.ndf=16", "method.num_downs=5"),
)
