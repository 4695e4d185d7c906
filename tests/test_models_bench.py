"""Smoke test of `mdir bench step` (narrow networks, 32 px): it runs and reports ratios."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.mark.parametrize("method", ["cyclegan", "mduit"])
def test_bench_step_smoke(tmp_path, method):
    from mdir.cli import app

    out = tmp_path / "step.json"
    args = ["bench", "step", method, "--lite", "--size", "32", "--steps", "1", "--rounds", "1", "--warmup", "1",
            "--variants", "eager,channels_last", "--threads", "1", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["method"] == method
    assert set(data["variants"]) == {"eager", "channels_last"}
    v = data["variants"]
    assert v["channels_last"]["steps_per_s"] > 0 and v["eager"]["steps_per_s"] > 0
    # each ratio is that variant's steps/s over eager's, measured in the same run
    ratio = v["channels_last"]["steps_per_s"] / v["eager"]["steps_per_s"]
    assert data["ratios"]["channels_last"] == pytest.approx(ratio, rel=1e-2, abs=1e-3)
