"""MLflow "models from code" pyfunc for a registered mdir generator (no pickle anywhere).

Logged by `mdir.registry.generators.register_generator` with ``python_model=<this file>``
and two artifacts: ``weights`` (the generator state dict as safetensors) and ``config``
(the method config as JSON). The model also carries mdir's own code
(``code_paths``: the logged model's ``code/mdir``), which MLflow puts first on
``sys.path`` before this file runs, so a served model imports that copy, not whatever
``mdir`` a serving environment may have (the PyPI ``mdir`` is an unrelated project).
Loading rebuilds the network with `mdir.methods.build_generator`; prediction translates
with `mdir.methods.anysize.translate_any_size` around `mdir.methods.translate_with`
(tiles share pooled norm statistics: `mdir.methods.tile_norm`).

Input: float32 images [B, 3, H, W] in [-1, 1] of any H, W (padded to the network's stride
multiple and cropped back; tiled above the ``max_pixels`` param); a method that needs a
reference (MDUIT) takes a dict ``{"images": ..., "reference": ...}`` (reference =
target-appearance images [B or 1, 3, h, w], any size). Output: translated float32
[B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

import json
import sys
from typing import Any

import mlflow
import numpy as np


class MdirGenerator(mlflow.pyfunc.PythonModel):
    """Rebuilds the generator from (config JSON, safetensors weights) at load time."""

    def load_context(self, context: Any) -> None:
        import torch
        from safetensors.torch import load_file

        import mdir
        from mdir.methods import build_generator
        from mdir.methods.specs import parse_method_config, spec_of

        # which mdir this process runs (the model's code/ copy when served): one line, no secrets
        print(f"mdir pyfunc: mdir code from {mdir.__file__}", file=sys.stderr, flush=True)
        with open(context.artifacts["config"]) as f:
            self.cfg = parse_method_config(json.load(f))
        self.multiple = spec_of(self.cfg).size_multiple(self.cfg)
        self.gen = build_generator(self.cfg)
        self.gen.load_state_dict(load_file(context.artifacts["weights"]))
        self.gen.eval()
        self.torch = torch

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - pyfunc contract
        from mdir.methods import translate_with
        from mdir.methods.anysize import DEFAULT_MAX_PIXELS
        from mdir.methods.tile_norm import translate_shared_norms

        torch = self.torch
        max_pixels = int((params or {}).get("max_pixels") or DEFAULT_MAX_PIXELS)
        reference = None
        if isinstance(model_input, dict):
            images = model_input["images"]
            reference = model_input.get("reference")
        else:
            images = model_input
        images = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if reference is not None:
            reference = torch.as_tensor(np.asarray(reference, dtype=np.float32))
        if images.dim() != 4:
            raise ValueError(f"images: expected [B, 3, H, W], got {tuple(images.shape)}")
        with torch.no_grad():
            out = translate_shared_norms(
                self.gen,
                lambda x: translate_with(self.gen, self.cfg, x, reference),
                images,
                multiple=self.multiple,
                max_pixels=max_pixels,
            )
        return out.float().cpu().numpy()


mlflow.models.set_model(MdirGenerator())
