"""pix2pix's test-time mode (``method.test_mode``): the reference translates with dropout on
and BatchNorm batch statistics (junyanz test.py without --eval); ``eval`` is deterministic.
The option travels with the registered model and `translate_with` honours it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from mdir.methods import METHODS, build_generator, translate_with
from mdir.methods.config import CycleGANConfig, Pix2PixConfig

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


def _cfg(**kw) -> Pix2PixConfig:
    return Pix2PixConfig(**{"ngf": 8, "ndf": 8, "num_downs": 5, **kw})


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# the U-Net's dropout sits in its num_downs − 5 innermost ngf·8 blocks: 6 down-samplings
# (64 px) give one, as unet_256 (8) gives three
DROPOUT = {"num_downs": 6}


def _bn_buffers(gen: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in gen.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


def test_default_is_the_reference_behaviour():
    assert Pix2PixConfig().test_mode == "train"
    assert not hasattr(CycleGANConfig(), "test_mode")  # other methods translate in eval mode


def test_dropout_on_makes_two_translations_differ_off_makes_them_equal():
    x = _images(2, 0, 64)
    for mode, differ in (("train", True), ("eval", False)):
        cfg = _cfg(test_mode=mode, dropout=True, **DROPOUT)
        torch.manual_seed(0)
        gen = build_generator(cfg)
        before = _bn_buffers(gen)
        a, b = translate_with(gen, cfg, x), translate_with(gen, cfg, x)
        assert (not torch.allclose(a, b, atol=1e-6)) == differ, mode
        # translating never folds test batches into the running statistics
        after = _bn_buffers(gen)
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert gen.training  # the caller's mode is restored


def test_batch_statistics_make_an_image_depend_on_its_batch():
    """Without dropout the train mode is still the reference's: BatchNorm normalises with the
    batch's mean and variance, so x0 translates differently next to x1 than next to x2."""
    x0, x1, x2 = _images(1, 1), _images(1, 2), _images(1, 3)
    for mode, differ in (("train", True), ("eval", False)):
        cfg = _cfg(test_mode=mode, dropout=False)
        torch.manual_seed(0)
        gen = build_generator(cfg)
        first = translate_with(gen, cfg, torch.cat([x0, x1]))[0]
        second = translate_with(gen, cfg, torch.cat([x0, x2]))[0]
        assert (not torch.allclose(first, second, atol=1e-6)) == differ, mode


def test_method_translate_follows_the_option():
    """Samples and evaluation during training see what the registered model will do."""
    x = _images(2, 4, 64)
    for mode, differ in (("train", True), ("eval", False)):
        torch.manual_seed(0)
        m = METHODS["pix2pix"](_cfg(test_mode=mode, **DROPOUT))
        a, b = m.translate(x), m.translate(x)
        assert (not torch.allclose(a, b, atol=1e-6)) == differ, mode
        assert all(n.training for n in m.networks.values())


@pytest.mark.timeout(600)
def test_registered_model_records_and_honours_the_option(tmp_path, mlflow_server):
    import mlflow
    from mlflow.tracking import MlflowClient
    from safetensors.torch import save_file

    from mdir.registry.generators import load_translator, register_generator
    from mdir.training.config import load_job_config

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("mdir-tests") or client.get_experiment(
        client.create_experiment("mdir-tests")
    )
    x = _images(2, 5, 64)
    for mode in ("eval", "train"):
        cfg = load_job_config(
            TINY,
            ["method.name=pix2pix", "method.ngf=8", "method.ndf=8", "method.num_downs=6",
             "data.image_size=64", f"method.test_mode={mode}"],
        )  # fmt: skip
        torch.manual_seed(0)
        gen = build_generator(cfg.method)
        weights = tmp_path / f"g-{mode}.safetensors"
        save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(weights))
        run = client.create_run(exp.experiment_id)
        name = f"mdir-testmode-{uuid.uuid4().hex[:6]}"
        uri = register_generator(cfg, str(weights), run_id=run.info.run_id, model_name=name)
        cfg_file = client.download_artifacts(run.info.run_id, "generator/artifacts")
        recorded = json.loads((Path(cfg_file) / "method_config.json").read_text())
        assert recorded["test_mode"] == mode
        tr = load_translator(uri)
        assert tr.method_config.test_mode == mode
        a, b = tr.translate(x), tr.translate(x)
        mlflow.set_tracking_uri(mlflow_server.uri)
        pyfunc = mlflow.pyfunc.load_model(uri)
        p, q = pyfunc.predict(x.numpy()), pyfunc.predict(x.numpy())
        if mode == "eval":
            assert torch.allclose(a, b) and np.allclose(p, q)
            assert np.allclose(p, a.numpy(), atol=1e-5)  # both loaders agree
        else:
            assert not torch.allclose(a, b) and not np.allclose(p, q)
