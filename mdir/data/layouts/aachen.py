"""Aachen Day-Night (Sattler et al. 2018).

Layout::

    SRC/images_upright/db/<name>.jpg                     → condition day,   split db
    SRC/images_upright/query/day/<camera>/<name>.jpg     → condition day,   split query
    SRC/images_upright/query/night/<camera>/<name>.jpg   → condition night, split query
    SRC/*.txt   optional poses ``<path below images_upright> qw qx qy qz tx ty tz``
"""

from __future__ import annotations

from collections.abc import Iterator

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase, list_images, read_pose_file


class AachenLayout(LayoutBase):
    name = "aachen"

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        fs, root = io.get_fs(src)
        poses: dict[str, tuple[float, ...]] = {}
        for p in sorted(fs.ls(root, detail=False)):
            if p.endswith(".txt"):
                poses.update(
                    read_pose_file(
                        io.read_bytes(io.full_uri(fs, p)).decode("utf-8", errors="replace")
                    )
                )
        files = list_images(src, "images_upright")
        if not files:
            raise io.DataPathError(
                f"{src!r} has no images_upright/ folder (Aachen Day-Night layout)"
            )
        for rel, uri in files:
            parts = rel.split("/")[1:]
            name = "/".join(parts)
            if parts[0] == "db" and len(parts) >= 2:
                yield Item(source=uri, condition="day", split="db", pose=poses.get(name))
            elif parts[0] == "query" and len(parts) >= 3 and parts[1] in ("day", "night"):
                yield Item(source=uri, condition=parts[1], split="query", pose=poses.get(name))
            else:
                yield BadRow(
                    "malformed_row", uri, "not under images_upright/db or query/{day,night}"
                )
