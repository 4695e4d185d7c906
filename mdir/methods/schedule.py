"""LR schedules as pure functions of the epoch (nothing in a config changes in training)."""

from __future__ import annotations


def linear_decay(epoch: int, num_epochs: int, decay_start_frac: float) -> float:
    """Multiplier of the base LR: 1 for the first ``round(frac · num_epochs)`` epochs, then
    linear towards 0 (junyanz's ``linear`` policy with zero-based epochs):
    1 − (epoch + 1 − n_const) / (n_decay + 1). MDUIT (50 epochs, frac 0.7): epochs 0–34 at
    1, then 15/16, …, 1/16."""
    if num_epochs <= 0:
        return 1.0
    n_const = round(decay_start_frac * num_epochs)
    n_decay = num_epochs - n_const
    return 1.0 - max(0, epoch + 1 - n_const) / float(n_decay + 1)
