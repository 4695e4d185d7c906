"""MLflow registry access for the retrieval job: logging / registering / loading the trained
embedding network ``mdir-retrieval-<dataset>`` (resolving a registered generator by alias,
before any cluster resources, is `mdir.registry.aliases.resolve_model`).

The retrieval network is stored without pickle: ``weights.safetensors`` (all tensors,
including the learned whitening Lw as ``net.whiten.*``) plus ``model.json`` (the model config
and the network's `meta`), logged as run artifacts under ``retrieval_model/``; the registered
version points at that artifact directory (``runs:/<run>/retrieval_model``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from mdir.registry.aliases import resolve_model
from mdir.registry.uri import alias_uri
from mdir.runtime import mlflow_client_defaults

MODEL_ARTIFACT = "retrieval_model"


def save_model_files(model: Any, directory: Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """`EmbeddingModel` → ``weights.safetensors`` + ``model.json`` in `directory`."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    doc = {
        "model_config": model.cfg.model_dump(mode="json"),
        "meta": model.meta,
        **(extra_meta or {}),
    }
    (directory / "model.json").write_text(json.dumps(doc, indent=2, default=str))
    return directory


def load_model_files(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """Inverse of `save_model_files` → (EmbeddingModel in eval mode, model.json contents)."""
    from safetensors.torch import load_file

    from mdir.retrieval.config import RetrievalModelConfig
    from mdir.retrieval.model import build_model

    doc = json.loads((directory / "model.json").read_text())
    # rebuild the architecture only: trained weights come from the safetensors file
    mcfg = RetrievalModelConfig.model_validate(
        {**doc["model_config"], "weights": None, "allow_random": True}
    )
    model = build_model(mcfg)
    state = load_file(str(directory / "weights.safetensors"))
    model.load_whitening_state(
        {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.whiten.")}
    )
    model.load_state_dict(state)
    model.net.meta.update(doc.get("meta", {}))
    return model.to(device).eval(), doc


def log_and_register(
    model: Any, run_id: str, name: str | None, alias: str, extra_meta: dict[str, Any] | None = None
) -> str | None:
    """Log the model files to `run_id`; register as `name` with `alias` → ``models:/name@alias``."""
    from mlflow import MlflowClient

    mlflow_client_defaults()
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        d = save_model_files(model, Path(tmp) / MODEL_ARTIFACT, extra_meta)
        client.log_artifacts(run_id, str(d), MODEL_ARTIFACT)
    if not name:
        return None
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(
            name, description="mdir retrieval embedding network (GeM + Lw)"
        )
    mv = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return alias_uri(name, alias)


def load_registered_model(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """``models:/NAME@ALIAS`` (or a local directory) → (EmbeddingModel, info incl. version)."""
    import mlflow

    p = Path(uri)
    if p.is_dir():
        model, doc = load_model_files(p, device)
        return model, {**doc, "model_uri": uri, "version": None}
    mlflow_client_defaults()
    resolved = resolve_model(uri, field="--model")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{resolved.run_id}/{MODEL_ARTIFACT}"
    )
    model, doc = load_model_files(Path(local), device)
    return model, {**doc, "model_uri": uri, "version": resolved.version, "run_id": resolved.run_id}


class GeneratorEmbedding(torch.nn.Module):
    """A registered generator's retrieval embedding (``generator.embed``: MDUIT's
    z_s = H(E_c(I))) as a descriptor network, so `mdir retrieval eval` evaluates it like a
    retrieval model: MDUIT's localization by retrieval of the nearest database image."""

    def __init__(self, generator: torch.nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.generator.embed(images)


def load_descriptor_model(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """A retrieval model (`load_registered_model`), or else a registered generator that
    exports an embedding (MDUIT), wrapped in `GeneratorEmbedding`."""
    try:
        return load_registered_model(uri, device)
    except Exception as first:  # noqa: BLE001 - then it may be a generator
        if Path(uri).is_dir():
            raise
        from mdir.registry.generators import load_translator

        try:
            tr = load_translator(uri, device)
        except Exception:  # noqa: BLE001 - neither: the retrieval error says most
            raise first from None
        if not hasattr(tr.generator, "embed"):
            raise ValueError(
                f"--model: {uri} is a {tr.method} generator without a retrieval embedding; "
                "give a retrieval model or an MDUIT generator"
            ) from first
        net = GeneratorEmbedding(tr.generator).to(device).eval()
        return net, {
            "model_uri": uri,
            "version": tr.version,
            "run_id": tr.run_id,
            "kind": f"{tr.method} embedding z_s = H(E_c(I))",
        }
