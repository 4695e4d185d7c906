"""Register tiny, untrained generators in the test MLflow server (export, data translate)."""

from __future__ import annotations

import uuid
from pathlib import Path

import torch

#: method config overrides: narrow nets whose generators take 256×256 and 512×384 alike
TINY_METHODS: dict[str, dict] = {
    "pix2pix": {"name": "pix2pix", "ngf": 4, "ndf": 4, "num_downs": 7},
    "cyclegan": {"name": "cyclegan", "ngf": 4, "ndf": 4, "n_blocks": 1},
    "mduit": {
        "name": "mduit", "ngf": 8, "ndf": 8, "n_res_enc": 1, "n_res_dec": 1, "ea_hidden": 16,
        "proj_hidden": 16, "proj_dim": 16, "allow_random_vgg": True,
    },
}  # fmt: skip

_MODES = {"pix2pix": "paired", "cyclegan": "unpaired", "mduit": "single"}


def register_tiny(method: str, tmp_path: Path, *, seed: int = 0, name: str | None = None) -> str:
    """Build `method`'s tiny generator with `seed`, register it; returns models:/NAME@candidate.

    MDUIT's VGG is random (``allow_random_vgg``; the test's torch hub dir is empty)."""
    from mlflow import MlflowClient
    from safetensors.torch import save_file

    from mdir.methods import build_generator
    from mdir.registry.generators import register_generator
    from mdir.training.config import TrainJobConfig

    cfg = TrainJobConfig.model_validate(
        {
            "method": TINY_METHODS[method],
            "data": {"uri": str(tmp_path / "unused"), "mode": _MODES[method]},
        }
    )
    torch.manual_seed(seed)
    gen = build_generator(cfg.method)
    w = tmp_path / f"{method}-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(w))
    client = MlflowClient()
    exp = client.get_experiment_by_name("mdir-tests") or client.get_experiment(
        client.create_experiment("mdir-tests")
    )
    run = client.create_run(exp.experiment_id)
    uri = register_generator(
        cfg,
        str(w),
        run_id=run.info.run_id,
        alias="candidate",
        model_name=name or f"mdir-tiny-{method}-{uuid.uuid4().hex[:6]}",
    )
    client.set_terminated(run.info.run_id)
    return uri
