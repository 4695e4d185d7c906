"""Tokyo 24/7 (Torii et al. 2015) as distributed with NetVLAD's ``tokyo247.mat``.

Layout::

    SRC/tokyo247.mat     dbStruct: dbImageFns, utmDb (2×N), qImageFns, utmQ (2×Q), posDistThr
    SRC/database/<dbImageFns[i]>     database images (daytime Street View)  → day, split db
    SRC/query/<qImageFns[j]>         query images (day / sunset / night)    → split query
    SRC/query_conditions.csv         optional ``name,condition`` (day|sunset|night) per query

Without the CSV a query's condition is taken from its file name when it contains
day / sunset / night, else it is ``query``. Poses: (easting, northing, 0) from UTM with an
identity rotation (orientation unknown); positives are database images within
``posDistThr`` metres (25 m), stored in manifest.extra as ``pos_dist_thr``.
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Iterator
from typing import Any

import numpy as np

from mdir.data import io
from mdir.data.layouts.base import BadRow, Item, LayoutBase


def _cellstr(a: Any) -> list[str]:
    return [
        str(np.asarray(x).squeeze()) if not isinstance(x, str) else x
        for x in np.asarray(a, dtype=object).ravel()
    ]


def load_db_struct(data: bytes) -> dict[str, Any]:
    """NetVLAD dbStruct (.mat v5) → dict of plain Python / numpy values."""
    from scipy.io import loadmat

    m = loadmat(_io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    s = m["dbStruct"]
    get = (lambda k: getattr(s, k)) if hasattr(s, "_fieldnames") else (lambda k: s[k])
    utm_db = np.asarray(get("utmDb"), np.float64).reshape(2, -1)
    utm_q = np.asarray(get("utmQ"), np.float64).reshape(2, -1)
    try:
        thr = float(np.asarray(get("posDistThr")).squeeze())
    except (AttributeError, KeyError, ValueError):
        thr = 25.0
    return {
        "db": _cellstr(get("dbImageFns")),
        "utm_db": utm_db,
        "q": _cellstr(get("qImageFns")),
        "utm_q": utm_q,
        "pos_dist_thr": thr,
    }


class Tokyo247Layout(LayoutBase):
    name = "tokyo247"

    def _struct(self, src: str) -> dict[str, Any]:
        uri = io.join(src, "tokyo247.mat")
        fs, path = io.get_fs(uri)
        if not fs.exists(path):
            raise io.DataPathError(f"{src!r} has no tokyo247.mat (Tokyo 24/7 layout)")
        return load_db_struct(io.read_bytes(uri))

    def _query_conditions(self, src: str) -> dict[str, str]:
        uri = io.join(src, "query_conditions.csv")
        fs, path = io.get_fs(uri)
        if not fs.exists(path):
            return {}
        rows = csv.DictReader(_io.StringIO(io.read_bytes(uri).decode()))
        return {r["name"]: r["condition"] for r in rows if r.get("name") and r.get("condition")}

    def scan(self, src: str) -> Iterator[Item | BadRow]:
        s = self._struct(src)
        qcond = self._query_conditions(src)
        if len(s["db"]) != s["utm_db"].shape[1] or len(s["q"]) != s["utm_q"].shape[1]:
            raise ValueError(f"{src!r}: tokyo247.mat image lists and UTM arrays differ in length")
        for i, name in enumerate(s["db"]):
            e, n = s["utm_db"][:, i]
            yield Item(
                source=io.join(src, "database", name),
                condition="day",
                split="db",
                pose=(e, n, 0.0, 1.0, 0.0, 0.0, 0.0),
            )
        for j, name in enumerate(s["q"]):
            e, n = s["utm_q"][:, j]
            cond = qcond.get(name) or next(
                (c for c in ("night", "sunset", "day") if c in name.lower()), "query"
            )
            yield Item(
                source=io.join(src, "query", name),
                condition=cond,
                split="query",
                pose=(e, n, 0.0, 1.0, 0.0, 0.0, 0.0),
            )

    def extra(self, src: str) -> dict[str, Any]:
        s = self._struct(src)
        return {
            "dataset": "tokyo247",
            "pos_dist_thr": s["pos_dist_thr"],
            "orientation": "unknown (identity)",
        }
