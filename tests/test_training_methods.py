"""Each method trains a few steps with 2 Ray Train workers, logs to MLflow and registers its
generator; the registered model loads by alias (pyfunc without pickle, `load_translator`,
`mdir models translate`) and translates an image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mdir.training.config import load_job_config

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

WIDTHS = {
    "pix2pix": ["method.ngf=8", "method.ndf=8", "method.num_downs=5"],
    "cyclegan": ["method.ngf=8", "method.ndf=8", "method.n_blocks=1"],
    "mduit": [
        "method.ngf=4", "method.ndf=8", "method.n_res_enc=1", "method.n_res_dec=1", "method.ea_hidden=8",
        "method.proj_hidden=16", "method.proj_dim=8", "method.n_neg=4", "method.allow_random_vgg=true",
    ],
}  # fmt: skip
MODE = {"pix2pix": "paired", "cyclegan": "unpaired", "mduit": "single"}
# MDUIT goes through the real Ray Data pipeline (as the demo does); the others use the
# in-memory loader to keep the suite inside its time budget on 2 cores.
LOADER = {"pix2pix": "memory", "cyclegan": "memory", "mduit": "ray_data"}
# CycleGAN also runs the final evaluation (KID on a seeded random Inception: no weights
# here), sharded over both workers: one batch of 2 images each
EVAL = {
    "cyclegan": ["train.evaluate=true", "train.eval_images=4", "eval.metrics=[kid]",
                 "eval.allow_random_features=true", "eval.kid_subset_size=2", "eval.kid_subsets=4",
                 "train.eval_sharded=true", "eval.batch_size=2"],
}  # fmt: skip


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> dict[str, str]:
    from mdir.data.synth import synthesize

    root = tmp_path_factory.mktemp("train-synth")
    out = {"unpaired": str(root / "unpaired"), "paired": str(root / "paired")}
    synthesize(out["unpaired"], places=4, conditions=["day", "night"], size=32, poses_per_place=4)
    synthesize(
        out["paired"],
        places=4,
        conditions=["day", "night"],
        size=32,
        poses_per_place=4,
        paired=("day", "night"),
    )
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("method", ["pix2pix", "cyclegan", "mduit"])
def test_method_trains_registers_and_translates(
    method, synth_data, ray_cluster, mlflow_server, tmp_path
):
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from mdir.registry.generators import load_translator
    from mdir.training.run import train

    data = synth_data["paired" if method == "pix2pix" else "unpaired"]
    cfg = load_job_config(
        TINY,
        [
            f"method.name={method}", f"data.uri={data}", f"data.mode={MODE[method]}", f"train.loader={LOADER[method]}",
            f"storage.path={tmp_path / 'runs'}", f"storage.name={method}-reg", "train.max_steps=2",
            "mlflow.dataset_name=synth-tests", *WIDTHS[method], *EVAL.get(method, []),
        ],
    )  # fmt: skip
    r = train(cfg)
    assert r.error is None, r.error
    assert r.metrics["step"] == 2
    assert r.model_uri == f"models:/mdir-{method}-synth-tests@candidate"
    # sample grid: 2 labelled rows of source | translation | target, 32 px tiles shown at 128
    w, h = Image.open(r.sample_grid).size
    assert w == 3 * (128 + 4) + 4 and 2 * (128 + 4) < h < 3 * (128 + 4)

    client = MlflowClient()
    run = client.get_run(r.mlflow_run_id)
    assert any(k.startswith("loss/") for k in run.data.metrics)
    assert "throughput/images_per_s" in run.data.metrics
    assert run.data.params["method.name"] == method
    if method in EVAL:  # evaluated: the metric and the tag both say the features were random
        assert "eval/kid_legacy_random_inception" in run.data.metrics
        assert run.data.tags["mdir.fid.protocol"] == "legacy"
        assert run.data.tags["mdir.fid.features"] == "random_inception"
        assert run.data.tags["mdir.fid.n_images"] == "4"
        assert run.data.tags["mdir.eval.ranks"] == "2"
        # `mdir eval gan --model` (one process) and the in-training evaluation, sharded over
        # the two workers, see the same images: the same numbers
        from mdir.evaluation.model import evaluate_model

        res, info = evaluate_model(r.model_uri, data, cfg.eval, ["day"], ["night"])
        assert info["images_from"] == "training data plan" and res.num_fake == 4
        assert res.metrics["kid_legacy_random_inception"] == pytest.approx(
            run.data.metrics["eval/kid_legacy_random_inception"], rel=1e-6, abs=1e-12
        )
        assert run.data.tags["mdir.feature_extractor"].startswith("random_inception")
    arts = {a.path for a in client.list_artifacts(r.mlflow_run_id)}
    assert {"samples", "checkpoint", "config", "model_card.md"} <= arts
    grids = {a.path for a in client.list_artifacts(r.mlflow_run_id, "samples")}
    # reference-guided methods also get one source towards every condition (issue 20)
    assert any("conditions_step" in g for g in grids) == (method == "mduit"), grids
    # the run page: the dataset as the run's input and a description with the method
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.source == data
    assert inputs[0].dataset.name.startswith("synth-") and len(inputs[0].dataset.digest) == 16
    assert f"**{method}**" in run.data.tags["mlflow.note.content"]
    mv = client.get_model_version_by_alias(f"mdir-{method}-synth-tests", "candidate")
    assert mv.run_id == r.mlflow_run_id

    x = (torch.rand(2, 3, 32, 32) * 2 - 1).numpy().astype(np.float32)
    inp = {"images": x, "reference": x[::-1].copy()} if method == "mduit" else x
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false").lower() == "false"
    y = mlflow.pyfunc.load_model(r.model_uri).predict(inp)
    assert y.shape == (2, 3, 32, 32) and np.isfinite(y).all() and np.abs(y).max() <= 1.0 + 1e-5
    tr = load_translator(r.model_uri)
    assert tr.method == method and tr.version == str(mv.version)
    y2 = tr.translate(
        torch.from_numpy(x), torch.from_numpy(inp["reference"]) if method == "mduit" else None
    )
    np.testing.assert_allclose(y2.numpy(), y, atol=1e-5)

    if method == "cyclegan":  # the CLI on a real image file
        from typer.testing import CliRunner

        from mdir.cli import app

        src = tmp_path / "in.png"
        Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(
            src
        )
        res = CliRunner().invoke(
            app,
            [
                "models",
                "translate",
                r.model_uri,
                str(src),
                "--out",
                str(tmp_path / "out"),
            ],
        )
        assert res.exit_code == 0, res.output
        # any size: the 48×40 photo comes back 48×40 (no square resize)
        assert Image.open(tmp_path / "out" / "in_translated.png").size == (48, 40)
        res = CliRunner().invoke(app, ["models", "list", "--json"])
        assert (
            res.exit_code == 0
            and "mdir-cyclegan-synth-tests" in res.output
            and "candidate" in res.output
        )
