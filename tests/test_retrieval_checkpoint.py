"""Retrieval checkpoints go through the training package's checkpointing: a round trip
restores trunk, GeM p, Adam and the LR schedule exactly; Lw is never saved; a damaged file
is refused by the integrity manifest, naming the file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdir.retrieval.checkpoint import load_checkpoint, save_checkpoint
from mdir.retrieval.config import RetrievalModelConfig
from mdir.retrieval.model import build_model
from mdir.retrieval.whitening import Whitening
from mdir.training.checkpoint import NETWORKS_FILE, CheckpointCorruptError, read_meta


def _setup(seed: int):
    torch.manual_seed(seed)
    model = build_model(RetrievalModelConfig(arch="tiny", allow_random=True, width=8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(-0.1))
    return model, opt, sched


def _train_a_little(model, opt, sched, steps: int = 2) -> None:
    for _ in range(steps):
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        loss = model(x).pow(2).sum() - model(x.flip(0)).mul(model(x)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_round_trip_restores_model_optimizer_schedule_and_state(tmp_path):
    model, opt, sched = _setup(0)
    _train_a_little(model, opt, sched)
    # Lw learned after the last epoch is in the model but must not be in the checkpoint
    vecs = np.random.default_rng(0).normal(size=(12, model.dim)).astype(np.float32)
    model.set_whitening(Whitening.learn(vecs, np.arange(6), np.arange(6, 12)))
    history = [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 1.25}]
    state = {"history": history, "augment": {"seen": 10, "applied": 4}}
    save_checkpoint(tmp_path, model, opt, sched, epoch=1, state=state)

    fresh, fopt, fsched = _setup(1)  # other init: the load has to change everything
    got = load_checkpoint(tmp_path, fresh, fopt, fsched)
    assert got == {"epoch": 1, **state}
    assert fresh.net.whiten is None and read_meta(tmp_path)["epoch"] == 1
    want = {k: v for k, v in model.state_dict().items() if not k.startswith("net.whiten.")}
    have = fresh.state_dict()
    assert set(have) == set(want)
    for k, v in want.items():
        assert torch.equal(have[k], v), k
    assert fsched.state_dict() == sched.state_dict()
    assert fsched.get_last_lr() == pytest.approx(sched.get_last_lr())
    o, f = opt.state_dict()["state"], fopt.state_dict()["state"]
    assert o.keys() == f.keys()
    for i in o:
        assert torch.equal(o[i]["exp_avg"], f[i]["exp_avg"])
        assert torch.equal(o[i]["exp_avg_sq"], f[i]["exp_avg_sq"])
    # the next step is the same step: same weights after one more update on the same batch
    model.net.whiten = None  # as in training: Lw comes after the last epoch
    torch.manual_seed(7)
    _train_a_little(model, opt, sched, 1)
    torch.manual_seed(7)
    _train_a_little(fresh, fopt, fsched, 1)
    assert torch.equal(fresh.net.pool.p, model.net.pool.p)


def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    model, opt, sched = _setup(0)
    save_checkpoint(tmp_path, model, opt, sched, epoch=0, state={"history": []})
    f = tmp_path / NETWORKS_FILE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a half-uploaded file
    fresh, fopt, fsched = _setup(1)
    with pytest.raises(CheckpointCorruptError, match=NETWORKS_FILE):
        load_checkpoint(tmp_path, fresh, fopt, fsched)
