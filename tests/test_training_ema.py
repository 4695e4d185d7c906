"""The generator EMA (``train.ema_decay``): the recurrence, the swap that leaves the live
weights untouched, and a real Ray Train run whose evaluation, checkpoint generator and
registered model are the EMA weights, restored on resume."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import training_fakes  # noqa: E402

from mdir.config import ConfigError  # noqa: E402
from mdir.training import checkpoint as ckpt  # noqa: E402
from mdir.training.config import load_job_config  # noqa: E402
from mdir.training.ema import EMA_FILE, GeneratorEMA, ema_update_  # noqa: E402

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))


def test_update_follows_the_recurrence_and_copies_counters():
    """θ_ema after updates towards θ1, θ2 with β = 0.9 equals β²θ0 + β(1−β)θ1 + (1−β)θ2
    (computed by hand); BatchNorm's integer counter is copied, not averaged."""
    net = _net()
    beta = 0.9
    ema = GeneratorEMA(net, beta)
    w0 = net[0].weight.detach().clone()
    thetas = []
    for _ in range(2):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net[1].num_batches_tracked += 3
        thetas.append(net[0].weight.detach().clone())
        ema.update(net)
    expected = beta**2 * w0 + beta * (1 - beta) * thetas[0] + (1 - beta) * thetas[1]
    torch.testing.assert_close(ema.shadow["0.weight"], expected, rtol=0, atol=1e-6)
    assert int(ema.shadow["1.num_batches_tracked"]) == 6
    assert not torch.equal(ema.shadow["0.weight"], net[0].weight)


def test_pure_update_on_dicts():
    s = {"w": torch.tensor([0.0, 10.0]), "n": torch.tensor(1)}
    ema_update_(s, {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(7)}, 0.75)
    assert s["w"].tolist() == [0.5, 7.5] and int(s["n"]) == 7


def test_applied_swaps_in_and_restores_bit_for_bit():
    net = _net()
    ema = GeneratorEMA(net, 0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    live = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 5, 5)
    net.eval()
    with ema.applied(net) as m:
        assert m is net
        assert torch.equal(net[0].weight, ema.shadow["0.weight"])
        inside = net(x)
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k]), k
    assert not torch.allclose(inside, net(x))  # the block really ran other weights


def test_save_load_round_trip_and_key_check(tmp_path):
    net = _net()
    ema = GeneratorEMA(net, 0.99)
    ema.shadow["0.weight"].add_(1.0)
    ema.save(tmp_path / "e.safetensors")
    other = GeneratorEMA(_net(), 0.99)
    other.load(tmp_path / "e.safetensors")
    assert torch.equal(other.shadow["0.weight"], ema.shadow["0.weight"])
    wrong = GeneratorEMA(nn.Conv2d(3, 3, 1), 0.99)
    with pytest.raises(ValueError, match="EMA keys differ"):
        wrong.load(tmp_path / "e.safetensors")


def test_decay_out_of_range_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_job_config(
            TINY, ["method.name=cyclegan", f"data.uri={tmp_path}", "train.ema_decay=1.0"]
        )


def _load_seen(out: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / f"seen_step{step}.safetensors"))


def _raw_g(out: Path, step: int, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The raw G parameters the fake dumped after `step` (a flat vector of G's then D's
    parameters, in `parameters()` order), split back into G's parameter names (`like`
    gives the shapes)."""
    vec = torch.load(out / f"raw_step{step}.pt", weights_only=True)["params"]
    fake_g = training_fakes.FakeMethod(None, torch.device("cpu")).networks["G"]
    names = [k for k, _ in fake_g.named_parameters()]  # `like` is sorted by name
    res, i = {}, 0
    for k in names:
        n = like[k].numel()
        res[k] = vec[i : i + n].view_as(like[k])
        i += n
    return res


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ema_is_evaluated_checkpointed_registered_and_resumed(ray_cluster, mlflow_server, tmp_path):
    """β = 0.5, evaluation at every step. At each step the evaluation sees
    E_t = ½E_{t−1} + ½θ_t (θ_t: the raw weights the method dumped after step t). The best
    point (step 2 of 4) is registered: the model's weights are E_2 exactly, not the raw
    θ_2 in that checkpoint's networks file, and the version says ``ema(0.5)``. A resumed run
    (to step 6, from the step-4 checkpoint) continues the same average: E_5 = ½E_4 + ½θ_5."""
    import mlflow
    import ray.cloudpickle
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from mdir.training.run import train

    ray.cloudpickle.register_pickle_by_value(training_fakes)
    out, dump = tmp_path / "seen", tmp_path / "dump"
    out.mkdir()
    dump.mkdir()
    common = [
        "method.name=cyclegan", f"data.uri={tmp_path}", f"storage.path={tmp_path / 'runs'}",
        "storage.name=ema", "storage.num_to_keep=1", "train.epochs=3",
        "train.evaluate=true", "train.eval_every=1", "train.checkpoint_every=0",
        "train.ema_decay=0.5", f"mlflow.tracking_uri={mlflow_server.uri}",
        "mlflow.experiment=mdir-tests", "mlflow.model_name=mdir-test-ema",
    ]  # fmt: skip
    scores = {1: 4.0, 2: 1.0, 3: 3.0, 4: 2.0, 5: 6.0, 6: 7.0}
    probe = training_fakes.EmaProbe(scores, str(out), str(dump))
    plan = training_fakes.RandomPlan(steps_per_epoch=2)
    factory = training_fakes.FakeFactory(dump_dir=str(dump))
    r = train(load_job_config(TINY, [*common, "train.max_steps=4"]), plan=plan,
              method_factory=factory, evaluator=probe, validate=False)  # fmt: skip
    assert r.error is None, r.error
    assert r.metrics["registered_step"] == 2

    seen = {t: _load_seen(out, t) for t in (1, 2, 3, 4)}
    for t in (2, 3, 4):
        raw = _raw_g(out, t, seen[t])
        for k, v in raw.items():
            torch.testing.assert_close(
                seen[t][k], 0.5 * seen[t - 1][k] + 0.5 * v, rtol=0, atol=1e-6
            )
        assert any(not torch.allclose(seen[t][k], raw[k]) for k in raw)  # EMA ≠ raw

    kept = {
        int(json.loads((d / ckpt.META_FILE).read_text())["step"]): d
        for d in (tmp_path / "runs" / "ema").glob("checkpoint_*")
        if (d / ckpt.META_FILE).exists()
    }
    assert 2 in kept and (kept[2] / EMA_FILE).exists()
    gen2 = load_file(str(kept[2] / ckpt.GENERATOR_FILE))
    raw_net = load_file(str(kept[2] / ckpt.NETWORKS_FILE))
    assert all(torch.equal(gen2[k], seen[2][k]) for k in seen[2])
    assert any(not torch.equal(raw_net[f"G/{k}"], gen2[k]) for k in gen2 if "weight" in k)

    client = MlflowClient(mlflow_server.uri)
    mv = client.get_model_version_by_alias("mdir-test-ema", "candidate")
    assert mv.tags["mdir.generator_weights"] == "ema(0.5)"
    assert mv.tags["mdir.checkpoint_step"] == "2"
    mlflow.set_tracking_uri(mlflow_server.uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/mdir-test-ema/{mv.version}", dst_path=str(tmp_path / "dl")
        )
    )
    reg = load_file(str(next(local.rglob(ckpt.GENERATOR_FILE))))
    assert all(torch.equal(reg[k], seen[2][k]) for k in seen[2])

    r2 = train(load_job_config(TINY, [*common, "train.max_steps=6"]), plan=plan,
               method_factory=factory, evaluator=probe, validate=False)  # fmt: skip
    assert r2.error is None, r2.error
    assert r2.metrics["resumed_from_step"] == 4
    e5 = _load_seen(out, 5)
    raw5 = _raw_g(out, 5, e5)
    for k, v in raw5.items():
        torch.testing.assert_close(e5[k], 0.5 * seen[4][k] + 0.5 * v, rtol=0, atol=1e-6)
