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


def summary_methods() -> tuple[str, ...]:
    """Every method in the table, then ``retrieval`` (the embedding network)."""
    from mdir.methods.specs import method_specs

    return (*method_specs(), "retrieval")


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
    ["frozen_params"]}}}`` for a `size`×`size` RGB input, batch 1 (the networks come from the
    method's spec)."""
    from mdir.methods.specs import method_specs

    valid = summary_methods()
    if method not in valid:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(valid)}")
    nets: dict[str, Any] = {}
    with torch.device("meta"):
        if method == "retrieval":  # not a translation method: the embedding network
            from mdir.models.retrieval import RetrievalNet

            img = torch.empty(1, 3, size, size)
            nets["net"] = _entry(RetrievalNet("vgg16", allow_random=True), (img,))
        else:
            for name, (net, inputs, frozen) in method_specs()[method].summary(size).items():
                nets[name] = _entry(net, inputs, frozen)
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
