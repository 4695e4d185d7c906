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


def write_transient_attributes(
    src: Path, webcams: dict[str, tuple[int, int]], size: tuple[int, int]
) -> None:
    """Transient Attributes: per webcam, (day images with daylight 0.95 / night 0.02, night
    images with daylight 0.01 / night 0.97) in imageLF/ plus annotations/; attributes are
    (dirty, daylight, night, snow), values as ``value,confidence``."""
    (src / "annotations").mkdir(parents=True, exist_ok=True)
    (src / "annotations/attributes.txt").write_text("dirty\ndaylight\nnight\nsnow\n")
    lines, k = [], 0
    for cam, (n_day, n_night) in webcams.items():
        for kind, n, daylight, night in (("d", n_day, 0.95, 0.02), ("n", n_night, 0.01, 0.97)):
            for i in range(n):
                name = f"{cam}/{kind}{i}.jpg"
                write_jpg(src / "imageLF" / name, 1000 + k, size)
                k += 1
                lines.append(f"{name}\t0,1\t{daylight},1\t{night},1\t0,1")
    (src / "annotations/annotations.tsv").write_text("\n".join(lines) + "\n")


ROBOTCAR_CONDITIONS = (
    "overcast-reference",
    "overcast-summer",
    "sun",
    "snow",
    "rain",
    "dawn",
    "dusk",
    "night",
    "night-rain",
)


def write_robotcar_seasons(
    src: Path, per_condition: int, size: tuple[int, int], cameras=("left", "rear", "right")
) -> None:
    """RobotCar Seasons: images/<condition>/<camera>/<ts>.jpg, `per_condition` images per
    condition and camera, for the conditions in ROBOTCAR_CONDITIONS."""
    k = 0
    for cond in ROBOTCAR_CONDITIONS:
        for cam in cameras:
            for i in range(per_condition):
                write_jpg(
                    src / "images" / cond / cam / f"{100 * k + i}.jpg", 2000 + k * 10 + i, size
                )
            k += 1


def write_aachen(src: Path, n_db: int, n_day: int, n_night: int, size: tuple[int, int]) -> None:
    """Aachen Day-Night: db images, day and night queries."""
    for i in range(n_db):
        write_jpg(src / f"images_upright/db/{i}.jpg", 3000 + i, size)
    for i in range(n_day):
        write_jpg(src / f"images_upright/query/day/milestone/{i}.jpg", 3500 + i, size)
    for i in range(n_night):
        write_jpg(src / f"images_upright/query/night/nexus5x/{i}.jpg", 3800 + i, size)


def write_retrieval_sfm(
    src: Path, cids: dict[str, list[str]], clusters: dict[str, list[int]], size: tuple[int, int]
) -> None:
    """Retrieval-SfM: ims/<cid2path>/<cid> and retrieval-SfM-120k.pkl (one query/positive
    pair per split when it has two images)."""
    from mdir.data.layouts.retrieval_sfm import cid2path

    k = 0
    db = {}
    for split, lst in cids.items():
        for c in lst:
            write_jpg(src / "ims" / cid2path(c), 4000 + k, size)
            k += 1
        pair = len(lst) >= 2
        db[split] = {
            "cids": lst,
            "cluster": clusters[split],
            "qidxs": [0] if pair else [],
            "pidxs": [1] if pair else [],
        }
    (src / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))


def write_thesis_datasets(root: Path) -> None:
    """The thesis's five GAN training sets, written in the real layouts and ingested with
    the options the grid's header names (README "Reproducing the papers")."""
    from mdir.data.ingest import ingest

    size = (24, 32)
    raw = root / "raw"
    write_aachen(raw / "aachen", n_db=6, n_day=4, n_night=10, size=size)
    ingest(
        str(raw / "aachen"), str(root / "aachen"), "aachen", layout_options={"val_fraction": "0.1"}
    )
    write_robotcar_seasons(raw / "robotcar", 2, size, cameras=("left", "rear"))
    ingest(
        str(raw / "robotcar"),
        str(root / "robotcar"),
        "robotcar_seasons",
        layout_options={"camera": "rear", "conditions": "day_night", "val_fraction": "0.1"},
    )
    cids = {"train": [f"{i:06d}t{i}" for i in range(4)], "val": [f"{i:06d}v{i}" for i in range(2)]}
    write_retrieval_sfm(raw / "sfm", cids, {"train": [1, 1, 2, 2], "val": [3, 3]}, size)
    labels = raw / "sfm_daynight.txt"
    labels.write_text(
        "".join(
            f"{c} {'night' if i % 2 else 'day'}\n"
            for lst in cids.values()
            for i, c in enumerate(lst)
        )
    )
    ingest(
        str(raw / "sfm"),
        str(root / "retrieval_sfm"),
        "retrieval_sfm",
        layout_options={"labels": f"list:{labels}"},
    )
    write_transient_attributes(raw / "ta", {f"cam{i}": (2, 1) for i in range(10)}, size)
    ingest(str(raw / "ta"), str(root / "transient_attributes"), "transient_attributes")
    ingest(
        str(raw / "ta"),
        str(root / "transient_attributes_images"),
        "transient_attributes",
        layout_options={"output": "images"},
    )
