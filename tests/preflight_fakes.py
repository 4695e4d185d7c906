"""Picklable test doubles for tests/test_preflight.py (sent to Ray workers by value)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor
from training_fakes import RandomPlan


class SlowPlan(RandomPlan):
    """`RandomPlan` whose batches take `delay_s` each: leaves the MLflow run time to be
    created before the first checkpoint, as a real step would."""

    def __init__(self, steps_per_epoch: int = 4, delay_s: float = 1.0) -> None:
        super().__init__(steps_per_epoch=steps_per_epoch)
        self.delay_s = delay_s

    def batches(self, steps: int, device: torch.device) -> Iterator[dict[str, Tensor]]:
        for b in super().batches(steps, device):
            time.sleep(self.delay_s)
            yield b
