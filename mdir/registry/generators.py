"""Register trained generators in MLflow and load them back, without pickle.

`register_generator` logs a models-from-code pyfunc (`mdir/registry/pyfunc_model.py`)
with the generator weights (safetensors) and the method config (JSON) as artifacts, an
explicit `TensorSpec` signature (-1 for batch, H and W), explicit pip requirements, and
registers it as ``mdir-<method>-<dataset>`` with an alias (``candidate`` after training;
Tune moves ``champion``). `load_translator` gives other code (``mdir eval gan --model``,
retrieval augmentation, Tune) a `Translator` built from the same two artifacts, loaded
with safetensors and pydantic only; both set ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``
when unset (`mdir.runtime.mlflow_client_defaults`) before talking to MLflow.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mdir.methods.specs import get_spec, parse_method_config
from mdir.registry.aliases import resolve_model, set_version_tag
from mdir.registry.uri import alias_uri, is_model_uri
from mdir.runtime import mlflow_client_defaults

PYFUNC_FILE = str(Path(__file__).with_name("pyfunc_model.py"))
MODEL_NAME_IN_RUN = "generator"
PIP_REQUIREMENTS = [
    "mdir",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "safetensors",
    "numpy",
    "pydantic>=2.9",
    "mlflow>=3.17,<4",
]


def signature_for(method: str):
    """TensorSpec signature with -1 for batch / H / W (a method whose spec needs a reference,
    like MDUIT: named images + reference)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = lambda name=None: TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), name)  # noqa: E731
    needs_ref = get_spec(method).needs_reference
    inputs = Schema([spec("images"), spec("reference")]) if needs_ref else Schema([spec()])
    return ModelSignature(inputs=inputs, outputs=Schema([spec()]))


def model_card(cfg: Any, metrics: dict[str, float], step: int) -> str:
    """Markdown model card: method, dataset, config, pretrained weights used, metrics."""
    from mdir.config import dump_config

    m = cfg.method
    weights = getattr(m, "vgg_weights", None)
    vgg = (
        "n/a"
        if not get_spec(m.name).needs_vgg
        else (
            weights
            or (
                "torch hub cache"
                if not m.allow_random_vgg
                else "hub cache, else RANDOM init (allow_random_vgg)"
            )
        )
    )
    lines = [
        f"# {cfg.model_name()}",
        "",
        f"- method: **{m.name}**",
        f"- dataset: `{cfg.data.uri}` ({cfg.data.mode}; A={cfg.data.domain_a}, B={cfg.data.domain_b}; {cfg.data.image_size}px)",
        f"- trained steps: {step} (epochs {cfg.train.epochs}, batch {cfg.train.batch_size} × {cfg.scaling.num_workers} workers)",
        f"- pretrained weights: VGG-16 for E_a: {vgg}",
        f"- feature metrics: protocol `{getattr(cfg.eval, 'fid_protocol', 'legacy')}`, weights {getattr(cfg.eval, 'inception_weights', None) or 'inception-2015-12-05 from the local cache (suffix _random_inception = random features)'}",
        "",
        "## Metrics (validation split)",
        "",
    ]
    lines += [f"- {k}: {v:.4f}" for k, v in sorted(metrics.items())] or ["- (none computed)"]
    lines += ["", "## Resolved config", "", "```yaml", dump_config(cfg).rstrip(), "```", ""]
    return "\n".join(lines)


@contextmanager
def _resumed_run(client: Any, run_id: str) -> Iterator[None]:
    """`mlflow.start_run(run_id)` for a run of any experiment. MLflow refuses to resume a
    run outside the process's active experiment (whatever an earlier `mlflow.set_experiment`
    in this process chose), so switch to the run's experiment for the duration and give the
    caller's choice back afterwards."""
    import mlflow
    from mlflow.tracking import fluent

    previous = getattr(fluent, "_active_experiment_id", None)
    fluent._active_experiment_id = client.get_run(run_id).info.experiment_id
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        fluent._active_experiment_id = previous


def register_generator(
    cfg: Any,
    weights_path: str,
    *,
    run_id: str,
    metrics: dict[str, float] | None = None,
    alias: str | None = None,
    model_name: str | None = None,
    client: Any = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the generator as a pyfunc in run `run_id`, register it and set the alias; `tags`
    go on the model version (e.g. ``mdir.checkpoint_step``, the step it was saved at).
    Returns ``models:/<name>@<alias>``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow_client_defaults()
    client = client or MlflowClient()
    mlflow.set_tracking_uri(client.tracking_uri)
    name = model_name or cfg.model_name()
    alias = alias or cfg.mlflow.alias
    with tempfile.TemporaryDirectory(prefix="mdir-model-") as d:
        cfg_path = os.path.join(d, "method_config.json")
        Path(cfg_path).write_text(json.dumps(cfg.method.model_dump(mode="json"), indent=2))
        w_path = os.path.join(d, "generator.safetensors")
        Path(w_path).write_bytes(Path(weights_path).read_bytes())
        with _resumed_run(client, run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=PYFUNC_FILE,
                artifacts={"weights": w_path, "config": cfg_path},
                signature=signature_for(cfg.method.name),
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=name,
                metadata={"mdir_method": cfg.method.name, "mdir_dataset": cfg.dataset_name()},
            )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    for k, v in (metrics or {}).items():
        set_version_tag(client, name, version, f"metric.{k}", f"{v:.6g}")
    set_version_tag(client, name, version, "mdir.method", cfg.method.name)
    set_version_tag(client, name, version, "mdir.run_id", run_id)
    for k, v in (tags or {}).items():
        set_version_tag(client, name, version, k, v)
    return alias_uri(name, alias)


@dataclass
class Translator:
    """A registered generator ready to translate ([-1, 1] float NCHW in and out)."""

    generator: nn.Module
    method_config: Any
    model_uri: str
    version: str | None
    run_id: str | None

    @property
    def method(self) -> str:
        return self.method_config.name

    @property
    def needs_reference(self) -> bool:
        """Translation takes target-appearance images (the method's spec says so)."""
        return get_spec(self.method).needs_reference

    def to(self, device: torch.device | str) -> Translator:
        self.generator.to(device)
        return self

    @torch.no_grad()
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        from mdir.methods import translate_with

        return translate_with(self.generator, self.method_config, images, reference)

    __call__ = translate


def resolve_version(model_uri: str, client: Any = None) -> tuple[str | None, str | None]:
    """(version, run_id) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI; (None,
    None) for anything else (a run artifact URI, a local path)."""
    if not is_model_uri(model_uri):
        return None, None
    r = resolve_model(model_uri, client=client)
    return r.version, r.run_id


def load_translator(model_uri: str, device: torch.device | str = "cpu") -> Translator:
    """Download the weights + config of a registered generator and rebuild it (no pickle)."""
    import mlflow
    from safetensors.torch import load_file

    from mdir.methods import build_generator

    mlflow_client_defaults()
    version, run_id = resolve_version(model_uri)
    with tempfile.TemporaryDirectory(prefix="mdir-load-") as d:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=d)
        files = {p.name: p for p in Path(local).rglob("*") if p.is_file()}
        if "method_config.json" not in files or "generator.safetensors" not in files:
            raise ValueError(
                f"{model_uri} is not an mdir generator (no method_config.json / generator.safetensors)"
            )
        cfg = parse_method_config(json.loads(files["method_config.json"].read_text()))
        gen = build_generator(cfg)
        gen.load_state_dict(load_file(str(files["generator.safetensors"])))
    gen.eval().to(device)
    return Translator(
        generator=gen, method_config=cfg, model_uri=model_uri, version=version, run_id=run_id
    )


def list_models(client: Any = None, prefix: str = "mdir-") -> list[dict[str, Any]]:
    """Registered models named `prefix`*: name, version, aliases, run, metric tags."""
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    rows: list[dict[str, Any]] = []
    for rm in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'"):
        by_version: dict[str, list[str]] = {}
        for alias, v in (client.get_registered_model(rm.name).aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            rows.append(
                {
                    "name": rm.name,
                    "version": str(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "run_id": mv.run_id,
                    "metrics": {
                        k[len("metric.") :]: v
                        for k, v in (mv.tags or {}).items()
                        if k.startswith("metric.")
                    },
                    "created": mv.creation_timestamp,
                }
            )
    rows.sort(key=lambda r: (r["name"], -int(r["version"])))
    return rows
