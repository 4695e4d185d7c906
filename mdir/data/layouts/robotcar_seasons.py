"""RobotCar Seasons (Sattler et al. 2018; MDUIT trains and evaluates on it).

Layout::

    SRC/images/<condition>/<camera>/<timestamp>.jpg
        condition: overcast-reference, dawn, dusk, night, night-rain, overcast-summer,
                   overcast-winter, rain, snow, sun;  camera: left, rear, right
    SRC/*.txt   optional pose files, one ``<condition>/<camera>/<timestamp>.jpg qw qx qy qz
                tx ty tz`` per line (world→camera, the visuallocalization.net format),
                e.g. robotcar_v2_train.txt

Splits: ``overcast-reference`` → ``db`` (the reference map); other images with a known pose
→ ``train``; without one → ``query`` (test queries, poses withheld by the benchmark).
Condition names are kept as the dataset spells them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase, list_images


class RobotCarSeasonsLayout(LayoutBase):
    name = "robotcar_seasons"
    REFERENCE = "overcast-reference"

    def _poses(self, src: str) -> dict[str, tuple[float, ...]]:
        from mdir.data.layouts.base import read_pose_file

        fs, root = io.get_fs(src)
        out: dict[str, tuple[float, ...]] = {}
        for p in sorted(fs.ls(root, detail=False)):
            if p.endswith(".txt"):
                out.update(
                    read_pose_file(
                        io.read_bytes(io.full_uri(fs, p)).decode("utf-8", errors="replace")
                    )
                )
        return out

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        poses = self._poses(src)
        files = list_images(src, "images")
        if not files:
            raise io.DataPathError(
                f"{src!r} has no images/<condition>/<camera>/ folders (RobotCar Seasons layout)"
            )
        for rel, uri in files:
            parts = rel.split("/")  # images, condition, camera, file
            if len(parts) < 4:
                yield BadRow("malformed_row", uri, "expected images/<condition>/<camera>/<file>")
                continue
            name = "/".join(parts[1:])
            cond = parts[1]
            pose = poses.get(name)
            split = "db" if cond == self.REFERENCE else ("train" if pose is not None else "query")
            yield Item(source=uri, condition=cond, pose=pose, split=split)

    def extra(self, src: str) -> dict[str, Any]:
        return {
            "dataset": "robotcar_seasons",
            "pose_convention": "camera centre + camera-to-world quaternion",
        }
