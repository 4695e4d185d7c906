"""MLflow "models from code" pyfunc for a registered mdir generator (no pickle anywhere).

Logged by `mdir.registry.generators.register_generator` with ``python_model=<this file>``
and two artifacts: ``weights`` (the generator state dict as safetensors) and ``config``
(the method config as JSON). Loading rebuilds the network with
`mdir.methods.build_generator` and translates with `mdir.methods.translate_with`.

Input: float32 images [B, 3, H, W] in [-1, 1]; a method that needs a reference (MDUIT) takes a dict
``{"images": ..., "reference": ...}`` (reference = target-appearance images, same
shape). Output: translated float32 [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np


class MdirGenerator(mlflow.pyfunc.PythonModel):
    """Rebuilds the generator from (config JSON, safetensors weights) at load time."""

    def load_context(self, context: Any) -> None:
        import torch
        from safetensors.torch import load_file

        from mdir.methods import build_generator
        from mdir.methods.specs import parse_method_config

        with open(context.artifacts["config"]) as f:
            self.cfg = parse_method_config(json.load(f))
        self.gen = build_generator(self.cfg)
        self.gen.load_state_dict(load_file(context.artifacts["weights"]))
        self.gen.eval()
        self.torch = torch

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - pyfunc contract
        from mdir.methods import translate_with

        torch = self.torch
        reference = None
        if isinstance(model_input, dict):
            images = model_input["images"]
            reference = model_input.get("reference")
        else:
            images = model_input
        images = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if reference is not None:
            reference = torch.as_tensor(np.asarray(reference, dtype=np.float32))
        with torch.no_grad():
            out = translate_with(self.gen, self.cfg, images, reference)
        return out.float().cpu().numpy()


mlflow.models.set_model(MdirGenerator())
