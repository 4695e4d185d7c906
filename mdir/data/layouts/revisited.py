"""Revisited Oxford / Paris (Radenović et al. 2018): roxford5k, rparis6k.

Layout (as downloaded by cirtorch)::

    SRC/jpg/<name>.jpg
    SRC/gnd_roxford5k.pkl | gnd_rparis6k.pkl   {'imlist': [...], 'qimlist': [...],
                                                'gnd': [{'bbx', 'easy', 'hard', 'junk'}]}

Database images (imlist order) get ids 0..N-1 (split ``db``), queries ids N..N+Q-1 (split
``query``), so the ground truth maps to row ids directly; it is stored in
manifest.extra["layout"]["gnd"] with ``query_id``, ``bbx`` and easy / hard / junk as
database row ids (the Easy / Medium / Hard protocols are built from those). All images are
condition ``day``. The pickle is read with an allow-list (no arbitrary code).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase, read_first_pickle


class RevisitedLayout(LayoutBase):
    name = "revisited"

    def __init__(self, dataset: str = "") -> None:
        self.dataset = dataset

    def _gnd(self, src: str) -> tuple[str, dict[str, Any]]:
        names = (
            [f"gnd_{self.dataset}.pkl"]
            if self.dataset
            else ["gnd_roxford5k.pkl", "gnd_rparis6k.pkl"]
        )
        n, gnd = read_first_pickle(src, names, "revisited Oxford/Paris")
        return n[4:-4], gnd

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        _, g = self._gnd(src)
        for name in g["imlist"]:
            yield Item(
                source=io.join(src, "jpg", f"{name}.jpg"), condition="day", split="db", place=None
            )
        for name in g["qimlist"]:
            yield Item(source=io.join(src, "jpg", f"{name}.jpg"), condition="day", split="query")

    def extra(self, src: str) -> dict[str, Any]:
        ds, g = self._gnd(src)
        n = len(g["imlist"])
        gnd = []
        for q, e in enumerate(g["gnd"]):
            gnd.append(
                {
                    "query_id": n + q,
                    "bbx": [float(v) for v in (e.get("bbx") if e.get("bbx") is not None else [])],
                    "easy": [int(i) for i in e.get("easy", [])],
                    "hard": [int(i) for i in e.get("hard", [])],
                    "junk": [int(i) for i in e.get("junk", [])],
                }
            )
        return {"dataset": ds, "gnd": gnd}
