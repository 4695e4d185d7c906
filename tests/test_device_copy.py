"""The GPU data path on CPU (issue 18): the pinned-copy branch is taken only for CUDA, so
the same config (``data.pin_memory: true``) runs unchanged on CPU workers."""

from __future__ import annotations

import torch

from mdir.data.pipeline import device_copy


def test_cpu_copy_ignores_pin_memory_and_keeps_values():
    v = torch.arange(24, dtype=torch.uint8).view(1, 2, 3, 4)
    out = device_copy(v, torch.device("cpu"), pin_memory=True)
    assert out.device.type == "cpu" and out.dtype == torch.uint8 and torch.equal(out, v)
    assert not out.is_pinned()  # pinning needs an accelerator; never attempted on CPU
