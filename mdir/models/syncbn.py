"""BatchNorm whose batch statistics span all DDP ranks (``train.sync_batchnorm``).

Under DDP every rank normalises with the mean/variance of its own per-rank batch, so with
pix2pix's BatchNorm and small per-GPU batches the statistics (and the running averages each
rank ends up with) differ from a single-process run over the global batch. Synchronised
BatchNorm computes them over the global batch instead. PyTorch's ``nn.SyncBatchNorm``
only runs on accelerators; `DistBatchNorm` is the same computation with one autograd-aware
all-reduce of (Σx, Σx², n) per layer, so it also runs on CPU with gloo (tests, CPU
clusters). On CUDA `convert_sync_batchnorm` uses PyTorch's own kernels
(`GradSyncBatchNorm`). Both synchronise only while gradients flow: inference forwards
(sample grids, evaluation) stay on their own rank.

State-dict keys are BatchNorm's, so a trained generator loads into the plain network.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: The BatchNorm classes converted. Subclasses (e.g. MDUIT's first-batch-statistics norms)
#: keep their own behaviour and are left alone.
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DistBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of every rank's batch (biased variance to normalise, the
    unbiased one for the running average, as BatchNorm does). Without gradients (one rank
    translating alone) it is a plain per-rank BatchNorm."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        # Under no_grad (inference on rank 0 alone, e.g. pix2pix translating in train mode)
        # the other ranks are not in this forward: an all-reduce would wait forever.
        if not self.training or _world() == 1 or not torch.is_grad_enabled():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class GradSyncBatchNorm(nn.SyncBatchNorm):
    """PyTorch's ``SyncBatchNorm`` (CUDA kernels) that, like `DistBatchNorm`, keeps to its
    own rank's batch under ``no_grad``. The stock one synchronises whenever it is in train
    mode, so a generator translating in train mode (pix2pix's test mode) on fewer than all
    ranks, or on ranks with different numbers of batches, would wait forever."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return nn.modules.batchnorm._BatchNorm.forward(self, x)
        return super().forward(x)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """`module` with every plain BatchNorm synchronised across ranks: `GradSyncBatchNorm`
    (PyTorch's kernels) on CUDA, `DistBatchNorm` elsewhere. Weights and running statistics
    are carried over; returns the (possibly new) root module."""
    if type(module) in _PLAIN_BN:
        cls = GradSyncBatchNorm if device_type == "cuda" else DistBatchNorm
        new = cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.to(next(iter(module.state_dict().values()), torch.empty(0)).device)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device_type))
    return module
