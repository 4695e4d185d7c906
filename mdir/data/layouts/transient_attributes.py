"""Transient Attributes (Laffont et al. 2014) → day/night pairs for pix2pix (thesis).

Layout::

    SRC/imageLF/<webcam>/<name>.jpg
    SRC/annotations/attributes.txt     one attribute name per line (daylight, night, ...)
    SRC/annotations/annotations.tsv    ``<webcam>/<name>.jpg<TAB>v,c<TAB>v,c ...`` (value,
                                       confidence per attribute, in attributes.txt order)

Night images are those with ``night > night_threshold`` (0.9, as in the thesis); day
images those with ``daylight > day_threshold`` (0.9). Each night image is paired with a
day image of the same webcam (same viewpoint): the day images of that webcam in
decreasing daylight order, cycled, so pairs are deterministic and spread. Output is a
paired dataset: ``image`` = day, ``image_b`` = night, ``place`` = webcam.
"""

from __future__ import annotations

from collections.abc import Iterator

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase


class TransientAttributesLayout(LayoutBase):
    name = "transient_attributes"
    paired = True

    def __init__(
        self, night_threshold: float | str = 0.9, day_threshold: float | str = 0.9
    ) -> None:
        self.night_threshold = float(night_threshold)
        self.day_threshold = float(day_threshold)

    def scan(self, src: str) -> Iterator[Item | BadRow]:
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
        day: dict[str, list[tuple[float, str]]] = {}
        night: dict[str, list[str]] = {}
        bad: list[BadRow] = []
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
                bad.append(
                    BadRow(
                        "malformed_row", f"{ann_uri}:{n}", "expected name<TAB>value,confidence ..."
                    )
                )
                continue
            if v_night > self.night_threshold:
                night.setdefault(cam, []).append(name)
            elif v_day > self.day_threshold:
                day.setdefault(cam, []).append((-v_day, name))
        yield from bad
        for cam in sorted(night):
            days = [nm for _, nm in sorted(day.get(cam, []))]
            for k, nname in enumerate(sorted(night[cam])):
                src_n = io.join(src, "imageLF", nname)
                if not days:
                    yield BadRow("unpaired", src_n, f"webcam {cam} has no day image")
                    continue
                src_d = io.join(src, "imageLF", days[k % len(days)])
                yield Item(
                    source=src_d, condition="day", source_b=src_n, condition_b="night", place=cam
                )
