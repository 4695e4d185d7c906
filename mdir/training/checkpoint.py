"""Complete training checkpoints without pickle.

Layout of one checkpoint directory (what Ray Train persists to ``storage.path``):

* ``networks.safetensors`` — every network's unwrapped state dict, keys ``<net>/<param>``;
* ``generator.safetensors`` — `Method.generator()`'s state dict (what gets registered);
* ``state.pt`` — optimizers, LR schedulers, the method's own state (image pools, MDUIT
  pairing), step, epoch, MLflow run id: plain tensors / numbers / strings only, written
  with `torch.save` and read with ``torch.load(weights_only=True)``;
* ``rng/rank_<r>.pt`` — torch / numpy / python RNG states of rank r (each rank adds its
  own file; Ray merges the workers' checkpoint directories into one);
* ``config.yaml`` / ``meta.json`` — the resolved job config and a human-readable summary.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

NETWORKS_FILE = "networks.safetensors"
GENERATOR_FILE = "generator.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return (
        getattr(module, "module", module)
        if isinstance(module, nn.parallel.DistributedDataParallel)
        else module
    )


def _tensors_for_safetensors(
    sd: dict[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone to contiguous CPU tensors.
    return {
        f"{prefix}{k}": v.detach().to("cpu").contiguous().clone()
        for k, v in sd.items()
        if isinstance(v, torch.Tensor)
    }


def save_module(module: nn.Module, path: str | Path) -> None:
    """State dict of the (unwrapped) module as safetensors."""
    save_file(_tensors_for_safetensors(unwrap(module).state_dict()), str(path))


def load_module(module: nn.Module, path: str | Path, strict: bool = True) -> None:
    unwrap(module).load_state_dict(load_file(str(path)), strict=strict)


def rng_state() -> dict[str, Any]:
    """torch (+cuda), numpy and python RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python": list(random.getstate()[1]),
        "python_version": int(random.getstate()[0]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_training_state(
    directory: str | Path,
    *,
    networks: dict[str, nn.Module],
    generator: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    method_state: dict[str, Any],
    step: int,
    epoch: int,
    step_in_epoch: int,
    extra: dict[str, Any] | None = None,
    config_yaml: str | None = None,
) -> None:
    """Write the rank-0 part of a checkpoint into `directory` (see the module docstring)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, net in networks.items():
        tensors.update(_tensors_for_safetensors(unwrap(net).state_dict(), prefix=f"{name}/"))
    save_file(tensors, str(d / NETWORKS_FILE))
    if generator is not None:
        save_module(generator, d / GENERATOR_FILE)
    state = {
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "method": method_state,
        "step": int(step),
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "extra": dict(extra or {}),
    }
    torch.save(state, d / STATE_FILE)
    meta = {
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "networks": sorted(networks),
        **(extra or {}),
    }
    (d / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    if config_yaml is not None:
        (d / CONFIG_FILE).write_text(config_yaml)


def save_rng(directory: str | Path, rank: int) -> None:
    d = Path(directory) / "rng"
    d.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), d / f"rank_{rank}.pt")


def load_training_state(
    directory: str | Path,
    *,
    networks: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    rank: int,
) -> dict[str, Any]:
    """Restore networks, optimizers, schedulers and this rank's RNG from `directory`;
    returns the rest of the state (``method``, ``step``, ``epoch``, ``step_in_epoch``, ``extra``).

    Everything is loaded with ``weights_only=True``: no code from the checkpoint runs."""
    d = Path(directory)
    flat = load_file(str(d / NETWORKS_FILE))
    for name, net in networks.items():
        prefix = f"{name}/"
        sd = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        unwrap(net).load_state_dict(sd)
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    rng_file = d / "rng" / f"rank_{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return state


def read_meta(directory: str | Path) -> dict[str, Any]:
    p = Path(directory) / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def directory_size_mb(directory: str | Path) -> float:
    total = 0
    for root, _, files in os.walk(directory):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20
