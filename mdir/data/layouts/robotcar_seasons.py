"""RobotCar Seasons (Sattler et al. 2018; MDUIT trains and evaluates on it; the thesis trains
CycleGAN day → night on its rear camera).

Layout::

    SRC/images/<condition>/<camera>/<timestamp>.jpg
        condition: overcast-reference, dawn, dusk, night, night-rain, overcast-summer,
                   overcast-winter, rain, snow, sun;  camera: left, rear, right
    SRC/*.txt   optional pose files, one ``<condition>/<camera>/<timestamp>.jpg qw qx qy qz
                tx ty tz`` per line (world→camera, the visuallocalization.net format),
                e.g. robotcar_v2_train.txt

Options (``-o KEY=VALUE``), defaults = the dataset as it is (what MDUIT uses):

- ``camera`` (``all``): ``rear`` / ``left`` / ``right`` keeps one camera; the others are
  skipped and counted as ``other_camera``.
- ``conditions`` (``raw``): ``raw`` keeps the dataset's names; ``day_night`` maps
  ``day_conditions`` → ``day`` and ``night_conditions`` → ``night``, keeps the dataset's name in
  the ``condition_raw`` column, and skips (counted as ``unused_condition``) any other
  condition.
- ``day_conditions`` (``sun,snow,rain,dawn,dusk``), ``night_conditions``
  (``night,night-rain``): the thesis's mapping (002_b6e89399c13f6b04, §3.1 "Robotcar":
  "sun, snow, rain, dawn and dusk are used for day, … night and night-rain … for night";
  2247 day and 878 night rear images). The overcast conditions are not in its day list — add
  them with ``day_conditions=sun,snow,rain,dawn,dusk,overcast-summer,overcast-winter``.
- ``val_fraction`` (0): ``0`` = the benchmark's splits: ``overcast-reference`` → ``db`` (the
  reference map); other images with a known pose → ``train``; without one → ``query``.
  ``> 0`` = a GAN training set: every kept image → ``train`` / ``val``, per condition
  ``round(val_fraction · n)`` held out in a seeded hash order (``split_seed``).

MDUIT's training set (its §4 "Dataset": positives and negatives come from the poses of the
*reference* category, and source/target pairs are drawn over the whole image set):
``-o val_fraction=0.05`` — every image, the posed overcast reference included, in
``train`` / ``val``; evaluate localization on an ingest with the benchmark's splits.
The thesis's set: ``-o camera=rear -o conditions=day_night -o val_fraction=0.1``. The
options, the mapping and the split rule are recorded in ``manifest.extra["layout"]``.
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
    parse_names,
    read_pose_file,
    seeded_val_split,
)

THESIS_DAY = ("sun", "snow", "rain", "dawn", "dusk")
THESIS_NIGHT = ("night", "night-rain")
CAMERAS = ("left", "rear", "right")


class RobotCarSeasonsLayout(LayoutBase):
    name = "robotcar_seasons"
    REFERENCE = "overcast-reference"

    def __init__(
        self,
        camera: str = "all",
        conditions: str = "raw",
        day_conditions: str | list[str] = THESIS_DAY,
        night_conditions: str | list[str] = THESIS_NIGHT,
        val_fraction: float | str = 0.0,
        split_seed: int | str = 0,
    ) -> None:
        if camera not in ("all", *CAMERAS):
            raise ValueError(f"layout option camera={camera!r}: choose all, left, rear or right")
        if conditions not in ("raw", "day_night"):
            raise ValueError(f"layout option conditions={conditions!r}: choose raw or day_night")
        self.camera = camera
        self.conditions = conditions
        self.day = parse_names(day_conditions, "day_conditions")
        self.night = parse_names(night_conditions, "night_conditions")
        if set(self.day) & set(self.night):
            raise ValueError(
                "layout options day_conditions and night_conditions share "
                f"{sorted(set(self.day) & set(self.night))}"
            )
        self.val_fraction = parse_fraction(val_fraction, "val_fraction")
        self.split_seed = int(split_seed)

    def _poses(self, src: str) -> dict[str, tuple[float, ...]]:
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

    def condition_of(self, raw: str) -> str | None:
        """The row's condition for the dataset's name `raw` (None: not used)."""
        if self.conditions == "raw":
            return raw
        if raw in self.day:
            return "day"
        if raw in self.night:
            return "night"
        return None

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        poses = self._poses(src)
        files = list_images(src, "images")
        if not files:
            raise io.DataPathError(
                f"{src!r} has no images/<condition>/<camera>/ folders (RobotCar Seasons layout)"
            )
        rows: list[tuple[str, str, str, str] | BadRow] = []  # name, uri, raw, condition
        by_cond: dict[str, list[str]] = {}
        for rel, uri in files:
            parts = rel.split("/")  # images, condition, camera, file
            if len(parts) < 4:
                rows.append(
                    BadRow("malformed_row", uri, "expected images/<condition>/<camera>/<file>")
                )
                continue
            name, raw, cam = "/".join(parts[1:]), parts[1], parts[2]
            if self.camera != "all" and cam != self.camera:
                rows.append(BadRow("other_camera", uri, f"camera {cam}, kept {self.camera}"))
                continue
            cond = self.condition_of(raw)
            if cond is None:
                rows.append(BadRow("unused_condition", uri, f"condition {raw} not mapped"))
                continue
            rows.append((name, uri, raw, cond))
            by_cond.setdefault(cond, []).append(name)
        val = seeded_val_split(by_cond, self.val_fraction, self.split_seed)
        for r in rows:  # in scan order, so row ids stay the file order
            if isinstance(r, BadRow):
                yield r
                continue
            name, uri, raw, cond = r
            pose = poses.get(name)
            if self.val_fraction > 0:
                split = "val" if name in val else "train"
            else:
                split = (
                    "db" if raw == self.REFERENCE else ("train" if pose is not None else "query")
                )
            yield Item(
                source=uri,
                condition=cond,
                pose=pose,
                split=split,
                condition_raw=raw if self.conditions == "day_night" else None,
            )

    def extra(self, src: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": "robotcar_seasons",
            "pose_convention": "camera centre + camera-to-world quaternion",
            "camera": self.camera,
            "conditions": self.conditions,
        }
        if self.conditions == "day_night":
            out["condition_map"] = {"day": list(self.day), "night": list(self.night)}
        if self.val_fraction > 0:
            out["split"] = {
                "by": "image, stratified by condition",
                "val_fraction": self.val_fraction,
                "seed": self.split_seed,
            }
        return out
