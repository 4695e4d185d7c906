"""``train.sync_batchnorm``: BatchNorm statistics over every rank's batch (issue 18).

Two gloo processes with different data: `DistBatchNorm` gives the outputs, input gradients
and running statistics of one plain BatchNorm over the concatenated batch, and the same on
both ranks. Through the real Ray Train loop (2 CPU workers, different data per rank), the
running statistics of every BatchNorm are identical across ranks with the option and differ
without it."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.models.syncbn import DistBatchNorm, convert_sync_batchnorm  # noqa: E402
from mdir.training.config import load_job_config  # noqa: E402

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


def _data(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(3 + rank, 4, 5, 5, generator=g) * (1 + rank) + rank  # different n too


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4, momentum=0.3)), "cpu")
    assert isinstance(bn[0], DistBatchNorm)
    with torch.no_grad():
        bn[0].weight.copy_(torch.linspace(0.5, 2.0, 4))
        bn[0].bias.copy_(torch.linspace(-1.0, 1.0, 4))
    x = _data(rank).requires_grad_(True)
    y = bn(x)
    (y * torch.arange(1.0, 5.0).view(1, 4, 1, 1)).sum().backward()
    local_rm = None
    if rank == 0:  # inference on one rank alone (no_grad, train mode) must stay local
        before = {k: v.clone() for k, v in bn[0].state_dict().items()}
        with torch.no_grad():
            bn(x.detach() + 5.0)
        local_rm = bn[0].running_mean.clone()
        bn[0].load_state_dict(before)
    marker = torch.tensor([float(rank + 1)])
    dist.all_reduce(marker)  # pairs with the other rank's only if rank 0 did no extra one
    torch.save(
        {
            "marker": marker,
            "local_rm": local_rm,
            "y": y.detach(),
            "gx": x.grad,
            "rm": bn[0].running_mean,
            "rv": bn[0].running_var,
            "gw": bn[0].weight.grad,
        },
        os.path.join(out, f"r{rank}.pt"),
    )
    dist.destroy_process_group()


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_dist_batchnorm_equals_batchnorm_over_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"r{i}.pt", weights_only=True) for i in range(2)]
    ref = nn.BatchNorm2d(4, momentum=0.3)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 2.0, 4))
        ref.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    x = torch.cat([_data(0), _data(1)]).requires_grad_(True)
    y = ref(x)
    (y * torch.arange(1.0, 5.0).view(1, 4, 1, 1)).sum().backward()
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["gx"], r[1]["gx"]]), x.grad, atol=1e-5, rtol=1e-5)
    for i in range(2):
        torch.testing.assert_close(r[i]["rm"], ref.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r[i]["rv"], ref.running_var, atol=1e-5, rtol=1e-5)
    assert float(r[0]["marker"]) == float(r[1]["marker"]) == 3.0
    mean0 = (_data(0) + 5.0).mean(dim=(0, 2, 3))  # rank 0's own batch, not the global one
    torch.testing.assert_close(
        r[0]["local_rm"], 0.7 * r[0]["rm"] + 0.3 * mean0, atol=1e-5, rtol=1e-5
    )
    # DDP averages gradients over ranks: the per-rank weight grads sum to the global one
    torch.testing.assert_close(r[0]["gw"] + r[1]["gw"], ref.weight.grad, atol=1e-4, rtol=1e-5)


def test_single_process_and_eval_are_plain_batchnorm():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    conv = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), "cpu")[0]
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(conv(x), plain(x))
    torch.testing.assert_close(conv.running_var, plain.running_var)
    conv.eval(), plain.eval()
    torch.testing.assert_close(conv(x), plain(x))
    assert set(conv.state_dict()) == set(plain.state_dict())  # registered weights load as BN


def test_cuda_conversion_synchronises_only_with_gradients(monkeypatch):
    """On CUDA the BatchNorms become `GradSyncBatchNorm`: PyTorch's SyncBatchNorm, which in
    train mode starts a collective on every forward — under no_grad too, where a pix2pix
    generator translating for samples or evaluation (train mode) on fewer than all ranks
    would wait forever. Ours normalises with its own batch there, like plain BatchNorm."""
    import torch.distributed as dist

    from mdir.models.syncbn import GradSyncBatchNorm

    m = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3, momentum=0.0)), "cuda")[0]
    assert type(m) is GradSyncBatchNorm and m.training
    plain = nn.BatchNorm2d(3, momentum=0.0)
    x = torch.randn(4, 3, 5, 5)
    # a 2-rank world as the module sees it: the stock one goes for the collective
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            nn.SyncBatchNorm(3)(x)
        torch.testing.assert_close(m(x), plain(x))


def test_subclasses_are_left_alone():
    class Mine(nn.BatchNorm2d):
        pass

    m = convert_sync_batchnorm(nn.Sequential(Mine(3), nn.BatchNorm1d(2)), "cpu")
    assert type(m[0]) is Mine and isinstance(m[1], DistBatchNorm)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_train_ranks_share_batchnorm_statistics_only_when_synced(ray_cluster, tmp_path):
    import ray.cloudpickle

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    stats = {}
    for sync in (True, False):
        dump = tmp_path / f"dump-{sync}"
        dump.mkdir()
        cfg = load_job_config(TINY, [
            "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={tmp_path / 'runs'}",
            f"storage.name=sbn-{sync}", "train.max_steps=2", "mlflow.enabled=false",
            f"train.sync_batchnorm={str(sync).lower()}",
        ])  # fmt: skip
        r = train(cfg, plan=training_fakes.RandomPlan(steps_per_epoch=2),
                  method_factory=training_fakes.FakeFactory(dump_dir=str(dump)), validate=False)  # fmt: skip
        assert r.error is None, r.error
        d = [torch.load(dump / f"rank{i}.pt", weights_only=True) for i in range(2)]
        assert d[0]["step"] == d[1]["step"] == 2
        torch.testing.assert_close(d[0]["params"], d[1]["params"])  # DDP keeps weights equal
        stats[sync] = d
    assert torch.allclose(stats[True][0]["buffers"], stats[True][1]["buffers"], atol=1e-6)
    assert not torch.allclose(stats[False][0]["buffers"], stats[False][1]["buffers"], atol=1e-3)
