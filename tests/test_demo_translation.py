"""The demo's generator learns (issue 20): the `make demo` configuration, trained briefly in
one process on the same kind of synthetic data, moves held-out translations towards night."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdir.metrics.appearance import colour_histogram_distance, mean_luminance

pytestmark = pytest.mark.slow


def _u8(t: torch.Tensor) -> np.ndarray:
    return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_demo_config_moves_translations_towards_night(tmp_path):
    from mdir.data.store import ShardImageStore
    from mdir.data.synth import synthesize
    from mdir.methods import get_method_factory
    from mdir.training.config import load_job_config
    from mdir.training.data_plan import MemoryDataPlan

    data = str(tmp_path / "synth")
    synthesize(data, places=16, conditions=["day", "night"], size=64, poses_per_place=5)
    cfg = load_job_config(
        "jobs/configs/cyclegan_demo.yaml",
        [f"data.uri={data}", "mlflow.enabled=false", f"storage.path={tmp_path}/runs"],
    )
    torch.manual_seed(0)
    torch.set_num_threads(2)
    method = get_method_factory(cfg.method.name)(cfg.method, torch.device("cpu"))
    method.configure_optimizers()
    day = ShardImageStore(data, "test", 64, conditions=["day"])
    night = ShardImageStore(data, "test", 64, conditions=["night"])
    src = day.load(day.ids().tolist())
    real = _u8(night.load(night.ids().tolist()))

    def gaps() -> tuple[float, float]:
        fake = _u8(method.translate(src))
        return abs(mean_luminance(fake) - mean_luminance(real)), colour_histogram_distance(
            fake, real
        )

    lum0, tv0 = gaps()
    plan = MemoryDataPlan(cfg.data, batch_size=4, seed=0)
    for batch in plan.local_batches(100, torch.device("cpu")):
        method.train_step(batch)
    lum1, tv1 = gaps()
    print(
        f"luminance gap to night {lum0:.3f} -> {lum1:.3f}; colour-histogram TV {tv0:.3f} -> {tv1:.3f}"
    )
    assert lum1 < 0.5 * lum0
    assert tv1 < 0.7 * tv0
