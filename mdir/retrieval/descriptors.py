"""Descriptor extraction: images → L2-normalised global descriptors, single- or multi-scale,
on one process or sharded over the DDP ranks of a Ray Train run.

Multi-scale (Radenović et al.): the image is resized by each scale s ∈ {1, 1/√2, 1/2}, the
descriptors are averaged and re-normalised. Distributed extraction gives every rank a
contiguous block of rows and all-gathers the result, so the output (and thus mining) is the
same on every rank and identical to a single-process run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

MULTISCALE = (1.0, 1.0 / math.sqrt(2.0), 0.5)

LoadFn = Callable[[Sequence[int]], Tensor]


@torch.no_grad()
def embed(net: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,)) -> Tensor:
    """[B,3,H,W] → [B,D] L2-normalised; multi-scale = mean over scales, re-normalised."""
    acc = None
    for s in scales:
        x = images
        if s != 1.0:
            h, w = images.shape[-2:]
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = F.interpolate(
                images, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        v = net(x)
        acc = v if acc is None else acc + v
    return F.normalize(acc, dim=-1)


@torch.no_grad()
def extract(
    net: nn.Module,
    load: LoadFn,
    ids: Sequence[int],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    scales: Sequence[float] = (1.0,),
    distributed: bool | None = None,
) -> np.ndarray:
    """Descriptors of rows `ids` (loaded with `load(ids) -> [n,3,H,W]`) as float32 [len(ids), D].

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
            x = load(mine[i : i + batch_size].tolist()).to(device, non_blocking=True)
            out.append(embed(net, x, scales).float())
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
        return int(embed(net, load(ids[:1].tolist()).to(device)).shape[1])
