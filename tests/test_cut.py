"""CUT / FastCUT (`mdir.methods.cut`, `mdir.models.patchnce`): the PatchNCE loss by hand,
gradients into G and the MLP head, a single-process run that lowers the NCE loss, and the
end-to-end path (Ray Train with 2 workers → registry → translation → `mdir models summary`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mdir.methods.cut_config import CUTConfig

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")
SMALL = {
    "ngf": 8,
    "ndf": 8,
    "n_blocks": 3,
    "nce_layers": (0, 4, 8, 12),
    "num_patches": 64,
    "netf_nc": 32,
}


def test_patch_nce_loss_by_hand():
    from mdir.models.patchnce import patch_nce_loss

    # one image, three patches, 2-d unit features; τ = 0.5
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # q·k rows: [1, .6, 0], [0, .8, 1], [.6, 1, .8]; positive = the diagonal
    dots = [[1.0, 0.6, 0.0], [0.0, 0.8, 1.0], [0.6, 1.0, 0.8]]
    want = [
        -math.log(math.exp(d[i] / 0.5) / sum(math.exp(v / 0.5) for v in d))
        for i, d in enumerate(dots)
    ]
    # first patch by hand: −log(e² / (e² + e^1.2 + e⁰)) = log(1 + e^−0.8 + e^−2) = 0.46037…
    assert want[0] == pytest.approx(0.46037, abs=1e-4)
    got = patch_nce_loss(q, k, batch=1, tau=0.5)
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # two images: negatives only from the same image
    two = patch_nce_loss(torch.cat([q, q]), torch.cat([k, k.flip(0)]), batch=2, tau=0.5)
    np.testing.assert_allclose(two[:3].numpy(), want, rtol=1e-5)


def test_config_defaults_and_fastcut():
    c = CUTConfig()
    assert (c.lambda_nce, c.nce_idt, c.num_patches, c.nce_tau) == (1.0, True, 256, 0.07)
    assert c.nce_layers == (0, 4, 8, 12, 16) and c.gan_loss == "lsgan"
    f = CUTConfig(variant="fastcut")
    assert (f.lambda_nce, f.nce_idt, f.flip_equivariance) == (10.0, False, True)
    assert CUTConfig(variant="fastcut", lambda_nce=3).lambda_nce == 3  # explicit wins
    from mdir.training.config import load_job_config

    job = str(Path(__file__).parents[1] / "jobs" / "configs" / "cut.yaml")
    assert load_job_config(job, method="cut").method == CUTConfig(variant="cut")
    fast = load_job_config(job, ["method.variant=fastcut"], method="cut").method
    assert (fast.lambda_nce, fast.nce_idt, fast.decay_start_frac) == (10.0, False, 0.75)


def test_head_is_built_up_front_from_channel_counts():
    from mdir.methods.cut import CUT

    m = CUT(CUTConfig())
    assert m.networks["F"].channels == [3, 128, 256, 256, 256]
    opt = m.configure_optimizers()
    in_g = {id(p) for g in opt["G"].param_groups for p in g["params"]}
    assert all(id(p) in in_g for p in m.networks["F"].parameters())


def test_gradients_reach_generator_and_head():
    from mdir.methods.cut import CUT

    torch.manual_seed(0)
    m = CUT(CUTConfig(**SMALL))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    nce = m.nce_per_image(x, m.networks["G"](x))
    assert nce.shape == (2,) and torch.isfinite(nce).all()
    nce.mean().backward()
    g_enc = m.networks["G"].model[1].weight.grad  # first conv: reached through ẑ and G(x)
    g_dec = m.networks["G"].model[-2].weight.grad  # last conv: reached through G(x) only
    assert g_enc is not None and g_enc.abs().sum() > 0
    assert g_dec is not None and g_dec.abs().sum() > 0
    for p in m.networks["F"].parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # one full step moves G, F and D
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in m.networks.items()}
    logs = m.train_step({"A": x, "B": torch.rand(2, 3, 32, 32) * 2 - 1})
    assert {"G_GAN", "NCE", "NCE_X", "NCE_Y", "D"} <= set(logs)
    for k, n in m.networks.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], n.parameters(), strict=True)), k


def _unpaired(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Domain A: smooth random colour fields; domain B: the same kind, darker and bluish."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2 * n, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    a = img[:n] * 2 - 1
    b = (img[n:] * torch.tensor([0.3, 0.4, 0.9]).view(1, 3, 1, 1)) * 2 - 1
    return a, b


@pytest.mark.timeout(900)
def test_single_process_training_lowers_nce():
    from mdir.methods.cut import CUT

    torch.manual_seed(0)
    torch.set_num_threads(1)
    m = CUT(CUTConfig(**SMALL, lr=1e-3))
    a, b = _unpaired(64, 32, seed=1)
    rng = np.random.default_rng(0)
    nce = []
    for _ in range(300):
        i, j = rng.integers(0, 64, 4), rng.integers(0, 64, 4)
        nce.append(m.train_step({"A": a[i], "B": b[j]})["NCE"])
    first, last = np.mean(nce[:20]), np.mean(nce[-20:])
    assert np.isfinite(nce).all()
    assert last < 0.6 * first, (first, last)


def test_models_summary_cut():
    from typer.testing import CliRunner

    from mdir.cli import app

    res = CliRunner().invoke(app, ["models", "summary", "cut", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["method"] == "cut" and set(out["networks"]) == {"G", "D", "F"}
    assert out["networks"]["G"]["output_shape"] == [1, 3, 256, 256]
    assert out["networks"]["F"]["output_shape"] == [5, 256, 256]  # layers, patches, width
    # F: five 2-layer MLPs from (3, 128, 256, 256, 256) channels to 256
    want_f = sum(c * 256 + 256 + 256 * 256 + 256 for c in (3, 128, 256, 256, 256))
    assert out["networks"]["F"]["params"] == want_f


def test_bench_step_cut_smoke(tmp_path):
    from typer.testing import CliRunner

    from mdir.cli import app

    out = tmp_path / "step.json"
    args = ["bench", "step", "cut", "--lite", "--size", "32", "--steps", "1", "--rounds", "1",
            "--warmup", "1", "--variants", "eager", "--threads", "1", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["method"] == "cut" and data["variants"]["eager"]["steps_per_s"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cut_trains_registers_translates(ray_cluster, mlflow_server, tmp_path_factory, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from mdir.data.synth import synthesize
    from mdir.registry.generators import load_translator
    from mdir.training.config import load_job_config
    from mdir.training.run import train

    data = str(tmp_path_factory.mktemp("cut-synth") / "unpaired")
    synthesize(data, places=4, conditions=["day", "night"], size=32, poses_per_place=4)
    cfg = load_job_config(
        TINY,
        [
            f"data.uri={data}", "data.mode=unpaired", "train.loader=memory",
            f"storage.path={tmp_path / 'runs'}", "storage.name=cut-reg", "train.max_steps=2",
            "mlflow.dataset_name=synth-tests", "method.ngf=8", "method.ndf=8", "method.n_blocks=3",
            "method.nce_layers=[0,4,8,12]", "method.num_patches=16", "method.netf_nc=16",
        ],
        method="cut",
    )  # fmt: skip
    assert cfg.scaling.num_workers == 2
    r = train(cfg)
    assert r.error is None, r.error
    assert r.metrics["step"] == 2
    assert r.model_uri == "models:/mdir-cut-synth-tests@candidate"
    run = MlflowClient().get_run(r.mlflow_run_id)
    assert "loss/NCE" in run.data.metrics or any("NCE" in k for k in run.data.metrics)
    assert run.data.params["method.name"] == "cut"

    x = (torch.rand(2, 3, 32, 32) * 2 - 1).numpy().astype(np.float32)
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false").lower() == "false"
    y = mlflow.pyfunc.load_model(r.model_uri).predict(x)
    assert y.shape == (2, 3, 32, 32) and np.isfinite(y).all()
    tr = load_translator(r.model_uri)
    assert tr.method == "cut" and not tr.needs_reference
    np.testing.assert_allclose(tr.translate(torch.from_numpy(x)).numpy(), y, atol=1e-5)
