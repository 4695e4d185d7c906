"""Checkpoint integrity (manifest, fallback candidates, disk space) and checkpoint
selection by score, without a cluster; the Ray Train runs are in test_training.py."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.training import checkpoint as ckpt  # noqa: E402
from mdir.training import selection  # noqa: E402


def _write(d: Path, step: int, world: int = 2) -> Path:
    torch.manual_seed(step)
    m = training_fakes.FakeMethod(None, torch.device("cpu"))
    opts = m.configure_optimizers()
    ckpt.save_training_state(
        d, networks=m.networks, generator=m.generator(), optimizers=opts, schedulers={},
        method_state=m.state_dict(), step=step, epoch=0, step_in_epoch=step,
    )  # fmt: skip
    for r in range(world):  # every rank's files land in one directory (Ray merges them)
        rank_dir = d.parent / f".rank{r}-{d.name}"
        ckpt.save_rng(rank_dir if r else d, r)
        if r:
            (d / "rng").mkdir(exist_ok=True)
            ckpt.write_manifest(rank_dir, r, world)
            for p in rank_dir.rglob("*"):
                if p.is_file():
                    dst = d / p.relative_to(rank_dir)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(p.read_bytes())
        else:
            ckpt.write_manifest(d, 0, world)
    return d


def test_manifest_detects_truncation_zero_files_and_missing_rank(tmp_path):
    d = _write(tmp_path / "c", 3)
    assert ckpt.verify_checkpoint(d) == []
    listed = (d / "manifest" / "rank_0.json").read_text()
    want = hashlib.sha256((d / ckpt.NETWORKS_FILE).read_bytes()).hexdigest()
    assert want in listed  # the manifest is the file's real sha256
    # truncated networks (what ENOSPC / a crash mid-write leaves)
    data = (d / ckpt.NETWORKS_FILE).read_bytes()
    (d / ckpt.NETWORKS_FILE).write_bytes(data[: len(data) // 2])
    assert any("networks.safetensors" in p for p in ckpt.verify_checkpoint(d))
    # same size, other bytes
    (d / ckpt.NETWORKS_FILE).write_bytes(bytes(len(data)))
    assert any("sha256" in p for p in ckpt.verify_checkpoint(d))
    # a rank's files gone
    d2 = _write(tmp_path / "c2", 4)
    (d2 / "manifest" / "rank_1.json").unlink()
    assert any("rank_1.json" in p for p in ckpt.verify_checkpoint(d2))
    # 0-byte partial dir
    p = tmp_path / "partial"
    (p / "manifest").mkdir(parents=True)
    (p / ckpt.NETWORKS_FILE).write_bytes(b"")
    (p / "manifest" / "rank_0.json").write_bytes(b"")
    assert ckpt.verify_checkpoint(p) and ckpt.verify_checkpoint(tmp_path / "empty")


def test_candidates_newest_first_never_newer_than_latest(tmp_path):
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    run = tmp_path / "run"
    names = ["checkpoint_2026-01-01_00-00-01.000001", "checkpoint_2026-01-01_00-00-02.000001",
             "checkpoint_2026-01-01_00-00-03.000001", "checkpoint_2026-01-01_00-00-04.000001"]  # fmt: skip
    for n in names:
        (run / n).mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    latest = Checkpoint(str(run / names[2]), filesystem=pafs.LocalFileSystem())
    got = [Path(c.path).name for c in ckpt.checkpoint_candidates(latest)]
    assert got == [names[2], names[1], names[0]]  # names[3] was never registered by Ray


def test_disk_space_check_names_the_field_and_counts_stored(tmp_path):
    run = tmp_path / "runs" / "r"
    ckpt.check_disk_space(run, per_checkpoint=10 * 2**20, checkpoints=3, free=31 * 2**20)
    with pytest.raises(OSError, match=r"storage\.path: .* 3 checkpoints"):
        ckpt.check_disk_space(run, per_checkpoint=10 * 2**20, checkpoints=3, free=29 * 2**20)
    run.mkdir(parents=True)
    (run / "old").write_bytes(b"\0" * 2 * 2**20)  # what is stored already is reused
    ckpt.check_disk_space(run, per_checkpoint=10 * 2**20, checkpoints=3, free=29 * 2**20)


def test_estimate_matches_written_checkpoint_after_a_step(tmp_path):
    m = training_fakes.FakeMethod(None, torch.device("cpu"))
    opts = m.configure_optimizers()
    est = ckpt.estimate_checkpoint_bytes(m.networks, m.generator(), opts)
    m.train_step({"A": torch.rand(2, 3, 8, 8), "B": torch.rand(2, 3, 8, 8)})
    ckpt.save_training_state(
        tmp_path, networks=m.networks, generator=m.generator(), optimizers=opts, schedulers={},
        method_state={}, step=1, epoch=0, step_in_epoch=1,
    )  # fmt: skip
    tensors = sum(
        os.path.getsize(tmp_path / f) for f in (ckpt.NETWORKS_FILE, ckpt.GENERATOR_FILE, ckpt.STATE_FILE)
    )  # fmt: skip
    # headers and pickled structure aside, the tensor bytes are what the estimate counts
    assert est <= tensors < est + 64 * 1024


def test_selection_score_key_and_best_point():
    m = {"eval/fid_legacy": 12.0, "eval/kid": 0.1, "step": 4}
    assert selection.selection_key(m, None) == "eval/fid_legacy"  # whatever the FID is named
    assert selection.selection_key(m, "kid") == "eval/kid"
    assert selection.selection_key(m, "fid") is None
    assert selection.score(m, None, "min") == -12.0
    assert selection.score(m, "kid", "max") == 0.1
    assert selection.score({"eval/fid": float("nan")}, None, "min") == selection.UNSCORED
    assert selection.score({}, None, "min") == selection.UNSCORED
    pts = [
        (6, -3.0, "final"),
        (2, -1.0, "a"),
        (4, -5.0, "b"),
        (8, -1.0, "c"),
        (9, selection.UNSCORED, "u"),
    ]
    assert selection.best_point(pts) == (2, -1.0, "a")  # best score, earliest of a tie
    assert selection.best_point([(1, selection.UNSCORED, None)]) is None
