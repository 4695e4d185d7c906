"""Parameter counts and output shapes of a method's default networks (`mdir models summary`).

Networks are built with the config defaults (the papers' widths) and random weights on the
``meta`` device: parameter counts are exact and output shapes come from a shape-only forward
pass, so a summary of the 54 M-parameter U-Net costs no real compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mdir.models.init import count_params

SUMMARY_METHODS = ("pix2pix", "cyclegan", "mduit", "retrieval")


def _entry(
    net: nn.Module, inputs: tuple[torch.Tensor, ...], frozen: nn.Module | None = None
) -> dict[str, Any]:
    frozen_ids = {id(p) for p in frozen.parameters()} if frozen is not None else set()
    params = sum(p.numel() for p in net.parameters() if id(p) not in frozen_ids)
    was_training = net.training
    net.eval()  # inference shapes; batch-1 BatchNorm (MDUIT's E_a head, H) needs eval mode
    try:
        with torch.no_grad():
            out = net(*inputs)
    finally:
        net.train(was_training)
    entry: dict[str, Any] = {
        "params": params,
        "input_shapes": [list(x.shape) for x in inputs],
        "output_shape": list(out.shape),
    }
    if frozen is not None:
        entry["frozen_params"] = count_params(frozen)
    return entry


def summarize(method: str, size: int = 256) -> dict[str, Any]:
    """``{"method": m, "networks": {NAME: {"params": int, "input_shapes", "output_shape",
    ["frozen_params"]}}}`` for a `size`×`size` RGB input, batch 1."""
    from mdir.methods import config as mc

    if method not in SUMMARY_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(SUMMARY_METHODS)}")
    nets: dict[str, Any] = {}
    with torch.device("meta"):
        img = torch.empty(1, 3, size, size)
        pair = torch.empty(1, 6, size, size)
        if method == "pix2pix":
            from mdir.methods.pix2pix import build_pix2pix_discriminator, build_pix2pix_generator

            cfg = mc.Pix2PixConfig()
            nets["G"] = _entry(build_pix2pix_generator(cfg), (img,))
            nets["D"] = _entry(build_pix2pix_discriminator(cfg), (pair,))
        elif method == "cyclegan":
            from mdir.methods.cyclegan import build_cyclegan_discriminator, build_cyclegan_generator

            cfg = mc.CycleGANConfig()
            for k in ("G_A", "G_B"):
                nets[k] = _entry(build_cyclegan_generator(cfg), (img,))
            for k in ("D_A", "D_B"):
                nets[k] = _entry(build_cyclegan_discriminator(cfg), (img,))
        elif method == "mduit":
            from mdir.methods.mduit import build_mduit_networks

            cfg = mc.MDUITConfig()
            m, _ = build_mduit_networks(cfg, load_pretrained=False)
            c = m["E_c"].out_channels
            s = size // 2**cfg.n_downsample
            feat = torch.empty(1, c, s, s)
            nets["E_c"] = _entry(m["E_c"], (img,))
            nets["E_a"] = _entry(m["E_a"], (img,), frozen=m["E_a"].vgg)
            nets["G"] = _entry(m["G"], (feat,))
            nets["D_i"] = _entry(m["D_i"], (img,))
            nets["D_a"] = _entry(m["D_a"], (pair,))
            nets["H"] = _entry(m["H"], (feat,))
        else:
            from mdir.models.retrieval import RetrievalNet

            nets["net"] = _entry(RetrievalNet("vgg16", allow_random=True), (img,))
    return {"method": method, "networks": nets}


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable table of `summarize`'s result."""
    lines = [f"{summary['method']}: networks (random init, batch 1)"]
    lines.append(f"  {'name':<6} {'params':>12}  {'frozen':>10}  output shape")
    total = 0
    for name, e in summary["networks"].items():
        total += e["params"]
        frozen = f"{e['frozen_params']:,}" if "frozen_params" in e else "-"
        lines.append(f"  {name:<6} {e['params']:>12,}  {frozen:>10}  {tuple(e['output_shape'])}")
    lines.append(f"  {'total':<6} {total:>12,}  (trainable)")
    return "\n".join(lines)
