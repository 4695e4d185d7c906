"""Retrieval-SfM-120k / 30k (Radenović et al.; the thesis fine-tunes GeM on it).

Layout (as downloaded by cirtorch)::

    SRC/retrieval-SfM-120k.pkl   {'train': {'cids', 'cluster', 'qidxs', 'pidxs'}, 'val': {...}}
    SRC/ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>     image files (cirtorch's cid2filename)

Every image becomes a row of its split (train / val) with ``place`` = its SfM cluster (so
images of one 3-D model are positives of each other); the query/positive pairs are stored in
manifest.extra["layout"]["pairs"][split] as (query_id, positive_id) row ids. Condition
``day``. The pickle is read with an allow-list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase, read_first_pickle


def cid2path(cid: str) -> str:
    return f"{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}"


class RetrievalSfMLayout(LayoutBase):
    name = "retrieval_sfm"

    def __init__(self, name: str = "") -> None:
        self.dbname = name

    def _db(self, src: str) -> dict[str, Any]:
        names = (
            [f"{self.dbname}.pkl"]
            if self.dbname
            else ["retrieval-SfM-120k.pkl", "retrieval-SfM-30k.pkl"]
        )
        return read_first_pickle(src, names, "Retrieval-SfM")[1]

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        db = self._db(src)
        for split in ("train", "val"):
            if split not in db:
                continue
            d = db[split]
            for cid, cl in zip(d["cids"], d["cluster"], strict=True):
                yield Item(
                    source=io.join(src, "ims", cid2path(str(cid))),
                    condition="day",
                    split=split,
                    place=int(cl),
                )

    def extra(self, src: str) -> dict[str, Any]:
        db = self._db(src)
        pairs: dict[str, list[list[int]]] = {}
        offset = 0
        for split in ("train", "val"):
            if split not in db:
                continue
            d = db[split]
            pairs[split] = [
                [offset + int(q), offset + int(p)]
                for q, p in zip(d.get("qidxs", []), d.get("pidxs", []), strict=True)
            ]
            offset += len(d["cids"])
        return {"dataset": "retrieval_sfm", "pairs": pairs}
