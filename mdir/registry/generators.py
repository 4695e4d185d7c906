"""Register trained generators in MLflow and load them back, without pickle.

`register_generator` logs a models-from-code pyfunc (`mdir/registry/pyfunc_model.py`)
with the generator weights (safetensors) and the method config (JSON) as artifacts, mdir's
own code (``code_paths``: the package's ``.py`` files, so `mlflow models serve` runs this
mdir, not the unrelated PyPI ``mdir``), an explicit `TensorSpec` signature (-1 for batch,
H and W; param ``max_pixels``), pip requirements pinned to the installed runtime deps, and
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

from mdir.methods.anysize import DEFAULT_MAX_PIXELS, translate_any_size
from mdir.methods.specs import get_spec, parse_method_config
from mdir.methods.tile_norm import translate_shared_norms
from mdir.registry.aliases import resolve_model, set_version_tag
from mdir.registry.uri import alias_uri, is_model_uri
from mdir.runtime import mlflow_client_defaults

PYFUNC_FILE = str(Path(__file__).with_name("pyfunc_model.py"))
MODEL_NAME_IN_RUN = "generator"
MDIR_PACKAGE = Path(__file__).resolve().parents[1]
#: distributions the logged model's code imports at serving time (mdir.methods + registry):
#: pinned to the versions installed where the model is logged. Never "mdir": the PyPI
#: package of that name is an unrelated project; mdir itself travels as the model's code.
RUNTIME_DISTRIBUTIONS = (
    "torch", "torchvision", "safetensors", "numpy", "pydantic", "pyyaml", "pillow", "mlflow",
)  # fmt: skip


def pip_requirements() -> list[str]:
    """``name==version`` of each `RUNTIME_DISTRIBUTIONS` as installed here (a local version
    label such as ``+cpu`` is dropped: it names a wheel index, not a release)."""
    from importlib.metadata import version

    return [f"{d}=={version(d).split('+')[0]}" for d in RUNTIME_DISTRIBUTIONS]


def copy_package_code(dest: Path) -> Path:
    """A clean copy of the mdir package's ``.py`` files under ``dest/mdir`` (no caches, no
    stray files) for ``code_paths``; returns the copied package directory."""
    import shutil

    out = dest / "mdir"
    for src in MDIR_PACKAGE.rglob("*.py"):
        if "__pycache__" in src.parts:
            continue
        target = out / src.relative_to(MDIR_PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return out


def signature_for(method: str):
    """TensorSpec signature with -1 for batch / H / W (a method whose spec needs a reference,
    like MDUIT: named images + reference) and the param ``max_pixels`` (tiling threshold)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    spec = lambda name=None: TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), name)  # noqa: E731
    needs_ref = get_spec(method).needs_reference
    inputs = Schema([spec("images"), spec("reference")]) if needs_ref else Schema([spec()])
    params = ParamSchema([ParamSpec("max_pixels", "long", DEFAULT_MAX_PIXELS)])
    return ModelSignature(inputs=inputs, outputs=Schema([spec()]), params=params)


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
def _no_uv_project_files() -> Iterator[None]:
    """MLflow ≥ 3.17 copies ``uv.lock`` / ``pyproject.toml`` from the current directory into
    a logged model when it finds them (``MLFLOW_UV_AUTO_DETECT``), and ``--env-manager uv``
    then restores *that* project — mdir's own lock, whose root is an editable ``mdir`` that
    is not there. What the model needs is `pip_requirements()`, whatever the cwd of the
    logging process, so the detection is off while logging."""
    keys = ("MLFLOW_UV_AUTO_DETECT", "MLFLOW_LOG_UV_FILES")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "false"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
        with _resumed_run(client, run_id), _no_uv_project_files():
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=PYFUNC_FILE,
                artifacts={"weights": w_path, "config": cfg_path},
                signature=signature_for(cfg.method.name),
                pip_requirements=pip_requirements(),
                code_paths=[str(copy_package_code(Path(d) / "code"))],
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

    @property
    def size_multiple(self) -> int:
        """H and W of a `translate` input must be multiples of this (the method's spec)."""
        return get_spec(self.method).size_multiple(self.method_config)

    @torch.no_grad()
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        """Batch [B,3,H,W] → [B,3,H,W], H and W multiples of `size_multiple`."""
        from mdir.methods import translate_with

        return translate_with(self.generator, self.method_config, images, reference)

    __call__ = translate

    @torch.no_grad()
    def translate_image(
        self,
        image: Tensor,
        reference: Tensor | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        tile: int = 512,
        overlap: int = 64,
        shared_norms: bool = True,
    ) -> Tensor:
        """One image [3,H,W] or [1,3,H,W] in [-1, 1] of any size → its translation, same
        shape (`mdir.methods.anysize.translate_any_size`: reflection-padded to the stride
        multiple, tiled above `max_pixels`). `reference` (MDUIT: the target appearance,
        [3,h,w] or [1,3,h,w], any size) is used for every tile. `shared_norms`: tiles are
        normalised with statistics pooled over all tiles (`mdir.methods.tile_norm`; one more
        pass, only when tiling). Output on the input's device."""
        if self.needs_reference and reference is None:
            raise ValueError(f"{self.method} needs a `reference` image (the target appearance)")
        ref = None
        if reference is not None:
            ref = reference if reference.dim() == 4 else reference.unsqueeze(0)
        kw = {"multiple": self.size_multiple, "max_pixels": max_pixels, "tile": tile}
        if shared_norms:
            return translate_shared_norms(
                self.generator, lambda x: self.translate(x, ref), image, overlap=overlap, **kw
            )
        return translate_any_size(lambda x: self.translate(x, ref), image, overlap=overlap, **kw)


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
