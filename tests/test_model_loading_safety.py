"""Loading a registered generator through mdir's default path runs no code from the artifact
store: anyone who can write to the MLflow server could otherwise execute code wherever a model
is loaded (the pyfunc flavour imports the model's ``python_model`` file from the artifacts)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

TINY = str(Path(__file__).parents[1] / "jobs" / "configs" / "test_tiny.yaml")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_load_path_ignores_tampered_model_code(tmp_path: Path, mlflow_server):
    import mlflow
    from mlflow.tracking import MlflowClient
    from safetensors.torch import save_file

    from mdir.methods import build_generator
    from mdir.registry.generators import load_translator, register_generator
    from mdir.training.config import load_job_config

    name = f"mdir-safety-{uuid.uuid4().hex[:6]}"
    cfg = load_job_config(
        TINY, ["method.name=cyclegan", "method.ngf=4", "method.ndf=4", "method.n_blocks=1"]
    )
    torch.manual_seed(0)
    gen = build_generator(cfg.method).eval()
    weights = tmp_path / "g.safetensors"
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(weights))
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("mdir-tests") or client.get_experiment(
        client.create_experiment("mdir-tests")
    )
    run = client.create_run(exp.experiment_id)
    uri = register_generator(cfg, str(weights), run_id=run.info.run_id, model_name=name)

    # an attacker with write access to the artifact store rewrites the model's code file
    marker = tmp_path / "pwned"
    code_files = [
        p
        for p in Path(mlflow_server.artifacts).rglob("*.py")
        if "class MdirGenerator" in p.read_text(errors="ignore")
    ]
    assert code_files, "the logged model's code file was not found in the artifact store"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    for p in code_files:
        head, sep, rest = p.read_text().partition("from __future__ import annotations\n")
        p.write_text(head + sep + payload + rest if sep else payload + head)

    tr = load_translator(uri)  # mdir's default: weights + config, code from the installed package
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(tr.translate(x), gen(x), atol=1e-6)
    assert not marker.exists(), "load_translator executed code from the artifact store"

    # control: the pyfunc flavour does import that file (why the README calls it trusting)
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.pyfunc.load_model(uri).predict(np.zeros((1, 3, 32, 32), np.float32))
    assert marker.exists()
