"""`mdir bench scaling`: the data-parallel scaling model of docs/scaling.md (issue 18).

Not a measurement: arithmetic from two measured inputs, each method's step time on one GPU
(`docs/bench/step_<method>_h100.json`, batch 1, eager) and its gradient bytes (trainable
parameters × 4 B, fp32 gradients also under bf16 autocast), with a stated interconnect.

DDP all-reduces every trainable network's gradients once per step (each network is its own
DDP, in 25 MB buckets). A ring all-reduce of B bytes over N ranks moves 2(N−1)/N·B per rank
(the "bus bandwidth" convention of nccl-tests), so

    T_ar(N) = 2(N−1)/N · B / busbw(N) + buckets · α(N)

and, with the per-GPU batch fixed (weak scaling), the efficiency against one GPU is
T / (T + T_ar) when nothing overlaps, and T / max(T, T_ar) when the all-reduce hides
completely behind the backward pass (DDP overlaps bucket by bucket): the truth lies between.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json

#: DDP's default gradient bucket (torch ``bucket_cap_mb=25``).
BUCKET_BYTES = 25 * 1024**2


@dataclass(frozen=True)
class Interconnect:
    """All-reduce bus bandwidth (bytes/s) and per-collective latency (s) at a scale."""

    name: str
    busbw: float
    latency: float


#: Stated assumptions (H100 SXM nodes of 8 GPUs): NVLink 4 within a node, nccl-tests
#: all-reduce bus bandwidth ~350 GB/s; across nodes 8 × 400 Gb/s InfiniBand per node,
#: taken as ~40 GB/s bus bandwidth per rank for a ring that crosses nodes. Latencies are
#: typical small-message NCCL all-reduce times.
NVLINK = Interconnect("NVLink 4 (1 node, 8 GPUs)", 350e9, 15e-6)
INFINIBAND = Interconnect("8×400 Gb/s InfiniBand per node (ring across nodes)", 40e9, 40e-6)


def interconnect_for(n_gpus: int) -> Interconnect:
    return NVLINK if n_gpus <= 8 else INFINIBAND


def allreduce_seconds(grad_bytes: float, n_gpus: int, networks: int, net: Interconnect) -> float:
    """Ring all-reduce time of one step's gradients over `n_gpus` (0 for one GPU)."""
    if n_gpus <= 1:
        return 0.0
    buckets = max(networks, math.ceil(grad_bytes / BUCKET_BYTES))
    return 2 * (n_gpus - 1) / n_gpus * grad_bytes / net.busbw + buckets * net.latency


@dataclass(frozen=True)
class ScalingRow:
    method: str
    n_gpus: int
    interconnect: str
    grad_mb: float
    step_ms: float
    allreduce_ms: float
    efficiency_no_overlap: float
    efficiency_full_overlap: float
    images_per_s: float  # at the per-GPU batch of the step time, no overlap


def scaling_rows(
    method: str, trainable_params: dict[str, int], step_s: float, batch: int, gpus: list[int]
) -> list[ScalingRow]:
    """The model's rows for one method (see the module docstring)."""
    grad_bytes = 4.0 * sum(trainable_params.values())
    rows = []
    for n in gpus:
        net = interconnect_for(n)
        t_ar = allreduce_seconds(grad_bytes, n, len(trainable_params), net)
        eff0 = step_s / (step_s + t_ar)
        eff1 = step_s / max(step_s, t_ar)
        rows.append(
            ScalingRow(
                method=method,
                n_gpus=n,
                interconnect="none" if n == 1 else net.name,
                grad_mb=round(grad_bytes / 1e6, 1),
                step_ms=round(step_s * 1e3, 2),
                allreduce_ms=round(t_ar * 1e3, 2),
                efficiency_no_overlap=round(eff0, 3),
                efficiency_full_overlap=round(eff1, 3),
                images_per_s=round(n * batch / (step_s + t_ar), 1),
            )
        )
    return rows


def markdown(rows: list[ScalingRow]) -> str:
    head = (
        "| method | GPUs | gradients (MB) | step (ms) | all-reduce (ms) | efficiency, no overlap "
        "| efficiency, full overlap | images/s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    body = [
        f"| {r.method} | {r.n_gpus} | {r.grad_mb:g} | {r.step_ms:g} | {r.allreduce_ms:g} | "
        f"{r.efficiency_no_overlap:.0%} | {r.efficiency_full_overlap:.0%} | {r.images_per_s:g} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def _trainable(method: str) -> dict[str, int]:
    from mdir.methods.summary import summarize

    return {k: int(v["params"]) for k, v in summarize(method)["networks"].items()}


@app.command("scaling")
def scaling_cmd(
    bench_dir: Annotated[
        Path, typer.Option("--bench-dir", help="Where the measured step_<method>_h100.json are.")
    ] = Path("docs/bench"),
    gpus: Annotated[str, typer.Option("--gpus", help="GPU counts, comma-separated.")] = "1,8,64",
    out: Annotated[Path | None, typer.Option("--out", help="JSON output file.")] = None,
) -> None:
    """The data-parallel scaling model (docs/scaling.md): expected efficiency of each
    method on 1, 8 and 64 GPUs from its measured one-GPU step time and gradient bytes."""
    counts = [int(g) for g in gpus.split(",") if g.strip()]
    rows: list[ScalingRow] = []
    for f in sorted(bench_dir.glob("step_*_h100.json")):
        d = json.loads(f.read_text())
        eager = d["variants"]["eager"]
        rows += scaling_rows(
            d["method"], _trainable(d["method"]), eager["step_s_median"], d["batch"], counts
        )
    if not rows:
        raise typer.BadParameter(f"no step_*_h100.json in {bench_dir}", param_hint="--bench-dir")
    typer.echo(markdown(rows))
    result = {
        "benchmark": "scaling",
        "kind": "model (arithmetic from measured inputs), not a measurement",
        "interconnects": [asdict(NVLINK), asdict(INFINIBAND)],
        "bucket_bytes": BUCKET_BYTES,
        "rows": [asdict(r) for r in rows],
    }
    write_json(result, out, echo=False)
