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

from mdir.checksum import sha256_file

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


# --------------------------------------------------------------------- integrity manifest

MANIFEST_DIR = "manifest"
#: Reported with every checkpoint so Ray's `CheckpointConfig` can rank them ("max" order):
#: the selection metric's value (negated for "min" metrics) at that very step, else UNSCORED.
SCORE_KEY = "selection/score"
#: Score of a checkpoint that was not evaluated at its step (finite: Ray stores its
#: checkpoint bookkeeping as JSON, where an infinity becomes null and breaks the ranking).
UNSCORED = -1e300


class CheckpointCorruptError(RuntimeError):
    """No intact checkpoint to resume from: a deterministic error, never worth a retry."""


def write_manifest(directory: str | Path, rank: int, world_size: int) -> Path:
    """sha256 and size of every file this rank wrote into `directory` (its own temporary
    checkpoint dir, which Ray merges with the other ranks'), as ``manifest/rank_<r>.json``.
    Written last: a checkpoint cut short (crash, ENOSPC) has no manifest or a wrong one."""
    d = Path(directory)
    files = {
        p.relative_to(d).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.relative_to(d).parts[0] != MANIFEST_DIR
    }
    out = d / MANIFEST_DIR / f"rank_{rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "world_size": world_size, "files": files}, indent=1))
    os.replace(tmp, out)
    return out


def verify_checkpoint(directory: str | Path) -> list[str]:
    """What is wrong with the checkpoint in `directory` against its manifests ([] = intact):
    a missing or unreadable manifest, a missing rank's manifest, a missing file, or a file
    whose size or sha256 differs (truncated, zero-filled, half-uploaded)."""
    d = Path(directory)
    first = d / MANIFEST_DIR / "rank_0.json"
    if not first.is_file():
        return [f"{MANIFEST_DIR}/rank_0.json missing (incomplete or pre-manifest checkpoint)"]
    problems: list[str] = []
    try:
        world = int(json.loads(first.read_text())["world_size"])
    except (ValueError, KeyError, TypeError) as e:
        return [f"{MANIFEST_DIR}/rank_0.json unreadable: {e}"]
    for r in range(world):
        mf = d / MANIFEST_DIR / f"rank_{r}.json"
        try:
            files = json.loads(mf.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{mf.relative_to(d)} missing or unreadable: {e}")
            continue
        for rel, want in files.items():
            p = d / rel
            if not p.is_file():
                problems.append(f"{rel} missing")
            elif p.stat().st_size != want["size"]:
                problems.append(f"{rel} has {p.stat().st_size} bytes, manifest says {want['size']}")
            elif sha256_file(p) != want["sha256"]:
                problems.append(f"{rel} sha256 differs from the manifest")
    return problems


def checkpoint_candidates(latest: Any) -> list[Any]:
    """Ray `Checkpoint`s to try when resuming, newest first: `latest` (what Ray Train hands
    back), then the older ``checkpoint_*`` directories beside it. Directories newer than
    `latest` were never registered by Ray (a crash mid-upload): they are never candidates."""
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    parent, name = latest.path.rstrip("/").rsplit("/", 1)
    try:
        infos = latest.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return [latest]
    older = sorted(
        (
            i.base_name
            for i in infos
            if i.type == pafs.FileType.Directory
            and i.base_name.startswith("checkpoint_")
            and i.base_name < name
        ),
        reverse=True,
    )
    return [latest] + [Checkpoint(f"{parent}/{n}", filesystem=latest.filesystem) for n in older]


def estimate_checkpoint_bytes(
    networks: dict[str, nn.Module],
    generator: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
) -> int:
    """Bytes one checkpoint will take: every network's state, the generator copy, and two
    moment buffers per optimised parameter (Adam's state; the optimizers are still empty
    before the first step, so their state cannot be measured yet)."""

    def sd_bytes(m: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in unwrap(m).state_dict().values())

    total = sum(sd_bytes(n) for n in networks.values())
    total += sd_bytes(generator) if generator is not None else 0
    for o in optimizers.values():
        total += sum(2 * p.numel() * p.element_size() for g in o.param_groups for p in g["params"])
    return total


def check_disk_space(
    run_dir: str | Path, per_checkpoint: int, checkpoints: int, free: int | None = None
) -> None:
    """Refuse to start when the local storage cannot hold `checkpoints` checkpoints of
    `per_checkpoint` bytes (what is already stored under `run_dir` counts as held):
    running out mid-write leaves a truncated checkpoint (issue 19)."""
    import shutil

    d = Path(run_dir)
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stored = int(directory_size_mb(d) * 2**20) if d.exists() else 0
    free = shutil.disk_usage(probe).free if free is None else free
    need = checkpoints * per_checkpoint - stored
    if need > free:
        raise OSError(
            f"storage.path: {d} has {free / 2**20:.1f} MiB free, but {checkpoints} checkpoints "
            f"(storage.num_to_keep + the one being written) of ~{per_checkpoint / 2**20:.1f} MiB "
            f"need {need / 2**20:.1f} MiB more than the {stored / 2**20:.1f} MiB stored there"
        )


def fetch_verified_file(checkpoint: Any, rel: str, dest_dir: str | Path) -> Path:
    """Copy one file of a (possibly remote) Ray `Checkpoint` to `dest_dir` and check it
    against that checkpoint's rank-0 manifest; raises `CheckpointCorruptError` on mismatch."""
    import shutil

    fs, base = checkpoint.filesystem, checkpoint.path.rstrip("/")
    with fs.open_input_stream(f"{base}/{MANIFEST_DIR}/rank_0.json") as f:
        want = json.loads(f.read().decode())["files"].get(rel)
    if want is None:
        raise CheckpointCorruptError(f"{base}/{rel} is not in the checkpoint's manifest")
    dest = Path(dest_dir) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(f"{base}/{rel}") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    if dest.stat().st_size != want["size"] or sha256_file(dest) != want["sha256"]:
        raise CheckpointCorruptError(f"{base}/{rel} differs from the checkpoint's manifest")
    return dest
