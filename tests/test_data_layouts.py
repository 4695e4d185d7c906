"""Dataset layouts of the papers, each on a tiny fixture written in the real layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import write_jpg, write_revisited, write_tokyo247

from mdir.data.ingest import ingest
from mdir.data.layouts import LAYOUTS, get_layout
from mdir.data.layouts.base import safe_unpickle, world_to_camera_to_pose
from mdir.data.shards import read_all

SIZE = (24, 32)


def _jpg(path: Path, seed: int) -> None:
    write_jpg(path, seed, SIZE)


def test_registry_lists_all_layouts():
    assert {
        "folders",
        "paired",
        "list",
        "robotcar_seasons",
        "aachen",
        "transient_attributes",
        "tokyo247",
        "revisited",
        "retrieval_sfm",
    } <= set(LAYOUTS)
    with pytest.raises(ValueError, match="choose one of"):
        get_layout("oxford")


def test_pose_conversion_world_to_camera():
    # camera rotated 90° about z, at world (1, 2, 3): t = -R c
    c = np.array([1.0, 2.0, 3.0])
    qw, qz = np.cos(np.pi / 4), np.sin(np.pi / 4)  # world->camera rotation of +90° about z
    r = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    t = -r @ c
    pose = world_to_camera_to_pose(qw, 0, 0, qz, *t)
    assert np.allclose(pose[:3], c) and np.allclose(pose[3:], [qw, 0, 0, -qz])


def test_robotcar_seasons(tmp_path):
    src = tmp_path / "rc"
    names = [
        "overcast-reference/rear/100.jpg",
        "overcast-reference/left/101.jpg",
        "night/rear/200.jpg",
        "snow/right/300.jpg",
        "night-rain/rear/400.jpg",
    ]
    for i, n in enumerate(names):
        _jpg(src / "images" / n, i)
    (src / "robotcar_v2_train.txt").write_text("night/rear/200.jpg 1 0 0 0 -5 0 0\noops line\n")
    m = ingest(str(src), str(tmp_path / "out"), "robotcar_seasons")
    t = read_all(m).to_pylist()
    by = {r["source"].split("images/")[1]: r for r in t}
    assert by["overcast-reference/rear/100.jpg"]["split"] == "db"
    assert by["night/rear/200.jpg"]["split"] == "train" and by["night/rear/200.jpg"]["pose"][
        :3
    ] == [5, 0, 0]
    assert by["snow/right/300.jpg"]["split"] == "query" and by["snow/right/300.jpg"]["pose"] is None
    assert set(m.conditions) == {"overcast-reference", "night", "snow", "night-rain"}


def test_aachen(tmp_path):
    src = tmp_path / "aachen"
    _jpg(src / "images_upright/db/1.jpg", 1)
    _jpg(src / "images_upright/db/2.jpg", 2)
    _jpg(src / "images_upright/query/day/milestone/3.jpg", 3)
    _jpg(src / "images_upright/query/night/nexus5x/4.jpg", 4)
    _jpg(src / "images_upright/other/5.jpg", 5)
    m = ingest(str(src), str(tmp_path / "out"), "aachen")
    assert m.counts == {"db": {"day": 2}, "query": {"day": 1, "night": 1}}
    assert m.skipped == {"malformed_row": 1}


def test_tokyo247(tmp_path):
    src = tmp_path / "tokyo"
    queries = {"247query_v3/00001.jpg": "night", "247query_v3/00002.jpg": "sunset"}
    write_tokyo247(src, queries, [[100.5, 899.0], [51.0, 71.0]], SIZE)
    m = ingest(str(src), str(tmp_path / "out"), "tokyo247")
    assert m.counts == {"db": {"day": 3}, "query": {"night": 1, "sunset": 1}}
    assert m.extra["layout"]["pos_dist_thr"] == 25.0
    rows = {r["id"]: r for r in read_all(m).to_pylist()}
    assert rows[0]["pose"][:2] == [100.0, 50.0] and rows[4]["pose"][:2] == [899.0, 71.0]


def test_revisited(tmp_path):
    src = tmp_path / "roxford"
    write_revisited(
        src,
        ["all_souls_1", "radcliffe_2", "magdalen_3"],
        ["all_souls_q"],
        [{"bbx": [1.0, 2.0, 20.0, 20.0], "easy": np.array([0]), "hard": [2], "junk": [1]}],
        SIZE,
    )
    m = ingest(str(src), str(tmp_path / "out"), "revisited")
    assert m.counts == {"db": {"day": 3}, "query": {"day": 1}}
    g = m.extra["layout"]["gnd"][0]
    assert g == {
        "query_id": 3,
        "bbx": [1.0, 2.0, 20.0, 20.0],
        "easy": [0],
        "hard": [2],
        "junk": [1],
    }
    rows = {r["id"]: r for r in read_all(m).to_pylist()}
    assert rows[3]["split"] == "query" and rows[0]["source"].endswith("all_souls_1.jpg")


def test_safe_unpickle_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_unpickle(pickle.dumps(Evil()))


def test_transient_attributes_pairs(tmp_path):
    src = tmp_path / "ta"
    attrs = ["dirty", "daylight", "night", "snow"]
    (src / "annotations").mkdir(parents=True)
    (src / "annotations/attributes.txt").write_text("\n".join(attrs) + "\n")
    lines = [
        "cam1/d1.jpg\t0,1\t0.95,1\t0.02,1\t0,1",
        "cam1/d2.jpg\t0,1\t0.99,1\t0.00,1\t0,1",
        "cam1/n1.jpg\t0,1\t0.01,1\t0.97,1\t0,1",
        "cam1/n2.jpg\t0,1\t0.05,1\t0.92,1\t0,1",
        "cam1/mid.jpg\t0,1\t0.5,1\t0.5,1\t0,1",  # neither
        "cam2/n1.jpg\t0,1\t0.0,1\t0.99,1\t0,1",  # night without a day image
        "broken line",
    ]
    (src / "annotations/annotations.tsv").write_text("\n".join(lines) + "\n")
    for i, n in enumerate(
        ["cam1/d1.jpg", "cam1/d2.jpg", "cam1/n1.jpg", "cam1/n2.jpg", "cam1/mid.jpg", "cam2/n1.jpg"]
    ):
        _jpg(src / "imageLF" / n, i)
    m = ingest(str(src), str(tmp_path / "out"), "transient_attributes")
    assert m.paired and m.rows == 2 and m.skipped == {"malformed_row": 1, "unpaired": 1}
    rows = read_all(m).to_pylist()
    pairs = sorted(
        (r["source"].rsplit("/", 1)[-1], r["condition_b"], r["place_name"]) for r in rows
    )
    assert pairs == [
        ("d1.jpg", "night", "cam1"),
        ("d2.jpg", "night", "cam1"),
    ]  # brightest day first, cycled


def test_retrieval_sfm(tmp_path):
    from mdir.data.layouts.retrieval_sfm import cid2path

    src = tmp_path / "sfm"
    cids = {"train": ["aaaaaa01", "bbbbbb02", "cccccc03"], "val": ["dddddd04"]}
    k = 0
    for _split, lst in cids.items():
        for c in lst:
            _jpg(src / "ims" / cid2path(c), k)
            k += 1
    db = {
        "train": {"cids": cids["train"], "cluster": [5, 5, 6], "qidxs": [0], "pidxs": [1]},
        "val": {"cids": cids["val"], "cluster": [9], "qidxs": [], "pidxs": []},
    }
    (src / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))
    m = ingest(str(src), str(tmp_path / "out"), "retrieval_sfm")
    assert m.counts == {"train": {"day": 3}, "val": {"day": 1}}
    assert m.extra["layout"]["pairs"] == {"train": [[0, 1]], "val": []}
    rows = {r["id"]: r for r in read_all(m).to_pylist()}
    assert [rows[i]["place"] for i in range(4)] == [5, 5, 6, 9]
