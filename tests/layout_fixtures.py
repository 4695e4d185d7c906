"""Tiny datasets written in the papers' on-disk layouts, shared by the layout tests (does the
ingest read them?) and the retrieval tests (does evaluation use what the ingest kept?)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpg(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A random JPEG of `size` (h, w) at `path`, parents created; the seed makes images differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG")
    path.write_bytes(b.getvalue())


def write_revisited(
    src: Path, imlist: list[str], qimlist: list[str], gnd: list[dict], size: tuple[int, int]
) -> None:
    """Revisited Oxford: jpg/NAME.jpg (database then queries) and gnd_roxford5k.pkl."""
    for i, n in enumerate(imlist + qimlist):
        write_jpg(src / "jpg" / f"{n}.jpg", i, size)
    pkl = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    (src / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(pkl))


def write_tokyo247(
    src: Path, queries: dict[str, str], utm_q: list[list[float]], size: tuple[int, int]
) -> None:
    """Tokyo 24/7: three database images (00001/a_0, 00001/a_1, 00002/b_0 at UTM east 100,
    101, 900 / north 50, 50, 70), the query images, tokyo247.mat (positives within 25 m)
    and query_conditions.csv from `queries` (name -> condition; `utm_q` rows east, north)."""
    from scipy.io import savemat

    db = ["00001/a_0.jpg", "00001/a_1.jpg", "00002/b_0.jpg"]
    q = list(queries)
    for i, n in enumerate(db):
        write_jpg(src / "database" / n, i, size)
    for i, n in enumerate(q):
        write_jpg(src / "query" / n, 10 + i, size)
    st = {
        "whichSet": "test",
        "dbImageFns": np.array(db, dtype=object).reshape(-1, 1),
        "utmDb": np.array([[100.0, 101.0, 900.0], [50.0, 50.0, 70.0]]),
        "qImageFns": np.array(q, dtype=object).reshape(-1, 1),
        "utmQ": np.array(utm_q),
        "posDistThr": 25.0,
    }
    savemat(src / "tokyo247.mat", {"dbStruct": st})
    rows = "".join(f"{n},{c}\n" for n, c in queries.items())
    (src / "query_conditions.csv").write_text("name,condition\n" + rows)
