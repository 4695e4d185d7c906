"""Retrieval job end to end on a real Ray cluster and a real MLflow server.

* a generator registered in MLflow is resolved by alias, its version recorded in the run,
  and it is applied with the configured probability (counted);
* descriptors are L2-normalised and the same on 1 and 2 workers (same seed, same steps,
  same augmentation decisions);
* the registered retrieval network evaluates through ``mdir retrieval eval --json``;
* an unregistered generator alias fails before any training or MLflow run.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mdir.data.synth import synthesize

    out = tmp_path_factory.mktemp("retr") / "rsynth"
    synthesize(str(out), places=8, size=32, seed=0, poses_per_place=4)
    return str(out)


def _register_tiny_cyclegan(
    synth: str, tmp_path, name: str, alias: str = "champion"
) -> tuple[str, str]:
    """A randomly initialised, narrow CycleGAN generator registered like a trained one."""
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from mdir.methods import build_generator
    from mdir.registry.generators import register_generator
    from mdir.training.config import TrainJobConfig

    cfg = TrainJobConfig.model_validate(
        {
            "method": {"name": "cyclegan", "ngf": 4, "ndf": 4, "n_blocks": 1},
            "data": {"uri": synth, "mode": "unpaired", "domain_a": ["day"], "domain_b": ["night"]},
        }
    )
    torch.manual_seed(0)
    gen = build_generator(cfg.method)
    w = tmp_path / "gen.safetensors"
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(w))
    client = MlflowClient()
    exp = client.get_experiment_by_name("retrieval-test-gan")
    exp_id = exp.experiment_id if exp else client.create_experiment("retrieval-test-gan")
    run = client.create_run(exp_id)
    uri = register_generator(cfg, str(w), run_id=run.info.run_id, alias=alias, model_name=name)
    client.set_terminated(run.info.run_id)
    version = client.get_model_version_by_alias(name, alias).version
    return uri, str(version)


def _cfg(synth: str, tmp_path, **over):
    from mdir.retrieval.config import RetrievalJobConfig

    doc = {
        "model": {"arch": "tiny", "width": 8, "allow_random": True},
        "data": {
            "uri": synth,
            "name": "rsynth",
            "train_max_side": 32,
            "test_max_side": 32,
            "train_conditions": ["day", "dusk", "snow"],
        },
        "mining": {"query_size": 8, "pool_size": 40, "batch_size": 64},
        "optim": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 2, "lr": 1e-3},
        "augment": {"probability": 0.5, "pad_multiple": 64},
        "eval": {"split": "test", "database_split": "train", "every": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        "storage": {"path": str(tmp_path / "ray")},
        "mlflow": {"experiment": "retrieval-test"},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        doc[sec][key] = v
    return RetrievalJobConfig.model_validate(doc)


def test_missing_generator_alias_fails_before_training(synth, tmp_path, mlflow_server):
    import mlflow
    from mlflow import MlflowClient

    from mdir.retrieval.train import LaunchError, run_training

    # another experiment active in this process (as a user's notebook or an earlier test
    # leaves it) must not stop registering into a run of a different experiment
    mlflow.set_experiment("some-other-experiment")
    uri, _ = _register_tiny_cyclegan(
        synth, tmp_path, "mdir-cyclegan-rsynth-noalias", alias="candidate"
    )
    client = MlflowClient()
    exp = client.get_experiment_by_name("retrieval-test-fail")
    before = len(client.search_runs([exp.experiment_id])) if exp else 0
    with pytest.raises(LaunchError, match=r"alias 'champion'.*known aliases: \['candidate'\]"):
        run_training(
            _cfg(
                synth,
                tmp_path,
                augment__generator="models:/mdir-cyclegan-rsynth-noalias@champion",
                mlflow__experiment="retrieval-test-fail",
            )
        )
    with pytest.raises(
        LaunchError, match="registered model 'mdir-cyclegan-nothere' does not exist"
    ):
        run_training(
            _cfg(
                synth,
                tmp_path,
                augment__generator="models:/mdir-cyclegan-nothere@champion",
                mlflow__experiment="retrieval-test-fail",
            )
        )
    exp = client.get_experiment_by_name("retrieval-test-fail")
    after = len(client.search_runs([exp.experiment_id])) if exp else 0
    assert after == before  # nothing started: no MLflow run, no Ray Train run


def test_gan_augmented_training_one_vs_two_workers(synth, tmp_path, ray_cluster, mlflow_server):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from mdir.cli import app
    from mdir.retrieval.train import run_training

    gen_uri, gen_version = _register_tiny_cyclegan(synth, tmp_path, "mdir-cyclegan-rsynth")
    # the single-process reference (same loop, no Ray) and 2 Ray Train workers (DDP, gloo)
    r1 = run_training(
        _cfg(synth, tmp_path, augment__generator=gen_uri), return_descriptors=True, local=True
    )
    cfg2 = _cfg(
        synth, tmp_path, augment__generator=gen_uri, scaling__num_workers=2, storage__name="retr-w2"
    )
    r2 = run_training(cfg2, return_descriptors=True)

    v1, v2 = np.asarray(r1.descriptors["vecs"]), np.asarray(r2.descriptors["vecs"])
    assert np.allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v1, v2, atol=1e-4), np.abs(v1 - v2).max()
    assert r1.descriptors["rows"] == r2.descriptors["rows"]

    # the generator: resolved by alias, exact version recorded, applied with p = 0.5 (counted)
    assert r1.generator == {"uri": gen_uri, "name": "mdir-cyclegan-rsynth", "version": gen_version}
    seen, applied = r1.augment["seen"], r1.augment["applied"]
    assert seen == 2 * 2 * 7  # steps × tuples × images per tuple
    assert 0 < applied < seen and applied == r2.augment["applied"]
    run = MlflowClient().get_run(r1.run_id)
    assert run.data.tags["augment.generator_version"] == gen_version
    assert run.data.params["augment.generator_version"] == gen_version
    assert run.data.metrics["augment/applied"] == applied
    assert "recall_at_1/night" in run.data.metrics and "loss" in run.data.metrics

    # registered network → `mdir retrieval eval --json`
    assert r2.model_uri == "models:/mdir-retrieval-rsynth@candidate"
    res = CliRunner().invoke(
        app,
        [
            "retrieval",
            "eval",
            "--model",
            r2.model_uri,
            "--data",
            synth,
            "--max-side",
            "32",
            "--set",
            "eval.database_split=train",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    json_lines = [ln for ln in res.output.splitlines() if ln.startswith("{")]
    assert json_lines, res.output
    doc = json.loads(json_lines[-1])
    assert doc["model_version"] is not None
    # same network, same data → the job's final metrics
    assert doc["metrics"]["recall_at_1/night"] == pytest.approx(r2.metrics["recall_at_1/night"])


def test_compare_over_seeds_same_plan_and_mean_std(synth, tmp_path, mlflow_server):
    """`mdir retrieval compare`: per seed both arms follow the recorded plan (same seed, same
    drawn queries/pools, same steps), only the augmented arm translates (counted), and the
    table is the mean ± sample std of the per-seed values."""
    import yaml
    from typer.testing import CliRunner

    from mdir.cli import app

    gen_uri, _ = _register_tiny_cyclegan(synth, tmp_path, "mdir-cyclegan-rsynth-cmp", "candidate")
    cfg = _cfg(synth, tmp_path, augment__generator=gen_uri, mlflow__experiment="retrieval-cmp")
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        app,
        [
            "retrieval",
            "compare",
            "--config",
            str(path),
            "--seeds",
            "3,4",
            "--local",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "compare.json").read_text())
    draws = []
    for d, seed in zip(doc["per_seed"], (3, 4), strict=True):
        base, gan = d["plan"]["baseline"], d["plan"]["gan"]
        assert d["seed"] == seed and d["same_plan"] and base == gan and len(base) == 1
        assert base[0]["seed"] == seed and base[0]["steps"] == 2
        draws.append(base[0]["draw"])
        assert d["augment"]["applied"] > 0 and d["augment"]["seen"] >= d["augment"]["applied"]
        assert "augment/applied" not in d["baseline"]["metrics"]
    assert draws[0] != draws[1]  # the seed changes the plan; the arm does not
    rows = {r["metric"]: r for r in doc["summary"]["rows"]}
    r = rows["recall_at_1/night"]
    vals = [d["gan"]["metrics"]["recall_at_1/night"] for d in doc["per_seed"]]
    assert r["gan"][0] == pytest.approx(np.mean(vals))
    assert r["gan"][1] == pytest.approx(np.std(vals, ddof=1))
    assert "map/night" in rows and "map/day" in rows
    md = (out / "compare.md").read_text()
    assert "night recall@1" in md and "±" in md and "Verdict" in md
    assert (out / "recall.png").stat().st_size > 1000
