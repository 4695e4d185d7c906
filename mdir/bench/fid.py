"""`mdir bench fid`: distributed Inception feature throughput and Fréchet-distance time.

Two measurements, candidate and baseline side by side in one run:

1. Feature extraction throughput (images/s) of `extract_features_distributed` with 1 and
   2 Ray workers (actor start-up, i.e. building the network, is excluded by a warm-up
   chunk; the clean-fid resize to 299 and the forward pass are included), plus the plain
   in-process `FeatureExtractor` for reference. Ratio: 2 workers / 1 worker.
2. Fréchet distance for d = 2048 on covariances of random features: `frechet_distance`
   (Cholesky + dsygst + eigvalsh, float64) vs the straightforward reference
   ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr Re(scipy.linalg.sqrtm(Σ₁Σ₂)) (no `disp=`).
   Median of `--repeats` / `--ref-repeats` interleaved timings; ratio: reference / ours;
   the two values' relative difference is reported too.
3. Standard weights (`mdir metrics weights import`): the extractor rows above run on them
   when they are installed, and the legacy FID of `--standard-images` synthetic day vs as
   many synthetic night images is computed by mdir and by pytorch-fid 0.3.0 (its
   InceptionV3 built from the same converted weights, same uint8 images in memory, same
   device), timed in the same run: values, relative difference, time ratio pytorch-fid / mdir.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import typer

from mdir.bench.app import app
from mdir.bench.common import write_json


def _scipy_reference(mu1, s1, mu2, s2) -> float:
    from scipy.linalg import sqrtm

    covmean = sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def bench_frechet(
    dim: int, n_samples: int, repeats: int, ref_repeats: int = 1, seed: int = 0
) -> dict:
    """Time `frechet_distance` vs the SciPy sqrtm reference on d-dimensional covariances."""
    from mdir.metrics.fid import GaussianStats, frechet_distance

    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = rng.normal(size=(n_samples, dim)) @ mix
    y = rng.normal(size=(n_samples, dim)) @ (mix + 0.1 * np.eye(dim)) + 0.05
    a, b = GaussianStats.from_features(x), GaussianStats.from_features(y)
    mu1, s1, mu2, s2 = a.mean, a.cov, b.mean, b.cov
    ours, ref = [], []
    v_ours = v_ref = float("nan")
    # interleaved so that both see the same machine load
    for i in range(max(repeats, ref_repeats)):
        if i < repeats:
            t = time.perf_counter()
            v_ours = frechet_distance(mu1, s1, mu2, s2)
            ours.append(time.perf_counter() - t)
        if i < ref_repeats:
            t = time.perf_counter()
            v_ref = _scipy_reference(mu1, s1, mu2, s2)
            ref.append(time.perf_counter() - t)
    t_ours, t_ref = statistics.median(ours), statistics.median(ref)
    return {
        "dim": dim,
        "n_samples": n_samples,
        "repeats": repeats,
        "ref_repeats": ref_repeats,
        "ours_s": t_ours,
        "ours_all_s": ours,
        "scipy_sqrtm_s": t_ref,
        "scipy_all_s": ref,
        "speedup_scipy_over_ours": t_ref / t_ours,
        "value_ours": v_ours,
        "value_scipy": v_ref,
        "rel_diff": abs(v_ours - v_ref) / abs(v_ref),
    }


def bench_extractor(
    num_images: int, image_size: int, workers: list[int], chunk_size: int, kw: dict
) -> dict:
    """images/s of the distributed extractor per worker count, and in-process."""
    import torch

    from mdir.metrics.distributed import extract_features_distributed
    from mdir.metrics.features import FeatureExtractor

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (num_images, image_size, image_size, 3), dtype=np.uint8)
    out: dict = {"num_images": num_images, "image_size": image_size, "chunk_size": chunk_size}
    torch.set_num_threads(1)
    fe = FeatureExtractor(**kw)
    fe.extract(imgs[:1])  # warm-up
    t = time.perf_counter()
    single = fe.extract(imgs)
    dt = time.perf_counter() - t
    out["in_process_1_thread"] = {"seconds": dt, "images_per_s": num_images / dt}
    out["label"] = fe.label
    for w in workers:
        try:
            # warm-up run: actors start and build the network; then the timed run
            extract_features_distributed(imgs[:w], kw, num_workers=w, chunk_size=1)
            t = time.perf_counter()
            d = extract_features_distributed(imgs, kw, num_workers=w, chunk_size=chunk_size)
            dt = time.perf_counter() - t
        except Exception as e:  # e.g. Ray cannot start on an overloaded machine
            out[f"ray_{w}_workers"] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[f"ray_{w}_workers"] = {
            "seconds": dt,
            "images_per_s": num_images / dt,
            "max_abs_diff_vs_in_process": float(np.abs(d.pool - single.pool).max()),
        }
    a, b = out.get(f"ray_{workers[0]}_workers", {}), out.get(f"ray_{workers[-1]}_workers", {})
    if len(workers) >= 2 and "images_per_s" in a and "images_per_s" in b:
        out[f"speedup_{workers[-1]}_vs_{workers[0]}_workers"] = (
            b["images_per_s"] / a["images_per_s"]
        )
    return out


def synthetic_day_night(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n day and n night renders of the synthetic street scenes (mdir.data.synth)."""
    from mdir.data.synth import render_place

    day: list[np.ndarray] = []
    night: list[np.ndarray] = []
    place = 0
    while len(day) < n:
        for r in render_place(place, 4, ["day", "night"], size, seed):
            (day if r["condition"] == "day" else night).append(np.asarray(r["image"], np.uint8))
        place += 1
    return np.stack(day[:n]), np.stack(night[:n])


def pytorch_fid_model(weights: str | Path):
    """pytorch-fid 0.3.0's InceptionV3 (2048-d pool) with mdir's converted weights: its
    `load_state_dict_from_url` is handed our state dict (torchvision names; a zero fc for
    its strict load, unused by the pool features), so nothing is downloaded."""
    import pytorch_fid.inception as pfi
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(weights))
    sd.setdefault("fc.weight", torch.zeros(1008, 2048))
    sd.setdefault("fc.bias", torch.zeros(1008))
    saved = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: sd
    try:
        return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        pfi.load_state_dict_from_url = saved


def _pytorch_fid_acts(model, imgs: np.ndarray, batch: int, device: str) -> np.ndarray:
    """pytorch-fid's 2048-d activations: its model on x / 255 (it resizes and scales)."""
    import torch

    acts = []
    with torch.no_grad():
        for s in range(0, len(imgs), batch):
            x = torch.from_numpy(imgs[s : s + batch]).permute(0, 3, 1, 2).float() / 255
            acts.append(model(x.to(device))[0].squeeze(-1).squeeze(-1).cpu().numpy())
    return np.concatenate(acts)


def _pytorch_fid_distance(a1: np.ndarray, a2: np.ndarray) -> float:
    """pytorch-fid's statistics (np.mean / np.cov) and its Fréchet distance; SciPy ≥ 1.18
    dropped the `disp=` its sqrtm call uses, then the textbook formula with sqrtm stands in."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    m1, s1 = np.mean(a1, axis=0), np.cov(a1, rowvar=False)
    m2, s2 = np.mean(a2, axis=0), np.cov(a2, rowvar=False)
    try:
        return float(calculate_frechet_distance(m1, s1, m2, s2))
    except TypeError:
        return _scipy_reference(m1, s1, m2, s2)


def bench_standard_fid(
    weights: str | Path, num_images: int, image_size: int, batch: int, device: str
) -> dict:
    """Legacy FID of synthetic day vs night: mdir vs pytorch-fid, same weights and images.
    Interleaved (mdir day, pytorch-fid day, mdir night, pytorch-fid night) so that load
    changes on a shared machine hit both; feature extraction and the distance (statistics
    + Fréchet) are timed apart."""
    import torch

    from mdir.metrics.features import FeatureExtractor
    from mdir.metrics.fid import GaussianStats

    day, night = synthetic_day_night(num_images, image_size)
    fe = FeatureExtractor(weights=weights, device=device, batch_size=batch, protocol="legacy")
    ref_model = pytorch_fid_model(weights).to(fe.device)
    dev = str(fe.device)
    fe.extract(day[:batch])  # warm-up both at the timed batch shape
    _pytorch_fid_acts(ref_model, day[:batch], batch, dev)
    ext = {"mdir": 0.0, "pytorch_fid": 0.0}
    ours_f, ref_f = [], []
    for imgs in (day, night):
        t = time.perf_counter()
        ours_f.append(fe.extract(imgs).pool)
        ext["mdir"] += time.perf_counter() - t
        t = time.perf_counter()
        ref_f.append(_pytorch_fid_acts(ref_model, imgs, batch, dev))
        ext["pytorch_fid"] += time.perf_counter() - t
    t = time.perf_counter()
    ours = GaussianStats.from_features(ours_f[0]).frechet_distance(
        GaussianStats.from_features(ours_f[1])
    )
    d_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = _pytorch_fid_distance(*ref_f)
    d_ref = time.perf_counter() - t
    t_ours, t_ref = ext["mdir"] + d_ours, ext["pytorch_fid"] + d_ref
    return {
        "num_images": num_images,
        "image_size": image_size,
        "batch": batch,
        "device": str(fe.device),
        "torch_threads": torch.get_num_threads(),
        "fid_legacy_mdir": ours,
        "fid_pytorch_fid": ref,
        "rel_diff": abs(ours - ref) / abs(ref),
        "mdir_s": t_ours,
        "pytorch_fid_s": t_ref,
        "extract_s": ext,
        "distance_s": {"mdir": d_ours, "pytorch_fid": d_ref},
        "time_ratio_pytorch_fid_over_mdir": t_ref / t_ours,
        "extract_ratio_pytorch_fid_over_mdir": ext["pytorch_fid"] / ext["mdir"],
    }


@app.command("fid")
def fid_cmd(
    dim: int = typer.Option(2048, help="Feature dimension of the Fréchet-distance timing."),
    n_samples: int = typer.Option(4096, help="Samples per covariance (≥ dim gives full rank)."),
    repeats: int = typer.Option(5, help="Timed repeats of our Fréchet distance (median reported)."),
    ref_repeats: int = typer.Option(
        2, help="Timed repeats of the SciPy sqrtm reference (slow: ~12 s each on 2 cores)."
    ),
    num_images: int = typer.Option(32, help="Images for the extractor throughput."),
    image_size: int = typer.Option(64, help="Side of the random input images (resized to 299)."),
    workers: str = typer.Option("1,2", help="Comma-separated Ray worker counts."),
    chunk_size: int = typer.Option(4, help="Images per Ray task."),
    inception_weights: str | None = typer.Option(
        None,
        help="Local FID Inception weights (else random init: throughput does not depend on the weights).",
    ),
    standard_images: int = typer.Option(
        2000,
        help="Synthetic day and night images each for the standard-weights FID row (0 = skip).",
    ),
    standard_size: int = typer.Option(64, help="Side of the synthetic day/night renders."),
    device: str = typer.Option("auto", help="Device of the standard-weights FID row."),
    skip_extractor: bool = typer.Option(False, help="Only time the Fréchet distance."),
    skip_frechet: bool = typer.Option(False, help="Only measure the extractor throughput."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON result to this file."),
) -> None:
    """Extractor images/s with 1 and 2 Ray workers; Fréchet distance vs SciPy sqrtm."""
    result: dict = {"benchmark": "fid"}
    if not skip_frechet:
        fr = bench_frechet(dim, n_samples, repeats, ref_repeats)
        result["frechet"] = fr
        typer.echo(
            f"frechet d={dim}: ours {fr['ours_s'] * 1e3:.0f} ms, scipy sqrtm "
            f"{fr['scipy_sqrtm_s'] * 1e3:.0f} ms, ratio {fr['speedup_scipy_over_ours']:.1f}x, "
            f"rel diff {fr['rel_diff']:.2e}",
            err=True,
        )
    from mdir.metrics.features import resolve_weights

    standard = resolve_weights(inception_weights)  # the imported weights when present
    if not skip_extractor:
        kw = dict(
            weights=str(standard) if standard else None,
            allow_random=True,
            device="cpu",
            batch_size=chunk_size,
            seed=0,
        )
        ws = [int(w) for w in workers.split(",") if w.strip()]
        ex = bench_extractor(num_images, image_size, ws, chunk_size, kw)
        result["extractor"] = ex
        parts = [
            f"{k}: {v['images_per_s']:.2f} img/s" if "images_per_s" in v else f"{k}: {v['error']}"
            for k, v in ex.items()
            if isinstance(v, dict)
        ]
        typer.echo("extractor " + ", ".join(parts), err=True)
        for k, v in ex.items():
            if k.startswith("speedup_"):
                typer.echo(f"{k}: {v:.2f}x", err=True)
    if standard_images > 0:
        if standard is None:
            result["standard_fid"] = {
                "error": "no standard weights: run `mdir metrics weights import`"
            }
        else:
            sf = bench_standard_fid(standard, standard_images, standard_size, chunk_size, device)
            result["standard_fid"] = sf
            typer.echo(
                f"legacy FID {standard_images} day vs {standard_images} night: mdir "
                f"{sf['fid_legacy_mdir']:.4f} in {sf['mdir_s']:.1f} s, pytorch-fid "
                f"{sf['fid_pytorch_fid']:.4f} in {sf['pytorch_fid_s']:.1f} s (rel diff "
                f"{sf['rel_diff']:.1e}, time ratio {sf['time_ratio_pytorch_fid_over_mdir']:.2f}x)",
                err=True,
            )
    write_json(result, out, json_out)
