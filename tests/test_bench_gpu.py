"""`mdir bench gpu` on CPU (issue 18): the command runs end to end without a GPU, its
images/s and speed-ups follow from its own timings, and the loss-tracking guard compares
real fp32 and bf16 training losses (the GPU figures come from ``--device cuda``)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from mdir.bench.gpu import guard


def test_guard_by_hand():
    fp32 = {"G": [9.0, 9.0, 2.0, 4.0], "D": [0.0, 0.0, 0.0, 0.0]}
    ok = guard(fp32, {"G": [1.0, 1.0, 3.3, 3.3], "D": [0.0, 0.0, 5e-4, 5e-4]}, 0.1)
    assert ok["losses"]["G"] == {"fp32": 3.0, "other": 3.3, "rel_diff": 0.1}
    assert ok["losses"]["D"]["rel_diff"] == 0.5  # |5e-4 − 0| / 1e-3 floor
    assert ok["tracks"] is False  # D exceeds 10 %
    assert guard(fp32, fp32, 0.0)["tracks"] is True


@pytest.mark.timeout(600)
def test_cpu_smoke_run_is_consistent(tmp_path):
    from mdir.bench.cli import app

    out = tmp_path / "gpu.json"
    r = CliRunner().invoke(
        app,
        [
            "gpu", "--device", "cpu", "--lite", "--size", "32", "--methods", "cyclegan",
            "--batches", "1,2", "--steps", "2", "--warmup", "1", "--guard-steps", "4",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    m = doc["methods"]["cyclegan"]
    assert set(m["settings"]) == {"fp32/b1", "fp32/b2", "bf16_cl/b1", "bf16_cl/b2"}
    base = m["settings"]["fp32/b1"]["images_per_s"]
    for key, row in m["settings"].items():
        b = int(key.split("/b")[1])
        assert row["images_per_s"] == pytest.approx(b * row["steps_per_s"], rel=1e-3)
        assert m["speedup_vs_fp32_b1"][key] == pytest.approx(row["images_per_s"] / base, abs=2e-3)
    assert m["best"] == max(m["speedup_vs_fp32_b1"], key=m["speedup_vs_fp32_b1"].get)
    g = m["guard"]
    assert set(g["losses"]) == {"D_A", "D_B", "G", "G_A", "G_B", "cycle_A", "cycle_B"}
    assert all(math.isfinite(v["fp32"]) and math.isfinite(v["other"]) for v in g["losses"].values())
    assert g["tracks"] == all(v["rel_diff"] <= g["tolerance"] for v in g["losses"].values())
    assert m["goal_2x_met"] == bool(m["best_speedup"] >= 2.0 and g["tracks"])


def test_cuda_graphs_setting_needs_cuda():
    from mdir.bench.cli import app

    r = CliRunner().invoke(app, ["gpu", "--device", "cpu", "--graphs", "--methods", "cyclegan"])
    assert r.exit_code == 2 and "CUDA graphs need --device cuda" in r.output
