"""The method contract that keeps the training loop method-agnostic.

A method owns its networks, optimizers and per-step logic; it knows nothing about Ray or
MLflow, so it trains in a plain single-process loop as well as under Ray Train. The loop
(``mdir/training``) wraps each entry of `networks` in DDP from outside, calls
`configure_optimizers` once, `on_epoch_start` at each epoch and `train_step` per batch,
and checkpoints `state_dict()`.

Batches are dicts of tensors produced by ``mdir.data`` (images in [-1, 1], NCHW float):

* unpaired (CycleGAN):  ``{"A": [B,3,H,W], "B": [B,3,H,W]}`` — two independent streams,
  domain A conditions and domain B conditions;
* paired (pix2pix):     ``{"A": [B,3,H,W], "B": [B,3,H,W]}`` — row-aligned (image, image_b);
* MDUIT:                ``{"A": [B,3,H,W], "A_id": [B] int64, ...}`` — the source stream;
  targets, positives and negatives are fetched by id from `EpochContext.store`, according
  to the pairing that `on_epoch_start` computed (and that `state_dict` checkpoints).

Each stream may also carry ``<key>_id`` (int64 row id), ``<key>_condition`` (int64 index
into the dataset's condition list) and ``<key>_place`` (int64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn


@runtime_checkable
class ImageStore(Protocol):
    """Random access to a dataset's images by integer row id (MDUIT pairing, retrieval
    mining). Implemented in ``mdir.data``; a method only reads it."""

    conditions: list[str]  # condition names; `condition` codes index into this

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """All row ids, int64, shape [N]."""
        ...

    def meta(self) -> dict[str, np.ndarray]:
        """Per-row arrays aligned with `ids()`: ``condition`` int64 [N], ``place`` int64 [N],
        ``pose`` float64 [N, 7] (x, y, z, qw, qx, qy, qz; NaN where unknown), ``split``."""
        ...

    def load(self, ids: Sequence[int]) -> Tensor:
        """Decoded, preprocessed images [len(ids), 3, H, W] in [-1, 1] (deterministic
        preprocessing, no random augmentation)."""
        ...


@dataclass
class EpochContext:
    """What the loop hands to `Method.on_epoch_start`."""

    epoch: int
    num_epochs: int
    device: torch.device
    rank: int = 0
    world_size: int = 1
    store: ImageStore | None = None
    # Averages a tensor across ranks (identity in a single process); methods use it to keep
    # per-epoch decisions (e.g. MDUIT pairing) identical on every rank.
    all_reduce_mean: Callable[[Tensor], Tensor] = field(default=lambda t: t)
    extra: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """What every training method implements (see the module docstring)."""

    name: str
    #: role → module, e.g. {"G": ..., "D": ...}; the loop wraps each one in DDP separately.
    networks: dict[str, nn.Module]
    #: names in `networks` that the loop must NOT wrap/train (e.g. a frozen VGG inside E_a is
    #: part of E_a, so this is usually empty).
    frozen: tuple[str, ...]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Called once after the networks were moved/wrapped; returns named optimizers."""
        ...

    def lr_lambda(self, epoch: int, num_epochs: int) -> float:
        """Multiplier of the base LR at `epoch` (a pure function of the epoch: nothing in
        the config mutates during training)."""
        ...

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimisation step of every network; returns named scalar losses."""
        ...

    @torch.no_grad()
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        """Inference: source images [B,3,H,W] in [-1,1] → translated images, same shape.
        MDUIT needs `reference` (target-appearance images); others ignore it."""
        ...

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
        """Per-epoch hook (MDUIT re-pairs sources and targets here)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond networks/optimizers (image pools, pairing, RNG-free data),
        made of tensors / numbers / strings / lists / dicts only (weights_only-loadable)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def generator(self) -> nn.Module:
        """The network(s) needed by `translate`, as one module (what gets registered)."""
        ...
