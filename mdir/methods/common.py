"""Shared plumbing of the GAN methods: networks dict, Adam optimisers, freezing, schedule.

Networks are always reached through ``self.networks[name]`` so that the training loop may
replace an entry by its DDP wrapper from outside. Discriminators are frozen with
``requires_grad_(False)`` around the generator step; in that step they are called
*unwrapped* (`raw`) — no gradient flows into their parameters there, so there is nothing
for DDP to synchronise, and DDP never sees a forward whose parameters get no gradient.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from mdir import losses
from mdir.methods.schedule import linear_decay

DataMode = Literal["unpaired", "paired", "single"]


def raw(net: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (or `net` itself)."""
    inner = getattr(net, "module", None)
    return inner if isinstance(inner, nn.Module) else net


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    """Freeze / unfreeze whole modules (junyanz ``set_requires_grad``), never by attribute."""
    for n in nets:
        n.requires_grad_(flag)


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Parameters an optimiser should own: all of them, except what a module declares as
    permanently frozen via its own ``trainable_parameters()`` (E_a's VGG). Not filtered by
    the current ``requires_grad`` flag, which is toggled around the G step."""
    inner = raw(net)
    fn = getattr(inner, "trainable_parameters", None)
    return list(fn()) if callable(fn) else list(net.parameters())


class GANMethod:
    """Base of the built-in methods (implements the parts of `mdir.methods.base.Method`
    that do not depend on the method)."""

    name: ClassVar[str]
    data_mode: ClassVar[DataMode]
    #: optimiser name → network names it updates (trainable parameters only)
    optim_groups: ClassVar[dict[str, tuple[str, ...]]]
    frozen: tuple[str, ...] = ()
    #: generator loss term → weight (`losses.weighted_sum`), set by each method
    weights: dict[str, float]

    def __init__(self, cfg: Any, device: torch.device | str | None = None):
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # -- protocol ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam(lr, (β1, β2)) per group in `optim_groups` (e.g. "G" and "D")."""
        betas = (self.cfg.beta1, self.cfg.beta2)
        self.optimizers = {}
        for opt_name, net_names in self.optim_groups.items():
            params = [p for n in net_names for p in trainable_parameters(self.networks[n])]
            self.optimizers[opt_name] = torch.optim.Adam(params, lr=self.cfg.lr, betas=betas)
        return self.optimizers

    def lr_lambda(self, epoch: int, num_epochs: int) -> float:
        """Constant for ``decay_start_frac`` of the epochs, then linear towards zero."""
        return linear_decay(epoch, num_epochs, self.cfg.decay_start_frac)

    def on_epoch_start(self, epoch: int, context: Any) -> None:  # noqa: B027 - optional hook
        """Nothing to do per epoch by default."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """No extra state by default."""

    def train(self, mode: bool = True) -> None:
        """Put every network in train / eval mode."""
        for n in self.networks.values():
            n.train(mode)

    # -- helpers ----------------------------------------------------------------------------
    def _optim(self, name: str) -> torch.optim.Optimizer:
        if not self.optimizers:
            self.configure_optimizers()  # single-process use without a loop
        return self.optimizers[name]

    def _update(self, name: str, loss: Tensor) -> None:
        """One step of optimiser `name` on `loss` (its gradients cleared first); every
        method's G and D steps end this way."""
        opt = self._optim(name)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _update_generator(self, terms: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The G step from its named loss terms weighted by `self.weights`; returns the total
        and the unweighted terms for logging (call with the discriminators frozen)."""
        loss, logs = losses.weighted_sum(terms, self.weights)
        self._update("G", loss)
        return loss, logs

    def _to_device(self, batch: dict[str, Tensor], keys: tuple[str, ...]) -> list[Tensor]:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"{self.name}: batch lacks {missing} (has {sorted(batch)})")
        return [batch[k].to(self.device, non_blocking=True) for k in keys]

    def _eval_call(self, fn, *args):  # noqa: ANN001, ANN202
        """Run `fn` with every network in eval mode, restoring the modes afterwards."""
        modes = {k: n.training for k, n in self.networks.items()}
        self.train(False)
        try:
            with torch.no_grad():
                return fn(*args)
        finally:
            for k, n in self.networks.items():
                n.train(modes[k])
