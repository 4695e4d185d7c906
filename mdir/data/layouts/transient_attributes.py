"""Transient Attributes (Laffont et al. 2014) → the thesis's day/night pairs for pix2pix.

Layout::

    SRC/imageLF/<webcam>/<name>.jpg
    SRC/annotations/attributes.txt     one attribute name per line (daylight, night, ...)
    SRC/annotations/annotations.tsv    ``<webcam>/<name>.jpg<TAB>v,c<TAB>v,c ...`` (value,
                                       confidence per attribute, in attributes.txt order)

The thesis (002_b6e89399c13f6b04, §3.1 "Transattr"): keep the webcams with at least one image
whose ``night`` attribute is > 0.9 (69 webcams), and pair, per webcam, *every* such night
image with *every* remaining image of that webcam — the Cartesian product, 4774 day and 310
night unique images in the thesis's count. So, per webcam with D day and N night images,
D × N pairs (same viewpoint, so pix2pix sees aligned pairs).

Options (``-o KEY=VALUE``):

- ``night_threshold`` (0.9): night images are those with ``night > night_threshold``.
- ``day_threshold`` (``none``): ``none`` = the thesis's rule, every remaining image of the
  webcam is a day image; a number = only images with ``daylight > day_threshold`` (a
  stricter variant; images that are neither are then left out).
- ``val_fraction`` (0.1), ``split_seed`` (0): whole webcams are held out as ``val`` (seeded,
  see `seeded_val_split`), so no validation image — day or night — is seen in training.

- ``output`` (``pairs``): ``pairs`` = a paired dataset for pix2pix, ``image`` = day,
  ``image_b`` = night; ``images`` = the same webcams' unique day and night images as single
  rows (conditions ``day`` / ``night``) for CycleGAN, which the thesis also trained on
  Transattr (its 4774 day / 310 night images are these).

``place`` = webcam. The options, webcam count and unique day/night counts are in
``manifest.extra["layout"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase, parse_fraction, seeded_val_split


@dataclass
class _Webcams:
    """What the annotations say, per webcam: day and night image names (sorted)."""

    day: dict[str, list[str]] = field(default_factory=dict)
    night: dict[str, list[str]] = field(default_factory=dict)
    bad: list[BadRow] = field(default_factory=list)


class TransientAttributesLayout(LayoutBase):
    name = "transient_attributes"
    paired = True

    def __init__(
        self,
        night_threshold: float | str = 0.9,
        day_threshold: float | str | None = None,
        val_fraction: float | str = 0.1,
        split_seed: int | str = 0,
        output: str = "pairs",
    ) -> None:
        if output not in ("pairs", "images"):
            raise ValueError(f"layout option output={output!r}: choose pairs or images")
        self.output = output
        self.paired = output == "pairs"
        self.night_threshold = float(night_threshold)
        self.day_threshold = (
            None
            if day_threshold is None or str(day_threshold).lower() in ("none", "")
            else float(day_threshold)
        )
        self.val_fraction = parse_fraction(val_fraction, "val_fraction")
        self.split_seed = int(split_seed)

    def _read(self, src: str) -> _Webcams:
        attrs_uri = io.join(src, "annotations", "attributes.txt")
        ann_uri = io.join(src, "annotations", "annotations.tsv")
        for u in (attrs_uri, ann_uri):
            if not io.get_fs(u)[0].exists(io.get_fs(u)[1]):
                raise io.DataPathError(f"{src!r}: missing {u} (Transient Attributes layout)")
        attrs = [a.strip() for a in io.read_bytes(attrs_uri).decode().splitlines() if a.strip()]
        try:
            i_night, i_day = attrs.index("night"), attrs.index("daylight")
        except ValueError:
            raise ValueError(f"{attrs_uri}: needs 'night' and 'daylight' attributes") from None
        cams = _Webcams()
        for n, line in enumerate(
            io.read_bytes(ann_uri).decode("utf-8", errors="replace").splitlines(), 1
        ):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                vals = [float(p.split(",")[0]) for p in parts[1:]]
                name = parts[0].strip()
                cam = name.split("/")[0]
                v_night, v_day = vals[i_night], vals[i_day]
            except (ValueError, IndexError):
                cams.bad.append(
                    BadRow(
                        "malformed_row", f"{ann_uri}:{n}", "expected name<TAB>value,confidence ..."
                    )
                )
                continue
            if v_night > self.night_threshold:
                cams.night.setdefault(cam, []).append(name)
            elif self.day_threshold is None or v_day > self.day_threshold:
                cams.day.setdefault(cam, []).append(name)
        for d in (cams.day, cams.night):
            for cam in d:
                d[cam].sort()
        return cams

    def _val_webcams(self, cams: _Webcams) -> set[str]:
        paired = [c for c in cams.night if cams.day.get(c)]
        return seeded_val_split({"webcams": paired}, self.val_fraction, self.split_seed)

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        cams = self._read(src)
        yield from cams.bad
        val = self._val_webcams(cams)
        for cam in sorted(cams.night):  # webcams with ≥ 1 night image (thesis: 69)
            days = cams.day.get(cam, [])
            if not days:
                for nname in cams.night[cam]:
                    yield BadRow(
                        "unpaired", io.join(src, "imageLF", nname), f"webcam {cam} has no day image"
                    )
                continue
            split = "val" if cam in val else "train"
            if self.output == "images":
                for cond, names in (("day", days), ("night", cams.night[cam])):
                    for name in names:
                        yield Item(
                            source=io.join(src, "imageLF", name),
                            condition=cond,
                            place=cam,
                            split=split,
                        )
                continue
            for nname in cams.night[cam]:  # Cartesian product: every night × every day image
                src_n = io.join(src, "imageLF", nname)
                for dname in days:
                    yield Item(
                        source=io.join(src, "imageLF", dname),
                        condition="day",
                        source_b=src_n,
                        condition_b="night",
                        place=cam,
                        split=split,
                    )

    def extra(self, src: str) -> dict[str, Any]:
        cams = self._read(src)
        used = [c for c in cams.night if cams.day.get(c)]
        return {
            "dataset": "transient_attributes",
            "output": self.output,
            "pairing": "cartesian product per webcam (thesis §3.1)",
            "night_threshold": self.night_threshold,
            "day_threshold": self.day_threshold,
            "webcams": len(used),
            "unique_day_images": sum(len(cams.day[c]) for c in used),
            "unique_night_images": sum(len(cams.night[c]) for c in used),
            "split": {
                "by": "webcam",
                "val_fraction": self.val_fraction,
                "seed": self.split_seed,
                "val_webcams": sorted(self._val_webcams(cams)),
            },
        }
