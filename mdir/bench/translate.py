"""`mdir bench translate`: dataset translation on Ray Data vs a plain loop, and ONNX Runtime vs
eager PyTorch.

1. Throughput: the same source rows (a synthetic dataset, `--images` of them translated
   towards night) go through `mdir data translate` (`translate_dataset`, `--actors` CPU
   actors) and through a plain single-process loop doing the same work per image (read the
   shards, decode, translate at the stored size, encode PNG, write one shard) with torch's
   default threads (``ratio``) and with one torch thread (``ratio_vs_1_thread``: on a busy
   machine OpenMP threads spin-waiting for a core slow the default loop down). Both measured side by side in one run; the Ray side is timed from the
   call to the manifest (actor start-up and model loads included), Ray's own start-up
   (`ray_init_s`) is not (a cluster has it up). ``ratio`` = Ray images/s ÷ plain images/s.
2. Latency: the registered generator exported to ONNX (`mdir.registry.export`) and run with
   ONNX Runtime (CPU) vs the eager generator, batch 1 at 256 and 512 px: median of
   `--repeats` calls after one warm-up each, ``speedup`` = eager ÷ ONNX Runtime.

The generator is a randomly initialised CycleGAN of `--ngf` / `--n-blocks`, registered in the
MLflow at ``MLFLOW_TRACKING_URI`` or else in a temporary SQLite registry.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _register(tmp: str, ngf: int, n_blocks: int) -> str:
    """Register a random CycleGAN generator; returns models:/NAME@candidate."""
    import mlflow
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from mdir.methods import build_generator
    from mdir.registry.generators import register_generator
    from mdir.training.config import TrainJobConfig

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    cfg = TrainJobConfig.model_validate(
        {
            "method": {"name": "cyclegan", "ngf": ngf, "ndf": 8, "n_blocks": n_blocks},
            "data": {"uri": f"{tmp}/data", "mode": "unpaired"},
        }
    )
    torch.manual_seed(0)
    w = Path(tmp) / "g.safetensors"
    gen = build_generator(cfg.method)
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(w))
    client = MlflowClient()
    exp = client.get_experiment_by_name("mdir-bench") or client.get_experiment(
        client.create_experiment("mdir-bench", artifact_location=f"{tmp}/artifacts")
    )
    run = client.create_run(exp.experiment_id)
    uri = register_generator(
        cfg, str(w), run_id=run.info.run_id, alias="candidate", model_name="mdir-bench-translate"
    )
    client.set_terminated(run.info.run_id)
    return uri


def plain_loop(
    src: str, out: str, model_uri: str, conditions: list[str], to: str, batch_size: int
) -> int:
    """The baseline: one process, the same per-image work as the actors (same batches);
    returns the number of images translated."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mdir.data.images import decode_rgb
    from mdir.data.manifest import read_manifest
    from mdir.data.schema import rows_to_table
    from mdir.data.shards import iter_tables, write_shard
    from mdir.registry.generators import load_translator
    from mdir.translation.any_size import translate_uint8
    from mdir.translation.dataset import encode_png

    tr = load_translator(model_uri)
    todo = []
    cols = ["id", "image", "condition", "place", "split"]
    for t in iter_tables(read_manifest(src), cols):
        todo += t.filter(pc.is_in(t["condition"], value_set=pa.array(conditions))).to_pylist()
    rows = []
    for k in range(0, len(todo), batch_size):
        batch = todo[k : k + batch_size]
        ys = translate_uint8(tr, [decode_rgb(r["image"]) for r in batch])
        for r, y in zip(batch, ys, strict=True):
            if isinstance(y, Exception):
                continue
            rows.append(
                {"id": r["id"], "image": encode_png(y), "width": y.shape[1],
                 "height": y.shape[0], "condition": to, "place": r["place"],
                 "split": r["split"], "source": f"translated:{r['id']}"}
            )  # fmt: skip
    write_shard(out, "part-00000.parquet", rows_to_table(rows))
    return len(rows)


def _median_latency(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def onnx_vs_eager(model_uri: str, tmp: str, sizes: list[int], repeats: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from mdir.registry.export import export_generator
    from mdir.registry.generators import load_translator

    tr = load_translator(model_uri)
    path = Path(tmp) / "bench.onnx"
    export_generator(tr, "onnx", path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    for s in sizes:
        x = torch.rand(1, 3, s, s) * 2 - 1
        xn = x.numpy()
        eager = _median_latency(lambda x=x: tr.translate(x), repeats)
        onnx = _median_latency(lambda xn=xn: session.run(None, {name: xn}), repeats)
        diff = float(np.abs(session.run(None, {name: xn})[0] - tr.translate(x).numpy()).max())
        out[f"{s}px"] = {
            "eager_ms": round(eager * 1000, 2),
            "onnxruntime_ms": round(onnx * 1000, 2),
            "speedup": round(eager / onnx, 3),
            "max_abs_diff": diff,
        }
    return out


@app.command("translate")
def bench_translate(
    images: int = typer.Option(96, help="Source images translated (synthetic, day + dusk)."),
    size: int = typer.Option(128, help="Image side (px) of the synthetic data."),
    actors: int = typer.Option(2, help="CPU actors of `mdir data translate`."),
    batch_size: int = typer.Option(4, help="Rows per actor call."),
    ngf: int = typer.Option(32, help="Generator width (CycleGAN ResNet generator)."),
    n_blocks: int = typer.Option(6, help="Residual blocks of the generator."),
    latency_sizes: str = typer.Option("256,512", help="Sides (px) of the ONNX latency check."),
    repeats: int = typer.Option(5, help="Timed calls per latency measurement."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Path | None = typer.Option(None, help="Write the JSON result here."),
) -> None:
    """Images/s of `mdir data translate` with CPU actors vs a plain single-process loop (same
    images, same work, one run), and ONNX Runtime vs eager per-image latency."""
    import torch

    from mdir.data.raylocal import init_ray
    from mdir.data.synth import synthesize
    from mdir.translation.dataset import translate_dataset

    tmp = tempfile.mkdtemp(prefix="mdir-bench-translate-")
    say = (lambda m: None) if as_json else (lambda m: typer.echo(m, err=True))
    # 2 conditions translated, 3 rendered: images / 2 poses per condition
    places = max(1, -(-images // 8))
    src = f"{tmp}/src"
    synthesize(src, places=places, size=size, seed=0, poses_per_place=4,
               conditions=["day", "dusk", "night"])  # fmt: skip
    say(f"synthetic source: {src}")
    model_uri = _register(tmp, ngf, n_blocks)
    load = {"before": _load_avg()}
    t = time.perf_counter()
    init_ray(num_cpus=actors)
    ray_init_s = time.perf_counter() - t

    say("plain loop …")
    t = time.perf_counter()
    n_plain = plain_loop(src, f"{tmp}/plain", model_uri, ["day", "dusk"], "night", batch_size)
    plain_s = time.perf_counter() - t
    default_threads = torch.get_num_threads()
    say("plain loop, 1 torch thread …")
    torch.set_num_threads(1)  # no OpenMP spin-waiting for a core another process holds
    t = time.perf_counter()
    plain_loop(src, f"{tmp}/plain1", model_uri, ["day", "dusk"], "night", batch_size)
    plain1_s = time.perf_counter() - t
    torch.set_num_threads(default_threads)
    say(f"mdir data translate with {actors} actors …")
    t = time.perf_counter()
    res = translate_dataset(
        src, f"{tmp}/ray", model_uri, to="night", conditions=["day", "dusk"], num_gpus=0,
        actors=actors, batch_size=batch_size, rows_per_shard=64,
    )  # fmt: skip
    ray_s = time.perf_counter() - t
    load["after_throughput"] = _load_avg()
    if res.translated != n_plain:
        raise RuntimeError(f"the two sides translated {res.translated} vs {n_plain} images")
    say("ONNX Runtime vs eager …")
    latency = onnx_vs_eager(
        model_uri, tmp, [int(s) for s in latency_sizes.split(",") if s.strip()], repeats
    )
    load["after_latency"] = _load_avg()
    result = {
        "benchmark": "translate",
        "images": n_plain,
        "size": size,
        "generator": {"method": "cyclegan", "ngf": ngf, "n_blocks": n_blocks},
        "plain": {
            "seconds": round(plain_s, 2),
            "images_per_s": round(n_plain / plain_s, 2),
            "torch_threads": default_threads,
        },
        "plain_1_thread": {
            "seconds": round(plain1_s, 2),
            "images_per_s": round(n_plain / plain1_s, 2),
        },
        "ray": {
            "actors": res.actors,
            "seconds": round(ray_s, 2),
            "images_per_s": round(res.translated / ray_s, 2),
            "ray_init_s": round(ray_init_s, 2),
        },
        "ratio": round((res.translated / ray_s) / (n_plain / plain_s), 3),
        "ratio_vs_1_thread": round(plain1_s / ray_s, 3),
        "onnx_vs_eager": latency,
        "load_avg_1_5_15": load,
    }
    write_json(result, out, as_json)
    if not as_json:
        typer.echo(
            f"translate {n_plain} images {size}px: plain {result['plain']['images_per_s']} img/s, "
            f"Ray Data {res.actors} actors {result['ray']['images_per_s']} img/s → "
            f"ratio {result['ratio']}× (vs the plain loop on 1 torch thread, "
            f"{result['plain_1_thread']['images_per_s']} img/s: {result['ratio_vs_1_thread']}×; "
            f"load avg {load['before']} → {load['after_throughput']})"
        )
        for s in latency:
            if s.endswith("px"):
                v = latency[s]
                typer.echo(
                    f"latency {s}: eager {v['eager_ms']} ms, ONNX Runtime {v['onnxruntime_ms']} ms "
                    f"→ {v['speedup']}×"
                )
