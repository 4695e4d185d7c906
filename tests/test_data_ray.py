"""Ray Data pipelines: shapes, normalisation, streams, 2-worker splits without duplicates."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from mdir.data.config import DataConfig
from mdir.data.manifest import read_manifest
from mdir.data.pipeline import (
    iter_train_batches,
    make_train_datasets,
    split_for_workers,
    steps_per_epoch,
)
from mdir.data.synth import synthesize

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def ray_ctx(request, tmp_path_factory):
    """The session `ray_cluster` (tests/conftest.py) when present, else a private local
    Ray (token auth from an env token: no ~/.ray/auth_token is written)."""
    import ray

    cluster = None
    if not os.environ.get("MDIR_TEST_PRIVATE_RAY"):
        try:
            cluster = request.getfixturevalue("ray_cluster")
        except pytest.FixtureLookupError:
            cluster = None
    if ray.is_initialized():
        yield
        return
    if cluster is not None:
        cluster.init()  # token auth + AWS_* forwarded to workers
        yield
        return
    else:
        from mdir.data.raylocal import init_ray

        init_ray(num_cpus=2, temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dsets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayds")
    synthesize(
        str(root / "u"),
        places=4,
        size=32,
        seed=1,
        poses_per_place=4,
        conditions=["day", "night", "snow"],
    )
    synthesize(
        str(root / "p"), places=4, size=32, seed=1, poses_per_place=4, paired=("day", "night")
    )
    return str(root / "u"), str(root / "p")


def _run_workers(shards_per_worker, batch_size, steps):
    out: dict[int, list[dict]] = {}
    errors = []

    def run(i):
        try:
            out[i] = list(iter_train_batches(shards_per_worker[i], batch_size, steps))
        except Exception as e:  # surface thread errors in the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(shards_per_worker))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return out


def _edges(x: torch.Tensor) -> torch.Tensor:
    """|horizontal| + |vertical| gray-level differences, flattened per image."""
    g = x.mean(1)
    return (
        (g[:, :-1, 1:] - g[:, :-1, :-1]).abs() + (g[:, 1:, :-1] - g[:, :-1, :-1]).abs()
    ).flatten(1)


def _check_images(x, size):
    assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.05


@pytest.mark.parametrize("materialize", [True, False], ids=["cached", "streaming"])
def test_unpaired_two_workers(ray_ctx, dsets, materialize):
    uri = dsets[0]
    cfg = DataConfig(
        uri=uri,
        mode="unpaired",
        domain_a=["day"],
        domain_b=["night", "snow"],
        image_size=16,
        materialize=materialize,
    )
    m = read_manifest(uri)
    steps = steps_per_epoch(cfg, "train", 2, 2)
    assert steps == m.count("train", ["night", "snow"]) // 4  # longest stream / global batch
    ds = make_train_datasets(cfg, "train")
    assert set(ds) == {"A", "B"}
    res = _run_workers(split_for_workers(ds, 2), 2, steps)
    assert [len(v) for v in res.values()] == [steps, steps]  # equal steps on every rank
    ids_per_worker = []
    for batches in res.values():
        ids = []
        for b in batches:
            _check_images(b["A"], 16)
            _check_images(b["B"], 16)
            assert (b["A_condition"] == m.conditions.index("day")).all()
            assert set(b["B_condition"].tolist()) <= {
                m.conditions.index("night"),
                m.conditions.index("snow"),
            }
            ids += b["B_id"].tolist()
        ids_per_worker.append(set(ids))
    # one pass over B = exactly the training rows of B, split without overlap
    assert not (ids_per_worker[0] & ids_per_worker[1])
    assert len(ids_per_worker[0] | ids_per_worker[1]) == m.count("train", ["night", "snow"])


@pytest.mark.parametrize("materialize", [True, False], ids=["cached", "streaming"])
def test_paired_two_workers_same_crop(ray_ctx, dsets, materialize):
    uri = dsets[1]
    cfg = DataConfig(
        uri=uri,
        mode="paired",
        domain_a=[],
        domain_b=[],
        image_size=16,
        scale_min=0.5,
        materialize=materialize,
    )
    m = read_manifest(uri)
    ds = make_train_datasets(cfg, "train")
    assert set(ds) == {"AB"}
    n = m.count("train")
    res = _run_workers(split_for_workers(ds, 2), 2, n // 4)
    seen, same, other = [], [], []
    for batches in res.values():
        for b in batches:
            _check_images(b["A"], 16)
            _check_images(b["B"], 16)
            assert torch.equal(b["A_id"], b["B_id"])
            # day vs night of the same pose and the same crop: the road/building edges line
            # up, so their edge maps are more correlated than with another row's
            a, bb = _edges(b["A"]), _edges(b["B"])
            same += [torch.corrcoef(torch.stack([a[i], bb[i]]))[0, 1] for i in range(len(a))]
            other += [torch.corrcoef(torch.stack([a[i], bb[i - 1]]))[0, 1] for i in range(len(a))]
            seen += b["A_id"].tolist()
    assert len(seen) == len(set(seen)) == n
    assert torch.stack(same).mean() > torch.stack(other).mean() + 0.05


def test_single_stream_all_conditions(ray_ctx, dsets):
    uri = dsets[0]
    cfg = DataConfig(
        uri=uri, mode="single", domain_a=[], domain_b=[], image_size=16, augment="resize"
    )
    ds = make_train_datasets(cfg, "val")
    m = read_manifest(uri)
    batches = list(iter_train_batches({"A": ds["A"].iterator()}, 4, 3))
    assert len(batches) == 3
    conds = set(np.concatenate([b["A_condition"].numpy() for b in batches]).tolist())
    assert len(conds) >= 2 and conds <= set(range(len(m.conditions)))
    _check_images(batches[0]["A"], 16)


def test_unknown_condition_fails_clearly(dsets):
    cfg = DataConfig(uri=dsets[0], domain_a=["fog"], domain_b=["night"], image_size=16)
    with pytest.raises(KeyError, match="fog"):
        make_train_datasets(cfg, "train")


def test_bench_data_smoke(ray_ctx, tmp_path):
    """`mdir bench data` end to end on a tiny dataset (numbers are not asserted: only that
    both sides ran on the same images and the JSON carries the ratio)."""
    import json

    from typer.testing import CliRunner

    from mdir.cli import app

    uri = str(tmp_path / "b")
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "data",
            uri,
            "--synth-places",
            "8",
            "--synth-size",
            "32",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--json",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["images_in_split"] == 40
    n = 2 * (40 // 4) * 4  # 2 epochs of 10 whole batches of 4
    assert (
        r["candidate"]["images"] == r["baseline"]["images"] == r["baseline_opencv"]["images"] == n
    )
    for side in ("baseline", "baseline_opencv"):
        assert len(r[side]["epoch_seconds"]) == 2
    assert r["ratio_vs_opencv_loader"] == pytest.approx(
        r["candidate"]["images_per_s"] / r["baseline_opencv"]["images_per_s"]
    )
    parts = r["candidate"]["peak_pss_mb_by_part"]  # this process at least is "pipeline"
    assert parts["pipeline"] > 0 and r["memory_ratio_pipeline_only"] > 0
    assert r["ratio"] > 0 and r["baseline"]["peak_pss_mb"] > 0 and "ratio_steady" in r
