"""CUT / FastCUT's spec (see `mdir.methods.spec`); config in `mdir.methods.cut_config`,
method in `mdir.methods.cut`."""

from __future__ import annotations

from typing import Any

from mdir.methods.cut_config import CUTConfig
from mdir.methods.spec import MethodSpec


def _method_class() -> type:
    from mdir.methods.cut import CUT

    return CUT


def _generator(cfg: CUTConfig) -> Any:
    from mdir.methods.cut import build_cut_generator

    return build_cut_generator(cfg)


def _summary(size: int) -> dict[str, tuple[Any, tuple[Any, ...], Any]]:
    import torch

    from mdir.methods.cut import build_cut_discriminator, build_cut_generator, build_cut_head

    cfg = CUTConfig()
    g = build_cut_generator(cfg)
    img = torch.empty(1, 3, size, size)

    class _Head(torch.nn.Module):
        """F on the NCE features of one image (num_patches positions per layer) →
        [layers, patches, netf_nc]; G is held outside the parameters (not F's)."""

        def __init__(self) -> None:
            super().__init__()
            self.f = build_cut_head(cfg, g)
            self._g = (g,)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from mdir.models.patchnce import encode_features

            feats = encode_features(self._g[0].model, x, cfg.nce_layers)
            n = min([cfg.num_patches] + [f.shape[2] * f.shape[3] for f in feats])
            ids = [torch.arange(n, device=x.device) for _ in feats]
            return torch.stack(self.f(feats, ids))

    return {
        "G": (g, (img,), None),
        "D": (build_cut_discriminator(cfg), (img,), None),
        "F": (_Head(), (img,), None),
    }


def _check_size(m: CUTConfig, size: int) -> str | None:
    if size % 4 == 0:
        return None
    return f"data.image_size: {size} px is not divisible by 4 (CUT's ResNet generator down-samples twice)"


def _size_multiple(m: CUTConfig) -> int:
    """The same ResNet generator as CycleGAN: two stride-2 down-samplings."""
    return 4


SPEC = MethodSpec(
    name="cut",
    config=CUTConfig,
    method_class=_method_class,
    build_generator=_generator,
    summary=_summary,
    check_size=_check_size,
    size_multiple=_size_multiple,
    bench_lite={"ngf": 8, "ndf": 8, "n_blocks": 2, "nce_layers": (0, 4, 8, 12), "netf_nc": 32},
    bench_tiny=(
        "method.ngf=16",
        "method.ndf=16",
        "method.n_blocks=2",
        "method.nce_layers=[0,4,8,12]",
        "method.num_patches=64",
        "method.netf_nc=32",
    ),  # fmt: skip
)
