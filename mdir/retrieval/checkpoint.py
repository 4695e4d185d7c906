"""Retrieval training checkpoints, written and read by the training package's checkpointing
(`mdir.training.checkpoint`): the same layout (``networks.safetensors``, ``state.pt`` loaded
with ``weights_only=True``, per-rank RNG, ``meta.json``) and the same integrity manifest, so a
truncated or half-uploaded checkpoint is refused with the file named instead of loaded.

What is saved of the `EmbeddingModel`: its trunk (``features``) and GeM pooling (``pool``,
the learnable p) — never the learned whitening Lw, which is post-processing after the last
epoch: a resumed run re-learns it from the trained trunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdir.training.checkpoint import (
    CheckpointCorruptError,
    load_training_state,
    save_rng,
    save_training_state,
    verify_checkpoint,
    write_manifest,
)


def _networks(model: nn.Module) -> dict[str, nn.Module]:
    """The parts of an `EmbeddingModel` a training checkpoint holds (not ``net.whiten``)."""
    return {"features": model.net.features, "pool": model.net.pool}


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    state: dict[str, Any],
    rank: int = 0,
) -> None:
    """Write a complete checkpoint after ``epoch`` (rank 0 only: the model is replicated, and
    the manifest counts one rank). ``state`` holds JSON-like values (history, counters)."""
    save_training_state(
        directory,
        networks=_networks(model),
        generator=None,
        optimizers={"adam": optimizer},
        schedulers={"lr": scheduler},
        method_state={},
        step=epoch,
        epoch=epoch,
        step_in_epoch=0,
        extra=state,
    )
    save_rng(directory, rank)
    write_manifest(directory, rank, world_size=1)


def load_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore model, optimizer, LR schedule and (rank 0's) RNG from an intact checkpoint;
    returns ``{"epoch": last finished epoch, **state}``. Raises `CheckpointCorruptError`
    naming what is wrong when the manifest does not match the files."""
    problems = verify_checkpoint(directory)
    if problems:
        raise CheckpointCorruptError(
            f"retrieval checkpoint {directory} is not intact: " + "; ".join(problems)
        )
    st = load_training_state(
        directory,
        networks=_networks(model),
        optimizers={"adam": optimizer},
        schedulers={"lr": scheduler},
        rank=rank,
    )
    return {"epoch": int(st["epoch"]), **st.get("extra", {})}
