"""A tiny fake method and random-tensor data plan for the training-loop tests.

The loop must be method-agnostic: this fake implements `mdir.methods.base.Method` with a
1×1-conv "generator" (with BatchNorm, run twice per step like a GAN's D) and a conv
"discriminator", and checkpoints a counter and an image pool like CycleGAN's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class FakeMethod:
    name = "fake"
    data_mode = "unpaired"
    frozen: tuple[str, ...] = ()

    def __init__(
        self,
        cfg: Any,
        device: torch.device,
        die_at_step: int = 0,
        marker: str = "",
        dump_dir: str = "",
        die_delay_s: float = 20.0,
    ) -> None:
        self.cfg, self.device = cfg, device
        self.networks: dict[str, nn.Module] = {
            "G": nn.Sequential(
                nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1), nn.Tanh()
            ),
            "D": nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1)
            ),
        }
        self.steps = 0
        self.pool = torch.zeros(2, 3, 4, 4)
        self.die_at_step, self.marker, self.dump_dir = die_at_step, marker, dump_dir
        self.die_delay_s = die_delay_s
        self.epochs_started: list[int] = []

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self.opt = {k: torch.optim.Adam(v.parameters(), lr=1e-2) for k, v in self.networks.items()}
        return self.opt

    def lr_lambda(self, epoch: int, num_epochs: int) -> float:
        return 1.0 - epoch / (num_epochs + 1)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        if (
            self.die_at_step
            and self.steps + 1 == self.die_at_step
            and rank == 1
            and not os.path.exists(self.marker)
        ):
            open(self.marker, "w").close()
            # Ray Train's controller collects reported checkpoints by polling the workers
            # (every 2 s, slower on a loaded machine); die only once it surely registered
            # the last one, as a real crash minutes after a checkpoint would.
            time.sleep(self.die_delay_s)
            os._exit(1)  # a hard worker crash, as from the OOM killer
        G, D = self.networks["G"], self.networks["D"]
        fake = G(batch["A"])
        D.requires_grad_(True)
        self.opt["D"].zero_grad()
        loss_d = torch.relu(1 - D(batch["B"])).mean() + torch.relu(1 + D(fake.detach())).mean()
        loss_d.backward()
        self.opt["D"].step()
        D.requires_grad_(False)
        self.opt["G"].zero_grad()
        loss_g = -D(fake).mean() + (fake - batch["B"]).abs().mean()
        loss_g.backward()
        self.opt["G"].step()
        D.requires_grad_(True)
        self.steps += 1
        self.pool = torch.roll(self.pool, 1, 0)
        if self.dump_dir:
            vec = torch.cat(
                [
                    p.detach().flatten().cpu()
                    for n in ("G", "D")
                    for p in self.networks[n].parameters()
                ]
            )
            bufs = torch.cat(
                [
                    b.detach().flatten().float().cpu()
                    for n in ("G", "D")
                    for b in self.networks[n].buffers()
                ]
            )
            torch.save(
                {
                    "step": self.steps,
                    "params": vec,
                    "buffers": bufs,
                    "batch": int(batch["A"].shape[0]),
                    "channels_last": bool(
                        batch["A"].is_contiguous(memory_format=torch.channels_last)
                        and next(self.networks["G"].parameters()).is_contiguous(
                            memory_format=torch.channels_last
                        )
                    ),
                },
                os.path.join(self.dump_dir, f"rank{rank}.pt"),
            )
        return {"G": loss_g.item(), "D": loss_d.item()}

    @torch.no_grad()
    def translate(self, images: Tensor, reference: Tensor | None = None) -> Tensor:
        g = self.generator()
        was = g.training
        g.eval()
        out = g(images)
        g.train(was)
        return out

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        self.epochs_started.append(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "pool": self.pool.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.pool = state["pool"]

    def generator(self) -> nn.Module:
        return getattr(self.networks["G"], "module", self.networks["G"])


class FakeFactory:
    """Picklable ``(cfg, device) -> FakeMethod`` with the crash / dump options;
    `count_file` gets one line per method built (one per rank and attempt)."""

    def __init__(
        self,
        die_at_step: int = 0,
        marker: str = "",
        dump_dir: str = "",
        count_file: str = "",
        die_delay_s: float = 20.0,
    ) -> None:
        self.kw = {
            "die_at_step": die_at_step,
            "marker": marker,
            "dump_dir": dump_dir,
            "die_delay_s": die_delay_s,
        }
        self.count_file = count_file

    def __call__(self, cfg: Any, device: torch.device) -> FakeMethod:
        if self.count_file:
            with open(self.count_file, "a") as f:
                f.write("built\n")
        return FakeMethod(cfg, device, **self.kw)


class FakeEvaluator:
    """Picklable stand-in for the loop's evaluation: ``eval/<key>`` = ``values[step]``, so a
    test decides which evaluation point is best (the real metrics are tested elsewhere)."""

    def __init__(self, values: dict[int, float], key: str = "fid_fake") -> None:
        self.values, self.key = dict(values), key

    def __call__(self, tracker: Any, cfg: Any, method: Any, plan: Any, step: int) -> dict:
        if step not in self.values:
            return {}
        m = {f"eval/{self.key}": float(self.values[step])}
        if tracker is not None:
            tracker.log_metrics(m, step)
        return m


class EmaProbe(FakeEvaluator):
    """`FakeEvaluator` that also writes, at each evaluation, the generator weights it sees
    (the EMA ones when the loop keeps an EMA) and the raw parameters the fake method dumped
    after this step (`FakeMethod(dump_dir=...)`), for the EMA test to check the recurrence."""

    def __init__(self, values: dict[int, float], out_dir: str, dump_dir: str) -> None:
        super().__init__(values)
        self.out_dir, self.dump_dir = out_dir, dump_dir

    def __call__(self, tracker: Any, cfg: Any, method: Any, plan: Any, step: int) -> dict:
        from safetensors.torch import save_file

        seen = {k: v.detach().cpu().clone() for k, v in method.generator().state_dict().items()}
        save_file(seen, os.path.join(self.out_dir, f"seen_step{step}.safetensors"))
        raw = torch.load(os.path.join(self.dump_dir, "rank0.pt"), weights_only=True)
        assert int(raw["step"]) == method.steps
        torch.save(raw, os.path.join(self.out_dir, f"raw_step{step}.pt"))
        return super().__call__(tracker, cfg, method, plan, step)


class RandomPlan:
    """`DataPlan` of random 8×8 tensors; each rank draws different data."""

    def __init__(self, steps_per_epoch: int = 4, batch_size: int = 2, size: int = 8) -> None:
        self.spe, self.bs, self.size = steps_per_epoch, batch_size, size

    def datasets(self) -> dict[str, Any]:
        return {}

    def steps_per_epoch(self, world_size: int) -> int:
        return self.spe

    def batches(self, steps: int, device: torch.device) -> Iterator[dict[str, Tensor]]:
        for _ in range(steps):
            yield {
                "A": torch.rand(self.bs, 3, self.size, self.size, device=device) * 2 - 1,
                "B": torch.rand(self.bs, 3, self.size, self.size, device=device) * 2 - 1,
            }

    def store(self) -> Any:
        return None

    def samples(self, n: int) -> tuple[Tensor, Tensor | None]:
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 3, self.size, self.size, generator=g) * 2 - 1, torch.rand(
            n, 3, self.size, self.size, generator=g
        ) * 2 - 1

    def eval_images(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, self.size, self.size, 3), dtype=np.uint8), rng.integers(
            0, 256, (n, self.size, self.size, 3), dtype=np.uint8
        )


def dead_uri() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a tracking server that is down)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more
    return f"http://127.0.0.1:{port}"
