"""Retrieval-SfM-120k / 30k (Radenović et al.; the thesis fine-tunes GeM on it and trains its
best GAN, CycleGAN day → night, on it).

Layout (as downloaded by cirtorch)::

    SRC/retrieval-SfM-120k.pkl   {'train': {'cids', 'cluster', 'qidxs', 'pidxs'}, 'val': {...}}
    SRC/ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>     image files (cirtorch's cid2filename)

Every image becomes a row of its split (train / val) with ``place`` = its SfM cluster (so
images of one 3-D model are positives of each other); the query/positive pairs are stored in
manifest.extra["layout"]["pairs"][split] as (query_id, positive_id) row ids. The pickle is
read with an allow-list.

Day / night labels (option ``labels``; the pickle has none). The thesis (002_b6e89399c13f6b04,
§3.1) used the day/night annotations of "From dusk till dawn" (Radenović et al. 2016): 146714
day and 16957 night images, minus those with a side under 512 px (``mdir data ingest
--min-size 512``) → 118910 day, 13710 night. Choose one:

- ``none`` (default): every image ``day`` (retrieval fine-tuning needs no label).
- ``list:<file>``: a text file, one ``<cid> <condition>`` per line (whitespace or comma
  separated; ``#`` comments; the cid may also be written as its ``ims/…`` path). An image the
  list does not name is skipped and counted as ``unlabelled`` (row ids stay stable); a line
  that does not parse is counted as ``malformed_label``.
- ``brightness:<t>``: ``night`` when the mean luma (0–1, ITU-R 601) of the image is below
  ``t``, else ``day`` — a crude rule (dusk, indoor, dark facades) to use only without a list.

The source, the file's sha256 and the per-condition label counts are recorded in
``manifest.extra["layout"]["labels"]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase, read_first_pickle


def cid2path(cid: str) -> str:
    return f"{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}"


def parse_label_list(text: str) -> tuple[dict[str, str], int]:
    """``<cid or ims/…/cid> <condition>`` lines → ({cid: condition}, malformed lines)."""
    labels: dict[str, str] = {}
    bad = 0
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            bad += 1
            continue
        labels[parts[0].rsplit("/", 1)[-1]] = parts[1]
    return labels, bad


def mean_luma(data: bytes) -> float:
    """Mean ITU-R 601 luma of an encoded image, in [0, 1] (on a ≤ 256 px thumbnail)."""
    import io as _io

    import numpy as np
    from PIL import Image

    with Image.open(_io.BytesIO(data)) as im:
        im.thumbnail((256, 256))
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 255.0)


class RetrievalSfMLayout(LayoutBase):
    name = "retrieval_sfm"

    def __init__(self, name: str = "", labels: str = "none") -> None:
        self.dbname = name
        self.labels = labels.strip()
        kind = self.labels.split(":", 1)[0]
        if kind not in ("none", "list", "brightness") or (
            kind != "none" and ":" not in self.labels
        ):
            raise ValueError(
                f"layout option labels={labels!r}: use none, list:<file> or brightness:<t>"
            )
        self.threshold: float | None = None
        if kind == "brightness":
            try:
                self.threshold = float(self.labels.split(":", 1)[1])
            except ValueError:
                raise ValueError(
                    f"layout option labels={labels!r}: brightness:<t> needs a number in (0, 1)"
                ) from None
            if not 0.0 < self.threshold < 1.0:
                raise ValueError(
                    f"layout option labels={labels!r}: brightness:<t> needs a number in (0, 1)"
                )
        self._list: tuple[dict[str, str], int, str] | None = None

    def _db(self, src: str) -> dict[str, Any]:
        names = (
            [f"{self.dbname}.pkl"]
            if self.dbname
            else ["retrieval-SfM-120k.pkl", "retrieval-SfM-30k.pkl"]
        )
        return read_first_pickle(src, names, "Retrieval-SfM")[1]

    def _label_list(self) -> tuple[dict[str, str], int, str]:
        """(labels, malformed lines, sha256 of the file), read once."""
        if self._list is None:
            path = self.labels.split(":", 1)[1]
            fs, p = io.get_fs(path)
            if not fs.exists(p):
                raise io.DataPathError(f"layout option labels: label list {path!r} not found")
            data = io.read_bytes(path)
            labels, bad = parse_label_list(data.decode("utf-8", errors="replace"))
            self._list = (labels, bad, hashlib.sha256(data).hexdigest())
        return self._list

    def _condition(self, cid: str, uri: str) -> str | BadRow:
        if self.labels == "none":
            return "day"
        if self.threshold is not None:
            try:
                luma = mean_luma(io.read_bytes(uri))
            except Exception as e:  # unreadable: the ingest's own read reports it again
                return BadRow("unreadable", uri, f"{type(e).__name__}: {e}")
            return "night" if luma < self.threshold else "day"
        cond = self._label_list()[0].get(cid)
        if cond is None:
            return BadRow("unlabelled", uri, "not in the label list")
        return cond

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        db = self._db(src)
        for split in ("train", "val"):
            if split not in db:
                continue
            d = db[split]
            for cid, cl in zip(d["cids"], d["cluster"], strict=True):
                uri = io.join(src, "ims", cid2path(str(cid)))
                cond = self._condition(str(cid), uri)
                if isinstance(cond, BadRow):
                    yield cond
                    continue
                yield Item(source=uri, condition=cond, split=split, place=int(cl))
        if self.labels.startswith("list:"):  # last, so image row ids stay the pickle's order
            for _ in range(self._label_list()[1]):
                yield BadRow("malformed_label", self.labels[5:], "expected '<cid> <condition>'")

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
        labels: dict[str, Any] = {"source": self.labels.split(":", 1)[0]}
        if self.threshold is not None:
            labels["rule"] = f"night if mean luma < {self.threshold}"
        if self.labels.startswith("list:"):
            table, _, digest = self._label_list()
            labels.update(file=self.labels[5:], sha256=digest, entries=len(table))
        return {"dataset": "retrieval_sfm", "pairs": pairs, "labels": labels}
