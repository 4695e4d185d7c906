"""Descriptor extraction: images → L2-normalised global descriptors, single- or multi-scale,
on one process or sharded over the DDP ranks of a Ray Train run.

Multi-scale (Radenović et al., cirtorch ``extract_ms``): the image is resized by each scale
s ∈ {1, 1/√2, 1/2} (bilinear, ``scale_factor=s``), and the per-scale descriptors f_s are
combined by their generalised mean with the network's GeM exponent p:
f = L2N((1/|S| Σ_s f_s^p)^(1/p)). The f_s are taken *before* the learned whitening Lw, which
is applied afterwards, as cirtorch learns and applies Lw on top of the multi-scale vectors
(its power is 1 only when whitening is inside the network, which is not the case here; for a
network without `pooled`/`gem_p` — a test stand-in — p = 1). Distributed extraction gives
every rank a contiguous block of rows and all-gathers the result, so the output (and thus
mining) is the same on every rank and identical to a single-process run.

Images may come as a list of different shapes (aspect-kept retrieval images); the network
runs once per group of equal shapes (`mdir.retrieval.data.per_shape`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mdir.retrieval.data import Images, per_shape, to_device

MULTISCALE = (1.0, 1.0 / math.sqrt(2.0), 0.5)

LoadFn = Callable[[Sequence[int]], Images]


def rescale(x: Tensor, s: float) -> Tensor:
    """[B,3,H,W] resized by factor `s` as cirtorch does (bilinear, no antialias; size ⌊H·s⌋)."""
    if s == 1.0:
        return x
    return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)


def multiscale_power(net: nn.Module) -> float:
    """The p of the multi-scale generalised mean: the net's GeM p (cirtorch msp), else 1."""
    p = getattr(net, "gem_p", None)
    return float(p) if p is not None and hasattr(net, "pooled") else 1.0


def gem_average(descriptors: Sequence[Tensor], p: float) -> Tensor:
    """L2N((1/S Σ_s f_s^p)^(1/p)) of per-scale descriptors f_s [B, D] (non-negative for GeM)."""
    acc = sum(d.pow(p) for d in descriptors) / len(descriptors)
    return F.normalize(acc.pow(1.0 / p), dim=-1)


@torch.no_grad()
def embed(net: nn.Module, images: Images, scales: Sequence[float] = (1.0,)) -> Tensor:
    """Images ([B,3,H,W] or a list of [3,H,W]) → [B,D] L2-normalised descriptors; several
    `scales` = GeM-p average of the per-scale descriptors, then Lw (module docstring)."""
    if list(scales) == [1.0]:
        return per_shape(net, images)
    if hasattr(net, "pooled") and hasattr(net, "whitened"):
        p = multiscale_power(net)
        parts = [per_shape(lambda b, s=s: net.pooled(rescale(b, s)), images) for s in scales]
        return net.whitened(gem_average(parts, p))
    parts = [per_shape(lambda b, s=s: net(rescale(b, s)), images) for s in scales]
    return gem_average(parts, 1.0)


@torch.no_grad()
def extract(
    net: nn.Module,
    load: LoadFn,
    ids: Sequence[int],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    scales: Sequence[float] = (1.0,),
    distributed: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Descriptors of rows `ids` (loaded with `load(ids) -> [n,3,H,W]`) as float32 [len(ids), D].

    `progress(done, total)` is called after every batch with this rank's counts.

    When torch.distributed is initialised (or `distributed=True`) the rows are split into
    equal contiguous blocks over the ranks and all-gathered; every rank returns the full
    array. `net` is switched to eval mode for extraction and restored afterwards.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    per_rank = math.ceil(len(ids) / world) if len(ids) else 0
    mine = ids[rank * per_rank : (rank + 1) * per_rank]
    was_training = net.training
    net.eval()
    out: list[Tensor] = []
    try:
        for i in range(0, len(mine), batch_size):
            x = to_device(load(mine[i : i + batch_size].tolist()), device)
            out.append(embed(net, x, scales).float())
            if progress is not None:
                progress(min(i + batch_size, len(mine)), len(mine))
    finally:
        net.train(was_training)
    dim = _descriptor_dim(net, out, load, ids, device)
    local = torch.cat(out) if out else torch.zeros(0, dim, device=device)
    if not distributed:
        return local.cpu().numpy()
    # pad every block to per_rank rows so that all_gather gets equal shapes
    pad = torch.zeros(per_rank - local.shape[0], dim, device=local.device, dtype=local.dtype)
    block = torch.cat([local, pad])
    gathered = [torch.empty_like(block) for _ in range(world)]
    dist.all_gather(gathered, block)
    full = torch.cat(gathered)[: len(ids)]
    return full.cpu().numpy()


def _descriptor_dim(
    net: nn.Module, out: list[Tensor], load: LoadFn, ids: np.ndarray, device
) -> int:
    if out:
        return out[0].shape[1]
    dim = getattr(net, "dim", None) or getattr(getattr(net, "module", None), "dim", None)
    if dim is not None:
        return int(dim)
    # a rank without rows still needs D for the all_gather: embed one image
    with torch.no_grad():
        return int(embed(net, to_device(load(ids[:1].tolist()), device)).shape[1])
