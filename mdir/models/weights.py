"""Pretrained trunk weights without downloads: local file → torch hub cache → cached enum file.

`load_vgg16(source, allow_random)` returns a torchvision VGG-16 and a label recording which
weights it carries, so that every number computed with random weights can be labelled:

* ``source`` a path (``.pth``/``.pt`` state dict loaded with ``weights_only=True``, or
  ``.safetensors``), optionally prefixed ``file://``: label ``"file:<path>"``;
* ``source`` None: the file named by ``$MDIR_VGG16_WEIGHTS`` / ``$MDIR_RESNET50_WEIGHTS``
  (how a cluster's workers get a path without editing configs), else the torchvision enum
  file (``vgg16-397923af.pth``) when it is already in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``): label ``"torchvision:IMAGENET1K_V1"``;
* otherwise random init if ``allow_random`` (label ``"random"``), else a `FileNotFoundError`
  that says where weights were looked for. Nothing is ever downloaded.

VGG-16 is returned as `VGG16Trunk` (``.features`` only, torchvision's layer indices and
keys). State dicts of the full torchvision model (classifier keys are ignored) or of
``features`` only (keys without the ``features.`` prefix) are accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

#: the file names torchvision's weight enums download to (checked in the hub cache only)
CACHED_FILES = {
    "vgg16": ("vgg16-397923af.pth", "torchvision:IMAGENET1K_V1"),
    "resnet50": ("resnet50-11ad3fa6.pth", "torchvision:IMAGENET1K_V2"),
    "resnet101": ("resnet101-cd907fc2.pth", "torchvision:IMAGENET1K_V2"),
}
_ALT_CACHED = {
    "resnet50": ("resnet50-0676ba61.pth", "torchvision:IMAGENET1K_V1"),
    "resnet101": ("resnet101-63fe2227.pth", "torchvision:IMAGENET1K_V1"),
}


def hub_checkpoint_dir() -> Path:
    """Where torch hub keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


class VGG16Trunk(nn.Module):
    """VGG-16's convolutional part only (``.features``, same keys as torchvision's): the
    classifier (120 M parameters, slow to initialise) is never used by the trunks."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"], batch_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _build(arch: str) -> nn.Module:
    import torchvision

    if arch == "vgg16":
        return VGG16Trunk()
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None)
    if arch == "resnet101":
        return torchvision.models.resnet101(weights=None)
    raise ValueError(f"unknown trunk {arch!r}; valid: {sorted(CACHED_FILES)}")


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], arch: str, where: str) -> None:
    own = model.state_dict()
    if arch == "vgg16" and not any(k.startswith("features.") for k in sd):
        sd = {f"features.{k}": v for k, v in sd.items()}
    if arch == "vgg16":  # the classifier is not part of the trunk
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    missing = [k for k in own if k not in sd]
    trunk_missing = [k for k in missing if not (arch.startswith("resnet") and k.startswith("fc."))]
    if trunk_missing:
        raise ValueError(f"{where}: not a {arch} state dict (missing e.g. {trunk_missing[:3]})")
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise ValueError(f"{where}: unexpected keys for {arch}, e.g. {unexpected[:3]}")
    model.load_state_dict(sd, strict=False)


def load_trunk(
    arch: str, source: str | None = None, allow_random: bool = False
) -> tuple[nn.Module, str]:
    """A torchvision `arch` ("vgg16" | "resnet50" | "resnet101") with pretrained weights (see module doc)."""
    model = _build(arch)
    source = source or os.environ.get(f"MDIR_{arch.upper()}_WEIGHTS") or None
    if source:
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{arch} weights not found: {source}")
        _load_into(model, _read_state_dict(path), arch, str(path))
        return model, f"file:{path}"
    candidates = [CACHED_FILES[arch], *([_ALT_CACHED[arch]] if arch in _ALT_CACHED else [])]
    for fname, label in candidates:
        path = hub_checkpoint_dir() / fname
        if path.is_file():
            _load_into(model, _read_state_dict(path), arch, str(path))
            return model, label
    if allow_random:
        return model, "random"
    raise FileNotFoundError(
        f"no pretrained {arch} weights: give a local file (config `vgg_weights` / `trunk_weights`) "
        f"or put {candidates[0][0]} in {hub_checkpoint_dir()} (TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')}); "
        "nothing is downloaded at run time. Set allow_random to train from random init "
        "(metrics are then labelled)."
    )


def load_vgg16(source: str | None = None, allow_random: bool = False) -> tuple[nn.Module, str]:
    """VGG-16 conv trunk (`VGG16Trunk`, use ``.features``) and the label of its weights."""
    return load_trunk("vgg16", source, allow_random)
