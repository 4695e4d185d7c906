"""`mdir bench gpu`: where a GPU's throughput comes from, per method (issue 18).

At batch 1 (the papers' setting) a GPU is launch-bound: bf16 and channels-last alone gave
0.81–1.15× of fp32 on an H100 (`docs/bench/step_*_h100.json`). This bench measures, for
each method at 256 px, training steps/s and images/s at per-GPU batch 1, 4 and 16 for:

* ``fp32``        — eager, NCHW, float32: the baseline;
* ``bf16_cl``     — ``torch.autocast(bfloat16)`` + channels-last networks and inputs;
* ``bf16_cl_compile`` — the same with every network ``torch.compile``-d (``--compile``);
* ``bf16_cl_graphs`` — the same compiled with ``mode="reduce-overhead"``, i.e. replayed
  as CUDA graphs (``--graphs``; CUDA only): at batch 1 the step is launch-bound, and a graph
  replay launches the whole forward/backward at once. ``cudagraph_mark_step_begin`` marks
  each training step, so a step's outputs may be overwritten by the next one's replay.

A setting that fails (out of memory, a compile error) is reported as ``failed`` with the
reason and the others go on.

and reports each setting's images/s over fp32 batch 1 (goal: ≥ 2× at the best setting),
with peak memory (CUDA: ``max_memory_allocated`` per setting).

**Quality guard**: a faster setting only counts if training tracks fp32. For each method,
``--guard-steps`` (200) steps at batch 1 from the same seed and the same per-step data run
in fp32 and in bf16 + channels-last; for every loss the mean over the second half of the
steps must agree within ``--guard-tol`` (10 %) relative to fp32's (random data: this checks
numerics, not image quality). The Ray Train overhead on one GPU is `mdir bench train`.

Runs on CPU too (``--device cpu``, e.g. ``--lite --size 32``) so the command is tested on
machines without a GPU; the figures that matter come from ``--device cuda``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json
from mdir.bench.step import build_bench_method, method_bench_config, random_batch

SETTINGS = ("fp32", "bf16_cl", "bf16_cl_compile", "bf16_cl_graphs")


def _variant(setting: str) -> str:
    """The `mdir bench step` variant that builds this setting's networks."""
    return {
        "fp32": "eager",
        "bf16_cl": "channels_last",
        "bf16_cl_compile": "compile_cl",
        "bf16_cl_graphs": "graphs_cl",
    }[setting]


def _mark_step(setting: str) -> None:
    """Before each step of a CUDA-graph setting: a new iteration of the graph trees."""
    if setting == "bf16_cl_graphs":
        import torch

        torch.compiler.cudagraph_mark_step_begin()


def _amp(setting: str, device: str):
    if setting == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_setting(
    method: str, cfg: Any, setting: str, size: int, batch: int, steps: int, warmup: int, device: str
) -> dict[str, Any]:
    """steps/s, images/s and peak memory of one (method, setting, batch)."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    m = build_bench_method(method, cfg, _variant(setting), device)
    b = random_batch(method, size, batch, setting != "fp32", device)
    for _ in range(warmup):
        _mark_step(setting)
        with _amp(setting, device):
            m.train_step(b)
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _mark_step(setting)
        with _amp(setting, device):
            m.train_step(b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {
        "steps_per_s": round(1.0 / med, 4),
        "images_per_s": round(batch / med, 4),
        "step_s_median": round(med, 5),
    }
    if device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def loss_track(
    method: str, cfg: Any, setting: str, size: int, steps: int, device: str
) -> dict[str, list[float]]:
    """Per-step losses of `steps` batch-1 steps; step k's data is seeded by k, so two
    settings see the same images."""
    import torch

    from mdir.methods.specs import get_spec

    m = build_bench_method(method, cfg, _variant(setting), device)
    keys = get_spec(method).batch_keys
    track: dict[str, list[float]] = {}
    for k in range(steps):
        g = torch.Generator().manual_seed(k)
        b = {}
        for key in keys:
            x = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device)
            b[key] = x.contiguous(memory_format=torch.channels_last) if setting != "fp32" else x
        with _amp(setting, device):
            losses = m.train_step(b)
        for name, v in losses.items():
            track.setdefault(name, []).append(float(v))
    return track


def guard(fp32: dict[str, list[float]], other: dict[str, list[float]], tol: float) -> dict:
    """Second-half mean of every loss, relative difference to fp32's, and whether all are
    within `tol` (a loss near 0 is compared with an absolute floor of 1e-3)."""
    per: dict[str, dict[str, float]] = {}
    for name, a in fp32.items():
        b = other.get(name, [])
        h = len(a) // 2
        ma, mb = statistics.fmean(a[h:]), statistics.fmean(b[h:]) if b[h:] else float("nan")
        rel = abs(mb - ma) / max(abs(ma), 1e-3)
        per[name] = {"fp32": round(ma, 5), "other": round(mb, 5), "rel_diff": round(rel, 4)}
    ok = all(v["rel_diff"] <= tol for v in per.values())
    return {"tolerance": tol, "losses": per, "tracks": ok}


@app.command("gpu")
def gpu_cmd(
    methods: str = typer.Option("pix2pix,cyclegan,mduit,cut", help="Comma-separated methods."),
    batches: str = typer.Option("1,4,16", help="Per-GPU batch sizes, comma-separated."),
    size: int = typer.Option(256, help="Image side (the papers train at 256)."),
    steps: int = typer.Option(10, help="Timed steps per setting."),
    warmup: int = typer.Option(3, help="Untimed steps first (compilation happens here)."),
    compile_: bool = typer.Option(
        False, "--compile", help="Also time bf16 + channels-last + torch.compile."
    ),
    graphs: bool = typer.Option(
        False, "--graphs", help="Also time bf16 + channels-last + CUDA graphs (CUDA only)."
    ),
    guard_steps: int = typer.Option(200, help="Steps of the fp32 vs bf16 loss-tracking guard."),
    guard_tol: float = typer.Option(0.1, help="Allowed relative difference of the losses."),
    device: str = typer.Option("cuda", help="cuda (the point) or cpu (smoke test)."),
    lite: bool = typer.Option(False, help="Narrow networks (smoke test), not the paper widths."),
    out: Path | None = typer.Option(
        None, "--out", help="JSON result (e.g. docs/bench/gpu_h100.json)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Per method at 256 px: steps/s and images/s at batch 1/4/16 for fp32 eager vs bf16 +
    channels-last (+ torch.compile), peak memory, speed-up over fp32 batch 1, and the check
    that bf16 training losses track fp32 over the first --guard-steps steps."""
    import torch

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda: no CUDA device visible to torch")
    if graphs and device != "cuda":
        raise typer.BadParameter("--graphs: CUDA graphs need --device cuda")
    wanted = {"bf16_cl_compile": compile_, "bf16_cl_graphs": graphs}
    settings = [s for s in SETTINGS if wanted.get(s, True)]
    sizes = [int(b) for b in batches.split(",") if b.strip()]
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": size,
        "lite": lite,
        "baseline": "fp32 eager, batch 1",
        "methods": {},
    }
    t_start = time.perf_counter()
    for method in [m for m in methods.split(",") if m]:
        cfg = method_bench_config(method, lite)
        rows: dict[str, dict[str, Any]] = {}
        for s in settings:
            for b in sizes:
                try:
                    rows[f"{s}/b{b}"] = time_setting(method, cfg, s, size, b, steps, warmup, device)
                except torch.OutOfMemoryError:
                    rows[f"{s}/b{b}"] = {"failed": "out of memory"}
                    torch.cuda.empty_cache()
                except Exception as e:  # e.g. a compile error: the other settings still count
                    rows[f"{s}/b{b}"] = {"failed": f"{type(e).__name__}: {e}"[:500]}
                print(f"{method} {s} batch {b}: {rows[f'{s}/b{b}']}", file=sys.stderr, flush=True)
        base = rows.get("fp32/b1", {}).get("images_per_s")
        speedup = {
            k: round(r["images_per_s"] / base, 3)
            for k, r in rows.items()
            if base and "images_per_s" in r
        }
        best = max(speedup, key=speedup.get) if speedup else None
        g = guard(
            loss_track(method, cfg, "fp32", size, guard_steps, device),
            loss_track(method, cfg, "bf16_cl", size, guard_steps, device),
            guard_tol,
        )
        result["methods"][method] = {
            "settings": rows,
            "speedup_vs_fp32_b1": speedup,
            "best": best,
            "best_speedup": speedup.get(best) if best else None,
            "goal_2x_met": bool(best and speedup[best] >= 2.0 and g["tracks"]),
            "guard": g,
        }
        print(
            f"{method}: best {best} ×{speedup.get(best)} images/s vs fp32 batch 1; "
            f"bf16 losses track fp32 within {guard_tol:.0%}: {g['tracks']}",
            file=sys.stderr,
            flush=True,
        )
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(result, out, as_json)
