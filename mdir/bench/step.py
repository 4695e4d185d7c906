"""`mdir bench step METHOD`: one training step at 256×256, batch 1, on this CPU (or a GPU).

Variants of the *same* method and networks, measured side by side in one process:

* ``eager``          — the baseline: plain eager PyTorch, NCHW tensors (this is also what the
                       original junyanz implementation runs: same layers, same step order);
* ``channels_last``  — networks and inputs in NHWC memory format (oneDNN's native layout);
* ``compile``        — every network compiled with ``torch.compile`` (inductor), in place
                       (``nn.Module.compile``), so the method code is unchanged;
* ``compile_cl``     — both;
* ``bf16``           — the step under ``torch.autocast(bfloat16)``, what training runs on a
                       GPU (``train.amp: auto``); on CPU it is rarely faster.

``--device cuda`` runs every variant on the GPU (the step's ``float(loss)`` calls already
synchronise; the timer also calls ``torch.cuda.synchronize``).

Each variant is built from the same seed, warmed up (the first compiled steps include the
compilation, reported as ``compile_s`` and time-boxed by ``--compile-timeout``: a variant whose
compilation runs over is reported as ``timed_out`` and skipped), then the variants are timed
in interleaved rounds (noise on a shared machine hits all of them alike). Reported per
variant: median seconds per step and steps/s; ``ratios`` = steps/s ÷ eager steps/s.
Memory: ``rss_before_mb`` (the process before any network is built) and ``peak_rss_mb``
(its high-water mark at the end: with ``--variants eager`` the difference is what one
method's networks, optimisers and step take); on CUDA also ``peak_cuda_mb`` per variant
(`torch.cuda.max_memory_allocated`, reset before each variant is built). The batch's
images are the method spec's ``batch_keys``;
MDUIT batches carry explicit T, T_pos, S_neg, T_neg images (no store I/O is timed).

On a shared, oversubscribed machine pass ``--threads 1``: OpenMP worker threads that
spin-wait for a busy core made a small step ~50× slower with 2 threads than with 1 here.
"""

from __future__ import annotations

import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json

VARIANTS = ("eager", "channels_last", "compile", "compile_cl", "bf16")


class _Timeout(Exception):
    pass


_fired = {"alarm": False}


def _alarm(_sig: int, _frame: Any) -> None:
    _fired["alarm"] = True
    raise _Timeout()


def method_bench_config(method: str, lite: bool) -> Any:
    """Default (paper) widths; ``lite`` = narrow networks for a quick smoke run (both from the
    method's spec)."""
    from mdir.methods.specs import get_spec, method_specs

    if method not in method_specs():
        raise typer.BadParameter(f"unknown method {method!r}; valid: {', '.join(method_specs())}")
    spec = get_spec(method)
    return spec.default_config(**spec.bench_config, **(spec.bench_lite if lite else {}))


def random_batch(
    method: str, size: int, batch: int, channels_last: bool, device: str = "cpu"
) -> dict[str, Any]:
    import torch

    from mdir.methods.specs import get_spec

    g = torch.Generator().manual_seed(0)
    out = {}
    for k in get_spec(method).batch_keys:
        x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
        out[k] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return out


def _peak_rss_mb() -> float:
    """This process's resident-set high-water mark (Linux ru_maxrss is in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def build_bench_method(method: str, cfg: Any, variant: str, device: str = "cpu") -> Any:
    import torch

    from mdir.methods import METHODS

    torch.manual_seed(0)
    m = METHODS[method](cfg, torch.device(device))
    if variant in ("channels_last", "compile_cl", "graphs_cl"):
        for net in m.networks.values():
            net.to(memory_format=torch.channels_last)
    if variant in ("compile", "compile_cl"):
        for net in m.networks.values():
            net.compile()
    if variant == "graphs_cl":  # CUDA graphs: inductor's cudagraph trees (static shapes)
        for net in m.networks.values():
            net.compile(mode="reduce-overhead")
    m.configure_optimizers()
    return m


@app.command("step")
def step(
    method: str = typer.Argument(..., help="A method of the table: pix2pix, cyclegan, mduit, …"),
    size: int = typer.Option(256, help="Image side (the papers train at 256)."),
    batch: int = typer.Option(1, help="Batch size (MDUIT paper: 1)."),
    steps: int = typer.Option(3, help="Timed steps per variant per round."),
    rounds: int = typer.Option(3, help="Interleaved timing rounds."),
    warmup: int = typer.Option(
        2, help="Untimed steps per variant first (compiled variants compile here)."
    ),
    variants: str = typer.Option(
        "eager,channels_last,compile",
        help=f"Comma-separated variants among {', '.join(VARIANTS)}; eager is always included.",
    ),
    compile_timeout: int = typer.Option(
        300, help="Seconds allowed for a compiled variant's warm-up (compilation)."
    ),
    threads: int = typer.Option(0, help="torch intra-op threads (0 = PyTorch's default)."),
    device: str = typer.Option("cpu", help="cpu or cuda (the bf16 variant is the GPU setting)."),
    lite: bool = typer.Option(False, help="Narrow networks (smoke test), not the paper widths."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON result here."),
) -> None:
    """Training steps/s of METHOD (256×256, batch 1, CPU or --device cuda): eager baseline
    vs channels-last, torch.compile and bf16-autocast variants, side by side, with the ratio
    to eager."""
    import contextlib

    import torch

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda: no CUDA device visible to torch")

    def amp(v: str) -> Any:
        if v != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def run_step(v: str, m: Any, b: dict[str, Any]) -> None:
        with amp(v):
            m.train_step(b)
        if device == "cuda":
            torch.cuda.synchronize()

    if threads > 0:
        torch.set_num_threads(threads)
    chosen = ["eager"] + [v for v in variants.split(",") if v and v != "eager"]
    bad = [v for v in chosen if v not in VARIANTS]
    if bad:
        raise typer.BadParameter(f"unknown variants {bad}; valid: {', '.join(VARIANTS)}")
    cfg = method_bench_config(method, lite)
    rss_before = _peak_rss_mb()
    res: dict[str, dict[str, Any]] = {}
    live: dict[str, tuple[Any, dict[str, Any]]] = {}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for v in chosen:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        m = build_bench_method(method, cfg, v, device)
        b = random_batch(method, size, batch, v in ("channels_last", "compile_cl"), device)
        setup = time.perf_counter() - t0
        compiled = v.startswith("compile")
        old = signal.signal(signal.SIGALRM, _alarm) if compiled else None
        if compiled:
            _fired["alarm"] = False
            signal.alarm(compile_timeout)
        t0 = time.perf_counter()
        try:
            for _ in range(warmup):
                run_step(v, m, b)
        except Exception as e:  # the alarm arrives wrapped (e.g. InductorError) from inside compile
            if not compiled:
                raise
            signal.alarm(0)
            torch._dynamo.reset()
            if _fired["alarm"]:
                res[v] = {"timed_out": True, "compile_timeout_s": compile_timeout}
                log(f"[{v}] compilation exceeded {compile_timeout}s: skipped")
            else:
                res[v] = {"failed": f"{type(e).__name__}: {str(e)[:200]}"}
                log(f"[{v}] compilation failed: {type(e).__name__}: skipped")
            continue
        finally:
            if compiled:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
        warm = time.perf_counter() - t0
        res[v] = {"setup_s": round(setup, 3), "warmup_s": round(warm, 3)}
        if device == "cuda":
            res[v]["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if compiled:
            res[v]["compile_s"] = round(warm, 3)  # includes `warmup` steps
        live[v] = (m, b)
        log(f"[{v}] ready (setup {setup:.1f}s, warm-up {warm:.1f}s)")

    times: dict[str, list[float]] = {v: [] for v in live}
    for r in range(rounds):
        for v, (m, b) in live.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                run_step(v, m, b)
                times[v].append(time.perf_counter() - t0)
        log(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{v} {statistics.median(t):.3f}s" for v, t in times.items())
        )

    for v, t in times.items():
        med = statistics.median(t)
        res[v].update(
            step_s_median=round(med, 4),
            step_s_min=round(min(t), 4),
            steps_per_s=round(1 / med, 4),
            n=len(t),
        )
    base = res["eager"]["steps_per_s"]
    ratios = {v: round(r["steps_per_s"] / base, 3) for v, r in res.items() if "steps_per_s" in r}
    best = max(ratios, key=ratios.get)
    result = {
        "benchmark": "step",
        "method": method,
        "size": size,
        "batch": batch,
        "lite": lite,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "baseline": "eager",
        "variants": res,
        "ratios": ratios,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "best": best,
    }
    for v, r in res.items():
        if "steps_per_s" in r:
            mem = f"  peak CUDA {r['peak_cuda_mb']:.0f} MiB" if "peak_cuda_mb" in r else ""
            log(
                f"{method} {v:<14} {r['steps_per_s']:.3f} steps/s  ({r['step_s_median']:.3f} s/step)  ×{ratios[v]:.2f} vs eager{mem}"
            )
    log(f"peak RSS {result['peak_rss_mb']:.0f} MiB (before building: {rss_before:.0f} MiB)")
    write_json(result, out, as_json)
