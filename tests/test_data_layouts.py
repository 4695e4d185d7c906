"""Dataset layouts of the papers, each on a tiny fixture written in the real layout."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import (
    write_aachen,
    write_jpg,
    write_retrieval_sfm,
    write_revisited,
    write_robotcar_seasons,
    write_tokyo247,
    write_transient_attributes,
)

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
    # MDUIT's training set: every image, the posed overcast reference map included
    m2 = ingest(
        str(src), str(tmp_path / "out2"), "robotcar_seasons",
        layout_options={"val_fraction": 0.01},
    )  # fmt: skip
    by2 = {r["source"].split("images/")[1]: r for r in read_all(m2).to_pylist()}
    assert {r["split"] for r in by2.values()} <= {"train", "val"}  # no db / query split
    assert len(by2) == len(names)
    assert by2["overcast-reference/rear/100.jpg"]["condition"] == "overcast-reference"
    assert by2["night/rear/200.jpg"]["pose"][:3] == [5, 0, 0]


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


def test_transient_attributes_cartesian_product_per_webcam(tmp_path):
    """Thesis §3.1: every night image (night > 0.9) × every remaining image of its webcam."""
    src = tmp_path / "ta"
    write_transient_attributes(src, {"cam1": (3, 2), "cam2": (3, 2), "cam3": (2, 0)}, SIZE)
    with open(src / "annotations/annotations.tsv", "a") as f:
        f.write("broken line\n")
    m = ingest(
        str(src), str(tmp_path / "out"), "transient_attributes", layout_options={"val_fraction": 0}
    )
    assert m.paired and m.skipped == {"malformed_row": 1}
    rows = read_all(m).to_pylist()
    assert m.rows == 12  # 2 webcams × (3 day × 2 night)
    by_cam: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        assert (r["condition"], r["condition_b"], r["split"]) == ("day", "night", "train")
        day = "/".join(r["source"].rsplit("/", 2)[-2:])
        by_cam.setdefault(r["place_name"], set()).add((day, r["sha256"].split(",")[1]))
    nights_sha = {
        f"cam{c}/n{i}.jpg": hashlib.sha256(
            (src / f"imageLF/cam{c}/n{i}.jpg").read_bytes()
        ).hexdigest()
        for c in (1, 2)
        for i in range(2)
    }
    for cam in ("cam1", "cam2"):  # exactly the product: each (day, night) pair once
        days = {f"{cam}/d{i}.jpg" for i in range(3)}
        nights = {nights_sha[f"{cam}/n{i}.jpg"] for i in range(2)}
        assert by_cam[cam] == {(d, n) for d in days for n in nights}
        assert len(by_cam[cam]) == 6
    assert "cam3" not in by_cam  # a webcam without a night image gives no pair
    lay = m.extra["layout"]
    assert (lay["webcams"], lay["unique_day_images"], lay["unique_night_images"]) == (2, 6, 4)
    # the same webcams' unique images, unpaired (the thesis's CycleGAN on Transattr)
    single = ingest(
        str(src),
        str(tmp_path / "images"),
        "transient_attributes",
        layout_options={"val_fraction": 0, "output": "images"},
    )
    assert not single.paired and single.counts == {"train": {"day": 6, "night": 4}}


def test_transient_attributes_day_rule_and_webcam_split(tmp_path):
    src = tmp_path / "ta"
    write_transient_attributes(src, {f"cam{i}": (2, 1) for i in range(10)}, SIZE)
    with open(src / "annotations/annotations.tsv", "a") as f:  # neither clearly day nor night
        f.write("cam0/mid.jpg\t0,1\t0.5,1\t0.5,1\t0,1\n")
    write_jpg(src / "imageLF/cam0/mid.jpg", 77, SIZE)
    thesis = ingest(str(src), str(tmp_path / "a"), "transient_attributes")
    strict = ingest(
        str(src),
        str(tmp_path / "b"),
        "transient_attributes",
        layout_options={"day_threshold": "0.9"},
    )
    # thesis: the remaining images of the webcam are day images, so mid.jpg pairs too
    assert thesis.rows == 10 * 2 + 1 and strict.rows == 10 * 2
    # whole webcams held out: round(0.1 · 10) = 1 webcam, seeded, recorded
    val = thesis.extra["layout"]["split"]["val_webcams"]
    assert len(val) == 1 and thesis.extra["layout"]["split"]["seed"] == 0
    rows = read_all(thesis).to_pylist()
    assert {r["place_name"] for r in rows if r["split"] == "val"} == set(val)
    again = ingest(str(src), str(tmp_path / "c"), "transient_attributes")
    assert again.extra["layout"]["split"]["val_webcams"] == val  # deterministic
    seeds = {
        tuple(
            ingest(
                str(src),
                str(tmp_path / f"s{s}"),
                "transient_attributes",
                layout_options={"split_seed": s},
            ).extra["layout"]["split"]["val_webcams"]
        )
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed moves the held-out webcam


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


def test_robotcar_seasons_thesis_rear_camera_day_night(tmp_path):
    """Thesis §3.1: rear camera only; sun/snow/rain/dawn/dusk → day, night/night-rain → night;
    the dataset's name stays in condition_raw; overcast images are not in either domain."""
    src = tmp_path / "rc"
    write_robotcar_seasons(src, 2, SIZE)
    opts = {"camera": "rear", "conditions": "day_night", "val_fraction": "0.25"}
    m = ingest(str(src), str(tmp_path / "out"), "robotcar_seasons", layout_options=opts)
    rows = read_all(m).to_pylist()
    assert {r["source"].split("images/")[1].split("/")[1] for r in rows} == {"rear"}
    for r in rows:
        raw = r["source"].split("images/")[1].split("/")[0]
        assert r["condition_raw"] == raw
        assert r["condition"] == (
            "day" if raw in {"sun", "snow", "rain", "dawn", "dusk"} else "night"
        )
    assert sorted(m.conditions) == ["day", "night"]
    # 9 conditions × 3 cameras × 2 images: 18 other-camera rear-less, 2 overcast × 2 rear
    assert m.skipped == {"other_camera": 36, "unused_condition": 4}
    # per condition round(0.25 · n) held out: day 10 → 2 (rounds half to even), night 4 → 1
    assert m.counts == {"train": {"day": 8, "night": 3}, "val": {"day": 2, "night": 1}}
    lay = m.extra["layout"]
    assert lay["condition_map"] == {
        "day": ["sun", "snow", "rain", "dawn", "dusk"],
        "night": ["night", "night-rain"],
    }
    assert lay["split"]["val_fraction"] == 0.25 and lay["camera"] == "rear"
    # the variant: overcast counted as day, chosen by the user
    with_overcast = ingest(
        str(src),
        str(tmp_path / "out2"),
        "robotcar_seasons",
        layout_options={**opts, "day_conditions": "sun,snow,rain,dawn,dusk,overcast-summer"},
    )
    assert with_overcast.count(conditions=["day"]) == 12
    with pytest.raises(ValueError, match="camera='front'"):
        get_layout("robotcar_seasons", camera="front")
    with pytest.raises(ValueError, match="share"):
        get_layout("robotcar_seasons", day_conditions="sun,night")


def test_aachen_seeded_train_val_split(tmp_path):
    src = tmp_path / "aachen"
    write_aachen(src, n_db=12, n_day=8, n_night=10, size=SIZE)
    m = ingest(str(src), str(tmp_path / "a"), "aachen", layout_options={"val_fraction": "0.1"})
    # per condition: day 20 → 2 held out, night 10 → 1
    assert m.counts == {"train": {"day": 18, "night": 9}, "val": {"day": 2, "night": 1}}
    assert m.extra["layout"]["split"] == {
        "by": "image, stratified by condition",
        "val_fraction": 0.1,
        "seed": 0,
    }

    def val_of(out: str, seed: int) -> set[str]:
        mm = ingest(
            str(src),
            str(tmp_path / out),
            "aachen",
            layout_options={"val_fraction": 0.1, "split_seed": seed},
        )
        return {
            r["source"]
            for r in read_all(mm, ["source", "split"]).to_pylist()
            if r["split"] == "val"
        }

    assert val_of("b", 0) == val_of("c", 0)  # deterministic
    assert len({frozenset(val_of(f"s{s}", s)) for s in range(4)}) > 1  # seeded
    bench = ingest(str(src), str(tmp_path / "bench"), "aachen")  # default: the benchmark's
    assert set(bench.splits) == {"db", "query"}
    with pytest.raises(ValueError, match="val_fraction"):
        get_layout("aachen", val_fraction="1.5")


def test_retrieval_sfm_day_night_labels(tmp_path):
    src = tmp_path / "sfm"
    cids = {"train": ["aaaaaa01", "bbbbbb02", "cccccc03"], "val": ["dddddd04", "eeeeee05"]}
    write_retrieval_sfm(src, cids, {"train": [5, 5, 6], "val": [9, 9]}, SIZE)
    labels = tmp_path / "daynight.txt"
    labels.write_text(
        "# cid condition\naaaaaa01 day\nims/02/bb/bb/bbbbbb02 night\ncccccc03,day\n"
        "dddddd04 night\nbad line here\n"
    )
    m = ingest(
        str(src),
        str(tmp_path / "out"),
        "retrieval_sfm",
        layout_options={"labels": f"list:{labels}"},
    )
    assert m.counts == {"train": {"day": 2, "night": 1}, "val": {"night": 1}}
    assert m.skipped == {"unlabelled": 1, "malformed_label": 1}  # eeeeee05; "bad line here"
    lab = m.extra["layout"]["labels"]
    assert lab["source"] == "list" and lab["file"] == str(labels) and lab["entries"] == 4
    assert lab["sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    rows = {r["id"]: r for r in read_all(m).to_pylist()}
    assert m.extra["layout"]["pairs"]["train"] == [[0, 1]]  # ids = the pickle's order
    assert rows[1]["source"].endswith("bbbbbb02") and rows[1]["condition"] == "night"


def test_retrieval_sfm_brightness_rule(tmp_path):
    from PIL import Image

    from mdir.data.layouts.retrieval_sfm import cid2path

    src = tmp_path / "sfm"
    cids = {"train": ["aaaaaa01", "bbbbbb02"]}
    write_retrieval_sfm(src, cids, {"train": [1, 1]}, SIZE)
    for cid, level in (("aaaaaa01", 200), ("bbbbbb02", 20)):  # bright, dark
        Image.new("RGB", (32, 24), (level,) * 3).save(src / "ims" / cid2path(cid), "JPEG")
    m = ingest(
        str(src),
        str(tmp_path / "out"),
        "retrieval_sfm",
        layout_options={"labels": "brightness:0.3"},
    )
    rows = {r["source"].rsplit("/", 1)[-1]: r["condition"] for r in read_all(m).to_pylist()}
    assert rows == {"aaaaaa01": "day", "bbbbbb02": "night"}
    assert m.extra["layout"]["labels"] == {
        "source": "brightness",
        "rule": "night if mean luma < 0.3",
    }
    with pytest.raises(ValueError, match="labels='brightness:2'"):
        get_layout("retrieval_sfm", labels="brightness:2")
