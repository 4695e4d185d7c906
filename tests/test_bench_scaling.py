"""The scaling model (docs/scaling.md) against hand arithmetic, and its command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mdir.bench.scaling import (
    INFINIBAND,
    NVLINK,
    Interconnect,
    allreduce_seconds,
    interconnect_for,
    scaling_rows,
)


def test_ring_allreduce_time_by_hand():
    net = Interconnect("x", busbw=100e9, latency=1e-5)
    # 8 ranks, 200 MB of gradients: 2·7/8·2e8/1e11 = 3.5 ms, + 8 buckets of 25 MiB × 10 µs
    assert allreduce_seconds(200e6, 8, networks=2, net=net) == pytest.approx(3.5e-3 + 8e-5)
    assert allreduce_seconds(200e6, 1, networks=2, net=net) == 0.0
    # tiny networks: one all-reduce per DDP network at least
    assert allreduce_seconds(1e3, 2, networks=4, net=net) == pytest.approx(1e3 / 1e11 + 4e-5)
    assert interconnect_for(8) is NVLINK and interconnect_for(9) is INFINIBAND


def test_rows_efficiency_and_throughput():
    rows = scaling_rows("m", {"G": 10_000_000, "D": 2_500_000}, step_s=0.02, batch=1, gpus=[1, 64])
    one, many = rows
    assert one.efficiency_no_overlap == 1.0 and one.images_per_s == pytest.approx(50.0)
    t_ar = allreduce_seconds(4 * 12.5e6, 64, 2, INFINIBAND)
    assert many.allreduce_ms == pytest.approx(round(t_ar * 1e3, 2))
    assert many.efficiency_no_overlap == pytest.approx(round(0.02 / (0.02 + t_ar), 3))
    assert many.efficiency_full_overlap == 1.0  # t_ar < step: hidden behind the backward
    assert many.images_per_s == pytest.approx(round(64 / (0.02 + t_ar), 1))
    assert many.grad_mb == 50.0


def test_command_reads_the_measured_step_times(tmp_path):
    from mdir.bench.cli import app

    out = tmp_path / "s.json"
    r = CliRunner().invoke(app, ["scaling", "--gpus", "1,8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} == {"pix2pix", "cyclegan", "mduit"}
    p8 = next(r for r in rows if r["method"] == "pix2pix" and r["n_gpus"] == 8)
    assert p8["grad_mb"] == pytest.approx(4 * (54413955 + 2768705) / 1e6, abs=0.05)
    res = CliRunner().invoke(app, ["scaling", "--gpus", "8"])
    assert res.exit_code == 0 and "| pix2pix | 8 | 228.7 |" in res.output
