"""CycleGAN's spec (see `mdir.methods.spec`); the method is `mdir.methods.cyclegan`."""

from __future__ import annotations

from typing import Any

from mdir.methods.config import CycleGANConfig
from mdir.methods.spec import MethodSpec


def _method_class() -> type:
    from mdir.methods.cyclegan import CycleGAN

    return CycleGAN


def _generator(cfg: CycleGANConfig) -> Any:
    from mdir.methods.cyclegan import build_cyclegan_generator

    return build_cyclegan_generator(cfg)


def _summary(size: int) -> dict[str, tuple[Any, tuple[Any, ...], Any]]:
    import torch

    from mdir.methods.cyclegan import build_cyclegan_discriminator, build_cyclegan_generator

    cfg = CycleGANConfig()
    img = torch.empty(1, 3, size, size)
    nets: dict[str, tuple[Any, tuple[Any, ...], Any]] = {}
    for k in ("G_A", "G_B"):
        nets[k] = (build_cyclegan_generator(cfg), (img,), None)
    for k in ("D_A", "D_B"):
        nets[k] = (build_cyclegan_discriminator(cfg), (img,), None)
    return nets


def _check_size(m: CycleGANConfig, size: int) -> str | None:
    if size % 4 == 0:
        return None
    return (
        f"data.image_size: {size} px is not divisible by 4 (CycleGAN's ResNet generator "
        "down-samples twice)"
    )


def _size_multiple(m: CycleGANConfig) -> int:
    """Two stride-2 convolutions, undone by two transposed ones (output_padding=1)."""
    return 4


SPEC = MethodSpec(
    name="cyclegan",
    config=CycleGANConfig,
    method_class=_method_class,
    build_generator=_generator,
    summary=_summary,
    check_size=_check_size,
    size_multiple=_size_multiple,
    bench_lite={"ngf": 8, "ndf": 8, "n_blocks": 2},
    bench_tiny=("method.ngf=16", "method.ndf=16", "method.n_blocks=2"),
)
