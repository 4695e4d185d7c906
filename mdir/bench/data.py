"""`mdir bench data URI`: the Ray Data pipeline vs plain torchvision ImageFolder + DataLoader.

Both sides deliver the same images (the split's rows, exported byte for byte to an
ImageFolder tree), with the same augmentation (random square crop of side s·min(H, W),
s ~ U(scale_min, 1), resized to `image_size`, horizontal flip, normalised to [-1, 1]),
the same batch size and the same number of workers (DataLoader `num_workers` = Ray Data
task concurrency = Ray CPUs), side by side in one run, for `epochs` epochs each.

Measured: images/s delivered to a (trivial) training loop over all epochs (``ratio``) and
over epochs 2..N (``ratio_steady``). The Ray side includes reading the shards, decoding and
materialising in epoch 1; Ray's own start-up (``ray.init`` and the worker processes'
imports, ``ray_warmup_s``) is not counted because a training cluster already has them up.
The DataLoader side includes its worker start-up (fork, cheap).

Peak memory is the summed PSS (proportional set size, so shared pages such as the
object store or forked copy-on-write pages are not double-counted) of the process tree
of each side, sampled every 0.1 s. The Ray side is also split into Ray's daemons (GCS,
raylet, dashboard, agents: a training cluster runs them anyway), Ray Data's singleton
actors, and the pipeline (driver + decode/augment workers), each with its own peak.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer

from mdir.bench.app import app
from mdir.bench.common import write_json

# ------------------------------------------------------------------ memory of a process tree


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    seen, stack = [], [pid]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        stack += _children(p)
    return seen


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_RAY_INFRA = (
    "gcs_server",
    "raylet",
    "dashboard",
    "agent",
    "log_monitor",
    "monitor.py",
    "runtime_env",
)
# Ray Data's own singleton actors (statistics; resource requests to the autoscaler): one
# process each, started by the first Dataset and shared by every later one.
_RAY_DATA_ACTORS = ("_StatsActor", "_AutoscalingCoordinatorActor")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _category(pid: int) -> str:
    """ "ray_daemons" (GCS, raylet, dashboard, agents), "ray_data_actors", or "pipeline"
    (this process and the workers that read, decode and augment)."""
    cmd = _cmdline(pid)
    if any(k in cmd for k in _RAY_DATA_ACTORS):
        return "ray_data_actors"
    if "default_worker" not in cmd and "ray::" not in cmd and any(k in cmd for k in _RAY_INFRA):
        return "ray_daemons"
    if cmd.startswith("ray::") and any(k in cmd for k in ("DashboardAgent", "RuntimeEnvAgent")):
        return "ray_daemons"
    return "pipeline"


class TreeMemory:
    """Samples the summed PSS of this process and all its descendants in a thread, in
    total and per `_category` (each category's own peak), so a report can say how much
    is Ray's fixed cost (daemons a Ray Train job runs anyway, Ray Data's actors) and how
    much the pipeline itself."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_kb = 0
        self.peak_by_kb: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            by: dict[str, int] = {}
            for p in _tree(os.getpid()):
                c = _category(p)
                by[c] = by.get(c, 0) + _pss_kb(p)
            self.peak_kb = max(self.peak_kb, sum(by.values()))
            for c, v in by.items():
                self.peak_by_kb[c] = max(self.peak_by_kb.get(c, 0), v)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024.0

    def peak_by_mb(self) -> dict[str, float]:
        return {c: round(v / 1024.0, 1) for c, v in sorted(self.peak_by_kb.items())}


# ------------------------------------------------------------------ the plain baseline


class ScaleCropPIL:
    """The same augmentation as `mdir.data.transforms.augment` on PIL images."""

    def __init__(self, size: int, scale_min: float) -> None:
        self.size, self.scale_min = size, scale_min

    def __call__(self, img):
        import random

        from PIL import Image

        w, h = img.size
        side = max(1.0, random.uniform(self.scale_min, 1.0) * min(w, h))
        x0, y0 = random.uniform(0, w - side), random.uniform(0, h - side)
        return img.resize(
            (self.size, self.size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
        )


def export_image_folder(uri: str, split: str, dest: Path) -> int:
    """Write the split's encoded images byte for byte as dest/<condition>/<id>.<ext>."""
    from mdir.data.manifest import read_manifest
    from mdir.data.shards import iter_tables

    m = read_manifest(uri)
    n = 0
    for t in iter_tables(m, ["id", "image", "condition", "split"]):
        for i, img, c, sp in zip(
            t["id"].to_pylist(),
            t["image"].to_pylist(),
            t["condition"].to_pylist(),
            t["split"].to_pylist(),
            strict=True,
        ):
            if sp != split:
                continue
            ext = "jpg" if img[:2] == b"\xff\xd8" else "png"
            (dest / c).mkdir(parents=True, exist_ok=True)
            (dest / c / f"{i}.{ext}").write_bytes(img)
            n += 1
    return n


class FolderOpenCV:
    """A map-style dataset over the exported folder that does mdir's pixel work with mdir's
    own stage functions (OpenCV `decode`, then `augment_stage` on a one-image block) and
    normalises in the worker like the torchvision baseline: the report can then tell what
    Ray Data adds from what OpenCV adds. (Normalising uint8 batches in the main process
    instead made glibc grow that process by ~2.5 GB over 2 epochs: freed float batches
    stranded in per-thread arenas.)"""

    def __init__(self, folder: Path, image_size: int, scale_min: float) -> None:
        self.files = sorted(p for p in folder.rglob("*") if p.is_file())
        self.size, self.scale_min = image_size, scale_min

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch

        from mdir.data.stages import augment_stage, decode
        from mdir.data.transforms import to_model_range

        block = {
            "id": np.array([i]),
            "condition": np.zeros(1, np.int64),
            "place": np.zeros(1, np.int64),
        }
        block["image"] = decode(self.files[i].read_bytes(), 1 << 30, exact=False)[None]
        out = augment_stage(
            block,
            key="A",
            mode="scale_crop_flip",
            size=self.size,
            scale_min=self.scale_min,
            flip=True,
            seed=None,
            paired=False,
        )
        return to_model_range(torch.from_numpy(out["A"][0]))


def run_plain(
    folder: Path,
    image_size: int,
    scale_min: float,
    batch_size: int,
    workers: int,
    epochs: int,
    opencv: bool = False,
) -> dict[str, Any]:
    """The torchvision baseline (PIL), or with `opencv` the `FolderOpenCV` variant; both
    deliver float batches normalised in the workers."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    if opencv:
        ds: Any = FolderOpenCV(folder, image_size, scale_min)
    else:
        tf = transforms.Compose(
            [
                ScaleCropPIL(image_size, scale_min),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )
        ds = datasets.ImageFolder(str(folder), transform=tf)
    n_img = 0
    epoch_s: list[float] = []
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            persistent_workers=workers > 0,
        )
        chk = 0.0
        for _ in range(epochs):
            te = time.perf_counter()
            for batch in loader:
                x = batch if opencv else batch[0]
                chk += float(x[:, 0, 0, 0].sum())  # the "training loop" touches the batch
                n_img += x.shape[0]
            epoch_s.append(time.perf_counter() - te)
        dt = time.perf_counter() - t0
        del loader
    assert torch.isfinite(torch.tensor(chk))
    return _result(n_img, dt, epoch_s, mem.peak_mb)


def _result(n_img: int, dt: float, epoch_s: list[float], peak_mb: float) -> dict[str, Any]:
    per_epoch = n_img / max(len(epoch_s), 1)
    steady = epoch_s[1:] or epoch_s
    return {
        "images": n_img,
        "seconds": dt,
        "images_per_s": n_img / dt,
        "epoch_seconds": epoch_s,
        "steady_images_per_s": per_epoch * len(steady) / sum(steady),
        "peak_pss_mb": peak_mb,
    }


def run_ray(
    uri: str,
    split: str,
    image_size: int,
    scale_min: float,
    batch_size: int,
    workers: int,
    epochs: int,
    materialize: bool,
) -> dict[str, Any]:
    from mdir.data.config import DataConfig
    from mdir.data.pipeline import iter_train_batches, make_train_datasets, steps_per_epoch

    cfg = DataConfig(
        uri=uri,
        mode="single",
        domain_a=[],
        domain_b=[],
        train_split=split,
        image_size=image_size,
        scale_min=scale_min,
        parallelism=workers,
        task_cpus=1.0,  # at most `workers` Ray worker processes, like the DataLoader
        materialize=materialize,
    )
    per_epoch = steps_per_epoch(cfg, split, batch_size, 1)
    n_img = 0
    epoch_s: list[float] = []
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        ds = make_train_datasets(cfg, split)  # read + decode (+ materialize) happen here
        chk = 0.0
        te = time.perf_counter()
        first = te - t0  # counted in epoch 1
        for k, b in enumerate(
            iter_train_batches({"A": ds["A"].iterator()}, batch_size, per_epoch * epochs), 1
        ):
            chk += float(b["A"][:, 0, 0, 0].sum())
            n_img += b["A"].shape[0]
            if k % per_epoch == 0:
                now = time.perf_counter()
                epoch_s.append(now - te + (first if not epoch_s else 0.0))
                te = now
        dt = time.perf_counter() - t0
    return {
        **_result(n_img, dt, epoch_s, mem.peak_mb),
        "peak_pss_mb_by_part": mem.peak_by_mb(),
        "materialize": materialize,
        "dataset_setup_s": first,
    }


def warm_up_ray(uri: str, split: str, workers: int) -> float:
    """Start the Ray worker processes (imports) with a 1-batch pipeline: on a running
    training cluster they are already up. Returns the seconds it took (reported)."""
    from mdir.data.config import DataConfig
    from mdir.data.pipeline import iter_train_batches, make_train_datasets

    t0 = time.perf_counter()
    cfg = DataConfig(
        uri=uri,
        mode="single",
        domain_a=[],
        domain_b=[],
        image_size=16,
        parallelism=workers,
        task_cpus=1.0,
        materialize=False,
    )
    ds = make_train_datasets(cfg, split)
    for _ in iter_train_batches({"A": ds["A"].limit(8).iterator()}, 4, 1):
        pass
    return time.perf_counter() - t0


@app.command("data")
def bench_data(
    uri: str = typer.Argument(
        ..., help="Dataset root (manifest.json); with --synth-places it is created if missing."
    ),
    split: str = typer.Option("train", help="Split whose images both loaders deliver."),
    image_size: int = typer.Option(256, help="Crop size delivered to the training loop."),
    scale_min: float = typer.Option(0.6, help="Smallest random scale (thesis: 0.6)."),
    batch_size: int = typer.Option(32, help="Batch size on both sides."),
    workers: int = typer.Option(
        2, help="DataLoader num_workers = Ray Data concurrency = Ray CPUs."
    ),
    epochs: int = typer.Option(4, help="Epochs per side (steady state = epochs 2..N)."),
    warmup: bool = typer.Option(
        True, help="Start Ray's worker processes before timing (a training cluster has them up)."
    ),
    materialize: bool = typer.Option(
        True, help="Ray side: cache decoded images in the object store."
    ),
    synth_places: int = typer.Option(
        0, help="If URI has no dataset: synthesize this many places at --synth-size."
    ),
    synth_size: int = typer.Option(256, help="Image size of the synthesized dataset."),
    opencv_baseline: bool = typer.Option(
        True,
        help="Also time a DataLoader that does mdir's OpenCV pixel work (the same stage "
        "functions) in its workers, to show what Ray Data itself adds. Reported, not the target "
        "ratio.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON result here."),
) -> None:
    """Images/s of the Ray Data pipeline vs ImageFolder + DataLoader, same images and augmentation."""
    from mdir.data import io
    from mdir.data.manifest import read_manifest

    try:
        read_manifest(uri)
    except io.DataPathError:
        if not synth_places:
            raise
        from mdir.data.synth import synthesize

        synthesize(uri, places=synth_places, size=synth_size, poses_per_place=1, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="mdir-bench-data-"))
    try:
        n = export_image_folder(uri, split, tmp / "folder")
        if n < batch_size:
            raise typer.BadParameter(
                f"split {split!r} of {uri} has {n} images < batch size {batch_size}"
            )
        plain = run_plain(tmp / "folder", image_size, scale_min, batch_size, workers, epochs)
        typer.echo(
            f"plain DataLoader: {plain['images_per_s']:.1f} img/s, peak {plain['peak_pss_mb']:.0f} MB",
            err=True,
        )
        plain_cv = None
        if opencv_baseline:
            plain_cv = run_plain(
                tmp / "folder", image_size, scale_min, batch_size, workers, epochs, opencv=True
            )
            typer.echo(
                f"OpenCV DataLoader: {plain_cv['images_per_s']:.1f} img/s, "
                f"peak {plain_cv['peak_pss_mb']:.0f} MB",
                err=True,
            )
        from mdir.data.raylocal import init_ray

        started = init_ray(num_cpus=workers, temp_dir=str(tmp / "ray"))
        try:
            warm_s = warm_up_ray(uri, split, workers) if warmup else 0.0
            ray_res = run_ray(
                uri, split, image_size, scale_min, batch_size, workers, epochs, materialize
            )
            typer.echo(
                f"ray data: {ray_res['images_per_s']:.1f} img/s, peak {ray_res['peak_pss_mb']:.0f} MB",
                err=True,
            )
        finally:
            if started:
                import ray

                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "data",
        "uri": uri,
        "split": split,
        "images_in_split": n,
        "image_size": image_size,
        "batch_size": batch_size,
        "workers": workers,
        "epochs": epochs,
        "candidate": {"name": "mdir Ray Data pipeline", **ray_res},
        "baseline": {"name": "torchvision ImageFolder + DataLoader", **plain},
        "ray_warmup_s": warm_s,
        "ratio": ray_res["images_per_s"] / plain["images_per_s"],
        "ratio_steady": ray_res["steady_images_per_s"] / plain["steady_images_per_s"],
        "memory_ratio": ray_res["peak_pss_mb"] / max(plain["peak_pss_mb"], 1e-9),
        "memory_ratio_pipeline_only": ray_res["peak_pss_mb_by_part"].get("pipeline", 0.0)
        / max(plain["peak_pss_mb"], 1e-9),
        "target_ratio": 1.5,
    }
    if plain_cv is not None:
        result["baseline_opencv"] = {"name": "OpenCV folder dataset + DataLoader", **plain_cv}
        result["ratio_vs_opencv_loader"] = ray_res["images_per_s"] / plain_cv["images_per_s"]
    if not json_out:
        typer.echo(
            f"ray data: {ray_res['images_per_s']:.1f} img/s, peak {ray_res['peak_pss_mb']:.0f} MB | "
            f"plain: {plain['images_per_s']:.1f} img/s, peak {plain['peak_pss_mb']:.0f} MB | "
            f"ratio {result['ratio']:.2f}x overall, {result['ratio_steady']:.2f}x steady (target 1.5x), "
            + (
                f"vs an OpenCV DataLoader {result['ratio_vs_opencv_loader']:.2f}x | "
                if plain_cv is not None
                else ""
            )
            + f"memory ratio {result['memory_ratio']:.2f} "
            f"({result['memory_ratio_pipeline_only']:.2f} for the pipeline alone; Ray's parts: "
            f"{ray_res['peak_pss_mb_by_part']} MB)"
        )
    write_json(result, out, json_out)
