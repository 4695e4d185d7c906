"""MDUIT's retrieval embedding z_s = H(E_c(I)) is part of the registered model (issue 17):
the registered generator reproduces the training-time embedding, `mdir retrieval eval`
evaluates it like a retrieval model (recall and localization on a posed synthetic set),
and generators registered before H was exported still load and translate."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mdir.methods import METHODS
from mdir.methods.base import EpochContext
from mdir.methods.specs import parse_method_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "mduit_demo.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo's MDUIT config, 4 training steps on synthetic posed data (H's BatchNorm
    running statistics move, so eval-mode embedding is not the init's)."""
    from mdir.data.store import ShardImageStore
    from mdir.data.synth import synthesize

    job = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg = parse_method_config(job["method"])
    uri = str(tmp_path_factory.mktemp("mduit_emb") / "synth")
    synthesize(uri, places=8, size=32, seed=0, poses_per_place=4)
    store = ShardImageStore(uri, "train", 32)
    torch.manual_seed(0)
    m = METHODS["mduit"](cfg)
    m.on_epoch_start(
        0, EpochContext(epoch=0, num_epochs=1, device=torch.device("cpu"), store=store)
    )
    rng = np.random.default_rng(0)
    for _ in range(4):
        ids = rng.choice(store.ids(), int(job["train"]["batch_size"]), replace=False)
        m.train_step({"A": store.load(ids.tolist()), "A_id": torch.from_numpy(ids)})
    return {"method": m, "cfg": cfg, "uri": uri, "store": store}


def _register(trained, tmp_path) -> str:
    from mlflow import MlflowClient

    from mdir.registry.generators import register_generator
    from mdir.training import checkpoint as ckpt
    from mdir.training.config import TrainJobConfig

    job = TrainJobConfig.model_validate(
        {
            "method": trained["cfg"].model_dump(mode="json"),
            "data": {"uri": trained["uri"], "mode": "single", "image_size": 32},
        }
    )
    w = tmp_path / "g.safetensors"
    ckpt.save_module(trained["method"].generator(), w)
    client = MlflowClient()
    exp = client.get_experiment_by_name("mdir-tests-embed") or client.get_experiment(
        client.create_experiment("mdir-tests-embed")
    )
    run = client.create_run(exp.experiment_id)
    uri = register_generator(
        job, str(w), run_id=run.info.run_id, model_name=f"mdir-emb-{uuid.uuid4().hex[:6]}"
    )
    client.set_terminated(run.info.run_id)
    return uri


def test_registered_embedding_reproduces_training_and_evaluates(mlflow_server, trained, tmp_path):
    from mdir.retrieval.config import RetrievalJobConfig
    from mdir.retrieval.evaluate import evaluate_registered
    from mdir.retrieval.registry import GeneratorEmbedding, load_descriptor_model

    uri = _register(trained, tmp_path)
    net, info = load_descriptor_model(uri)
    assert isinstance(net, GeneratorEmbedding) and "z_s" in info["kind"]
    x = trained["store"].load(trained["store"].ids()[:6].tolist())
    z_train = trained["method"].embed(x)  # what the training-time pairing embeds with
    with torch.no_grad():
        z_reg = net(x)
    assert z_reg.shape == z_train.shape and z_reg.shape[1] == trained["cfg"].proj_dim
    torch.testing.assert_close(z_reg, z_train, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        z_reg.norm(dim=1), torch.ones(6), atol=1e-3, rtol=0
    )  # l2n has an eps

    cfg = RetrievalJobConfig.model_validate(
        {
            "model": {"arch": "tiny", "width": 8, "allow_random": True},
            "data": {"uri": trained["uri"], "train_max_side": 32, "test_max_side": 32},
            "eval": {"split": "test", "database_split": "train"},
        }
    )
    doc = evaluate_registered(uri, trained["uri"], cfg)
    m = doc["metrics"]
    assert doc["model_version"] == info["version"]
    assert m["eval/queries"] > 0 and 0.0 <= m["recall_at_1/all"] <= 1.0
    assert any(k.startswith("loc/") for k in m), sorted(m)  # localization by retrieval


def test_generator_without_head_loads_and_says_so():
    from mdir.methods.mduit import build_mduit_translator

    job = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg = parse_method_config(job["method"])
    old = {
        k: v for k, v in build_mduit_translator(cfg).state_dict().items() if not k.startswith("H.")
    }
    g = build_mduit_translator(cfg)
    g.load_state_dict(old)  # strict: a pre-H registered model still loads
    assert g.H is None
    with pytest.raises(ValueError, match="without its projection head H"):
        g.embed(torch.zeros(1, 3, 32, 32))
