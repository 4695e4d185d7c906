"""The one place dataset translation calls the generator: uint8 HWC images in, uint8 HWC out,
each at its stored size.

Same-size images share one forward pass through `mdir.methods.anysize.translate_any_size`
(reflection-padded to the generator's stride multiple and cropped back, so a U-Net takes
any stored size); an image that still fails raises, and the caller counts the row as bad.
No tiling: stored dataset images are already at training-pipeline sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from mdir.methods.anysize import translate_any_size


class Translates(Protocol):
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor: ...


def to_unit(image: np.ndarray) -> Tensor:
    """uint8 [H, W, 3] → float [1, 3, H, W] in [-1, 1]."""
    return (
        torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1
    )


def to_uint8(t: Tensor) -> np.ndarray:
    """float [1, 3, H, W] in [-1, 1] → uint8 [H, W, 3], rounded once."""
    x = t.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x[0].permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def translate_uint8(
    translator: Translates, images: Sequence[np.ndarray], reference: Tensor | None = None
) -> list[np.ndarray | Exception]:
    """Translate each image at its own size (same-size images share one forward pass);
    an image that fails comes back as its exception, in its place."""
    out: list[np.ndarray | Exception] = [ValueError("not translated")] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape), []).append(i)
    for idx in by_size.values():
        try:
            x = torch.cat([to_unit(images[i]) for i in idx])
            ref = None if reference is None else reference.expand(len(idx), -1, -1, -1)
            multiple = int(getattr(translator, "size_multiple", 1))
            y = translate_any_size(
                lambda t, r=ref: translator.translate(t, r), x, multiple=multiple
            )
            if y.shape != x.shape:
                raise ValueError(f"output {tuple(y.shape[-2:])} ≠ input {tuple(x.shape[-2:])}")
            for j, i in enumerate(idx):
                out[i] = to_uint8(y[j : j + 1])
        except Exception as e:  # one bad size must not lose the others
            for i in idx:
                out[i] = e
    return out
