"""Aachen Day-Night (Sattler et al. 2018).

Layout::

    SRC/images_upright/db/<name>.jpg                     → condition day,   split db
    SRC/images_upright/query/day/<camera>/<name>.jpg     → condition day,   split query
    SRC/images_upright/query/night/<camera>/<name>.jpg   → condition night, split query
    SRC/*.txt   optional poses ``<path below images_upright> qw qx qy qz tx ty tz``

Two ways to split (option ``val_fraction``):

- ``0`` (default): the benchmark's splits, ``db`` / ``query`` (localization, retrieval).
- ``> 0``: a GAN training set, as the thesis used Aachen (002_b6e89399c13f6b04, §3.1: all
  day and all night images, CycleGAN day → night). Every image goes to ``train`` or ``val``;
  per condition, ``round(val_fraction · n)`` images are held out in a seeded hash order
  (``split_seed``), so the ~100 night images still give validation images. The rule, the
  fraction and the seed are recorded in ``manifest.extra["layout"]["split"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mdir.data import io
from mdir.data.layouts.base import (
    BadRow,
    Item,
    LayoutBase,
    list_images,
    parse_fraction,
    read_pose_file,
    seeded_val_split,
)


class AachenLayout(LayoutBase):
    name = "aachen"

    def __init__(self, val_fraction: float | str = 0.0, split_seed: int | str = 0) -> None:
        self.val_fraction = parse_fraction(val_fraction, "val_fraction")
        self.split_seed = int(split_seed)

    def _poses(self, src: str) -> dict[str, tuple[float, ...]]:
        fs, root = io.get_fs(src)
        poses: dict[str, tuple[float, ...]] = {}
        for p in sorted(fs.ls(root, detail=False)):
            if p.endswith(".txt"):
                poses.update(
                    read_pose_file(
                        io.read_bytes(io.full_uri(fs, p)).decode("utf-8", errors="replace")
                    )
                )
        return poses

    def _classify(self, src: str) -> list[tuple[str, str, str | None, str | None]]:
        """(name below images_upright, URI, condition, benchmark split) per file; condition
        None for a file outside db/ and query/{day,night}/."""
        files = list_images(src, "images_upright")
        if not files:
            raise io.DataPathError(
                f"{src!r} has no images_upright/ folder (Aachen Day-Night layout)"
            )
        out = []
        for rel, uri in files:
            parts = rel.split("/")[1:]
            name = "/".join(parts)
            if parts[0] == "db" and len(parts) >= 2:
                out.append((name, uri, "day", "db"))
            elif parts[0] == "query" and len(parts) >= 3 and parts[1] in ("day", "night"):
                out.append((name, uri, parts[1], "query"))
            else:
                out.append((name, uri, None, None))
        return out

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        poses = self._poses(src)
        files = self._classify(src)
        by_cond: dict[str, list[str]] = {}
        for name, _, cond, _ in files:
            if cond is not None:
                by_cond.setdefault(cond, []).append(name)
        val = seeded_val_split(by_cond, self.val_fraction, self.split_seed)
        for name, uri, cond, bench_split in files:
            if cond is None:
                yield BadRow(
                    "malformed_row", uri, "not under images_upright/db or query/{day,night}"
                )
                continue
            gan_split = "val" if name in val else "train"
            split = gan_split if self.val_fraction > 0 else bench_split
            yield Item(source=uri, condition=cond, split=split, pose=poses.get(name))

    def extra(self, src: str) -> dict[str, Any]:
        if self.val_fraction <= 0:
            return {}
        return {
            "dataset": "aachen",
            "split": {
                "by": "image, stratified by condition",
                "val_fraction": self.val_fraction,
                "seed": self.split_seed,
            },
        }
