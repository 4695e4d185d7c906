"""`mdir eval gan --model models:/NAME@ALIAS --data URI`: a registered (tiny, untrained)
CycleGAN translates the validation split; metrics + PRD plot land in the model's run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mdir.metrics.features import WEIGHTS_ENV

pytestmark = pytest.mark.slow


def test_eval_gan_registered_model(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from mdir.cli import app
    from mdir.data.synth import synthesize
    from mdir.methods import build_generator
    from mdir.training.config import TrainJobConfig
    from mdir.training.registry import register_generator

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.set_num_threads(1)
    data = str(tmp_path / "synth")
    synthesize(data, places=3, size=32, seed=0, poses_per_place=3, conditions=["day", "night"])
    cfg = TrainJobConfig.model_validate(
        {
            "method": {"name": "cyclegan", "ngf": 4, "ndf": 4, "n_blocks": 1},
            "data": {"uri": data, "mode": "unpaired", "domain_a": ["day"], "domain_b": ["night"]},
        }
    )
    torch.manual_seed(0)
    w = tmp_path / "gen.safetensors"
    save_file(
        {k: v.contiguous() for k, v in build_generator(cfg.method).state_dict().items()}, str(w)
    )
    client = MlflowClient()
    run = client.create_run(client.create_experiment("metrics-eval-model"))
    uri = register_generator(
        cfg, str(w), run_id=run.info.run_id, alias="candidate", model_name="mdir-test-eval"
    )
    client.set_terminated(run.info.run_id)

    res = CliRunner().invoke(
        app,
        [
            "eval", "gan", "--model", uri, "--data", data, "--source", "day", "--target", "night",
            "--allow-random-features", "--set", "kid_subsets=2", "--set", "prd_num_runs=1",
            "--set", "is_splits=1", "--json",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["split"] == "val" and out["num_fake"] == 3 and out["num_real"] == 3
    assert out["run_id"] == run.info.run_id and out["method"] == "cyclegan"
    assert out["metrics"]["fid_random_inception"] > 0
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics["eval/fid_random_inception"] == pytest.approx(
        out["metrics"]["fid_random_inception"]
    )
    assert logged.data.tags["mdir.feature_extractor"].startswith("random_inception")
    assert "eval/prd.png" in [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    # a model without --source/--target is a clear error, not a crash
    bad = CliRunner().invoke(app, ["eval", "gan", "--model", uri, "--data", data])
    assert bad.exit_code == 2 and "--source" in bad.output
