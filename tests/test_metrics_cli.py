"""`mdir eval gan` end to end: folders of image files (a corrupt one skipped and counted),
and `--model models:/NAME@ALIAS --data URI` where a registered (tiny, untrained) CycleGAN
translates the validation split; metrics, the feature-extractor tag and the PRD plot land
in the MLflow run, `--json` prints one object."""

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
    from mdir.registry.generators import register_generator
    from mdir.training.config import TrainJobConfig

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
    assert out["metrics"]["fid_legacy_random_inception"] > 0
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics["eval/fid_legacy_random_inception"] == pytest.approx(
        out["metrics"]["fid_legacy_random_inception"]
    )
    assert logged.data.tags["mdir.feature_extractor"].startswith("random_inception")
    # 3 images: PRD is omitted as meaningless (no curve, no plot), and says why
    assert "eval/prd.png" not in [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert any(w.startswith("PRD omitted") for w in out["warnings"])
    assert logged.data.tags["mdir.fid.protocol"] == "legacy"
    assert logged.data.tags["mdir.fid.features"] == "random_inception"
    assert logged.data.tags["mdir.fid.n_images"] == "3"
    # a model without --source/--target is a clear error, not a crash
    bad = CliRunner().invoke(app, ["eval", "gan", "--model", uri, "--data", data])
    assert bad.exit_code == 2 and "--source" in bad.output


def test_eval_gan_cli_folders_and_mlflow(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import numpy as np
    from PIL import Image

    from mdir.cli import app

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    for name in ("real", "fake"):
        d = tmp_path / name
        d.mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "fake" / "broken.png").write_bytes(b"not a png")  # skipped and counted
    mlflow.set_experiment("metrics-cli-test")
    with mlflow.start_run() as run:
        run_id = run.info.run_id
    res = CliRunner().invoke(
        app,
        [
            "eval", "gan", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
            "--allow-random-features", "--batch-size", "4",
            "--set", "kid_subsets=3", "--set", "prd_num_runs=1", "--set", "is_splits=2",
            "--metrics", "fid,kid,is,prd,ssim", "--mlflow-run-id", run_id, "--json",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["feature_extractor"] == "random_inception"
    assert out["num_real"] == 4 and out["num_fake"] == 4
    assert out["skipped_fake"] == {"undecodable:UnidentifiedImageError": 1}
    m = out["metrics"]
    assert (
        "fid" not in m
        and "fid_legacy" not in m
        and m["fid_legacy_random_inception"] > 0
        and 0 <= m["ssim"] < 0.5
    )
    logged = mlflow.get_run(run_id)
    assert logged.data.tags["mdir.feature_extractor"].startswith("random_inception")
    assert logged.data.metrics["eval/fid_legacy_random_inception"] == pytest.approx(
        m["fid_legacy_random_inception"]
    )
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "eval")]
    assert "eval/prd.png" not in arts and any(w.startswith("PRD omitted") for w in out["warnings"])
    assert logged.data.tags["mdir.fid.n_images"] == "4"
    # a config error names the field and exits with 2
    bad = CliRunner().invoke(
        app, ["eval", "gan", "--real", "x", "--fake", "y", "--set", "kid_subsets=0"]
    )
    assert bad.exit_code == 2 and "kid_subsets" in bad.output
