"""Image history pool (Shrivastava et al.; CycleGAN's ``ImagePool``, size 50).

The discriminators see a mix of the newest fakes and older ones: while the pool is not
full every fake is stored and returned; afterwards each fake is, with probability ½,
swapped with a random stored one (the stored one is returned). Own RNG → deterministic and
checkpointable (`state_dict` holds the images and the generator state).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ImagePool:
    """Per-rank buffer of up to `size` previously generated images."""

    def __init__(self, size: int = 50, seed: int = 0):
        self.size = size
        self.images: list[Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
        """Return a batch of the same shape mixing `images` (detached) with pooled ones."""
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif float(torch.rand(1, generator=self.gen)) > 0.5:
                i = int(torch.randint(0, self.size, (1,), generator=self.gen))
                old = self.images[i].clone()
                self.images[i] = img.clone()
                out.append(old.to(img.device))
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        imgs = torch.cat([i.cpu() for i in self.images], 0) if self.images else torch.empty(0)
        return {"size": self.size, "images": imgs, "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size = int(state["size"])
        imgs = state["images"]
        self.images = (
            [imgs[i : i + 1].clone() for i in range(imgs.shape[0])] if imgs.numel() else []
        )
        self.gen.set_state(state["rng"])
