"""Data layer without Ray: synthetic data, shards, manifest, ingest, bad input, CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mdir.data import io as dio
from mdir.data.ingest import ingest
from mdir.data.io import DataPathError, check_reachable
from mdir.data.manifest import read_manifest
from mdir.data.pipeline import iter_images
from mdir.data.shards import read_all
from mdir.data.store import ShardImageStore
from mdir.data.synth import synthesize


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(str(out), places=4, size=32, seed=3, poses_per_place=4)
    return str(out)


def _img_bytes(arr, fmt="JPEG", mode=None):
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    b = io.BytesIO()
    im.save(b, fmt)
    return b.getvalue()


def _rand(seed, h=40, w=48):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ------------------------------------------------------------------ synthetic data


def test_synth_deterministic_and_seed_dependent(tmp_path, synth_ds):
    a = tmp_path / "a"
    synthesize(str(a), places=4, size=32, seed=3, poses_per_place=4)
    m1, m2 = read_manifest(synth_ds), read_manifest(str(a))
    assert [s.sha256 for s in m1.shards] == [s.sha256 for s in m2.shards]
    c = tmp_path / "c"
    synthesize(str(c), places=4, size=32, seed=4, poses_per_place=4)
    assert [s.sha256 for s in read_manifest(str(c)).shards] != [s.sha256 for s in m1.shards]


def test_synth_splits_conditions_and_pose_thresholds(synth_ds):
    m = read_manifest(synth_ds)
    assert m.rows == 4 * 4 * 5
    for split in ("train", "val", "test"):
        assert set(m.counts[split]) == {"day", "night", "dusk", "snow", "rain"}
    t = read_all(m, ["id", "place", "pose", "condition"])
    assert sorted(t["id"].to_pylist()) == list(range(m.rows))
    place = np.array(t["place"].to_pylist())
    pose = np.array(t["pose"].to_pylist())
    yaw = 2 * np.arctan2(pose[:, 6], pose[:, 3])
    for i in range(len(place)):
        for j in range(len(place)):
            d = np.linalg.norm(pose[i, :3] - pose[j, :3])
            dyaw = abs(math.degrees((yaw[i] - yaw[j] + math.pi) % (2 * math.pi) - math.pi))
            if place[i] == place[j]:
                assert d < 7.0 and dyaw < 8.0  # MDUIT positives
            else:
                assert d > 100.0


def _mean_rgb(uri, cond):
    return np.mean(
        [img.mean(axis=(0, 1)) for _, img in iter_images(uri, conditions=[cond])], axis=0
    )


def test_synth_conditions_look_different(synth_ds):
    day, night, snow, dusk = (_mean_rgb(synth_ds, c) for c in ("day", "night", "snow", "dusk"))
    assert night.mean() < 0.4 * day.mean()  # night is dark
    assert snow.mean() > day.mean()  # snow is bright/white
    assert dusk[0] > dusk[2]  # dusk is warm (more red than blue)
    # night has light sources: a few very bright pixels despite the dark mean
    peaks = [img.max() for _, img in iter_images(synth_ds, conditions=["night"])]
    assert np.median(peaks) > 180


def test_synth_paired(tmp_path):
    m = synthesize(str(tmp_path / "p"), places=2, size=32, paired=("day", "night"))
    assert m.paired and m.rows == 8
    t = read_all(m)
    assert t["image_b"].null_count == 0 and set(t["condition_b"].to_pylist()) == {"night"}


# ------------------------------------------------------------------ shards / store / iter


def test_shards_round_trip_local(synth_ds):
    m = read_manifest(synth_ds)
    for s in m.shards:  # manifest checksums match the files
        data = dio.read_bytes(dio.join(synth_ds, s.path))
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.bytes
    t = read_all(m)
    for b, sha in zip(t["image"].to_pylist(), t["sha256"].to_pylist(), strict=True):
        assert hashlib.sha256(b).hexdigest() == sha
    meta, img = next(iter_images(synth_ds, split="val", conditions=["night"]))
    assert meta["split"] == "val" and meta["condition"] == "night" and img.shape == (32, 32, 3)
    assert img.dtype == np.uint8 and len(meta["pose"]) == 7
    assert len(list(iter_images(synth_ds, limit=5))) == 5


def test_image_store(synth_ds):
    st = ShardImageStore(synth_ds, "train", 16)
    m = read_manifest(synth_ds)
    assert len(st) == m.count("train")
    ids = st.ids()
    x = st.load(ids[[3, 0, 3]])
    assert x.shape == (3, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (x[0] == x[2]).all()
    meta = st.meta()
    assert meta["pose"].shape == (len(st), 7) and not np.isnan(meta["pose"]).any()
    assert set(meta["split"]) == {"train"}
    assert [st.conditions[c] for c in meta["condition"][:5]] == [
        "day",
        "night",
        "dusk",
        "snow",
        "rain",
    ]
    with pytest.raises(KeyError, match="row id"):
        st.load([10**9])
    night = ShardImageStore(synth_ds, None, 16, conditions=["night"])
    assert len(night) == m.count(None, ["night"])


def test_check_reachable_names_uri(tmp_path):
    with pytest.raises(DataPathError, match="nope"):
        check_reachable(str(tmp_path / "nope"))
    with pytest.raises(DataPathError, match="manifest"):
        read_manifest(str(tmp_path))


# ------------------------------------------------------------------ ingest & bad input


def _bad_input_tree(root):
    day, night = root / "day", root / "night"
    day.mkdir(parents=True)
    night.mkdir()
    good = {}
    for i in range(4):
        (day / f"g{i}.jpg").write_bytes(_img_bytes(_rand(i)))
        good[f"day/g{i}.jpg"] = None
    (night / "wide.png").write_bytes(_img_bytes(_rand(9, 20, 90), "PNG"))  # odd aspect, kept
    (night / "big.jpg").write_bytes(_img_bytes(_rand(10, 300, 200)))
    j = _img_bytes(_rand(11))
    p = _img_bytes(_rand(12), "PNG")
    (day / "truncated.jpg").write_bytes(j[: len(j) // 2])
    (day / "corrupt.png").write_bytes(p[:100] + bytes(200) + p[300:])
    (day / "empty.jpg").write_bytes(b"")
    (day / "notes.txt").write_text("not an image")
    (day / "tiny.png").write_bytes(_img_bytes(_rand(13, 4, 4), "PNG"))
    (day / "dup.jpg").write_bytes((day / "g0.jpg").read_bytes())
    os.symlink(str(day / "absent.jpg"), str(day / "dangling.jpg"))  # missing
    os.symlink("loop.jpg", str(day / "loop.jpg"))  # unreadable (ELOOP)
    (night / "gray.png").write_bytes(_img_bytes(_rand(14), "PNG", "L"))
    (night / "rgba.png").write_bytes(_img_bytes(_rand(15), "PNG", "RGBA"))
    (night / "pal.png").write_bytes(_img_bytes(_rand(16), "PNG", "P"))
    (night / "cmyk.jpg").write_bytes(_img_bytes(_rand(17), "JPEG", "CMYK"))
    im16 = Image.fromarray(_rand(18)[..., 0].astype(np.uint16) * 257)
    b = io.BytesIO()
    im16.save(b, "PNG")
    (night / "deep.png").write_bytes(b.getvalue())
    (root / "stray.jpg").write_bytes(_img_bytes(_rand(19)))  # no condition folder
    return root


def test_ingest_bad_input_counted(tmp_path):
    src = _bad_input_tree(tmp_path / "src")
    m = ingest(str(src), str(tmp_path / "out"), "folders", rows_per_shard=5, min_size=16)
    assert m.skipped == {
        "corrupt": 1,
        "duplicate": 1,
        "empty": 1,
        "malformed_row": 1,
        "missing": 1,
        "not_image": 1,
        "too_small": 1,
        "truncated": 1,
        "unreadable": 1,
    }
    assert m.converted == {"16bit": 1, "alpha": 1, "cmyk": 1, "grayscale": 1, "palette": 1}
    assert m.rows == 4 + 2 + 5 and m.condition_counts() == {"day": 4, "night": 7}
    t = read_all(read_manifest(str(tmp_path / "out")))
    sizes = {
        s.rsplit("/", 1)[-1]: (w, h)
        for s, w, h in zip(
            t["source"].to_pylist(), t["width"].to_pylist(), t["height"].to_pylist(), strict=True
        )
    }
    assert sizes["wide.png"] == (90, 20) and sizes["big.jpg"] == (200, 300)
    for b in t["image"].to_pylist():  # everything stored decodes to 8-bit RGB
        assert Image.open(io.BytesIO(b)).mode == "RGB"
    # originals kept byte for byte
    assert (src / "day" / "g1.jpg").read_bytes() in t["image"].to_pylist()
    logged = [
        json.loads(line)
        for line in (tmp_path / "out" / "ingest_log.jsonl").read_text().splitlines()
    ]
    assert len(logged) == sum(m.skipped.values())
    assert len(set(t["id"].to_pylist())) == m.rows


def test_ingest_fails_fast(tmp_path):
    with pytest.raises(DataPathError, match="does-not-exist"):
        ingest(str(tmp_path / "does-not-exist"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="unknown layout 'weird'"):
        ingest(str(tmp_path), str(tmp_path / "o"), "weird")


def test_interrupted_ingest_leaves_no_partial_shard_and_resumes(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for c in ("day", "night"):
        (src / c).mkdir(parents=True)
        for i in range(6):
            (src / c / f"{i}.jpg").write_bytes(_img_bytes(_rand(100 * len(c) + i)))
    out = tmp_path / "out"
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_second(a, b):
        calls["n"] += 1
        if calls["n"] == 2:  # the 2nd shard: the temp file is fully written, then we die
            raise KeyboardInterrupt
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ingest(str(src), str(out), rows_per_shard=4)
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(DataPathError):  # nothing a reader would follow
        read_manifest(str(out))
    finals = sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith("_tmp."))
    assert len(finals) == 1  # only the complete first shard under a final name
    for p in (out / "shards").iterdir():
        if not p.name.startswith("_tmp."):
            pq.read_metadata(p)  # complete, valid parquet
    first_mtime = (out / "shards" / finals[0]).stat().st_mtime_ns
    m = ingest(str(src), str(out), rows_per_shard=4)
    assert m.rows == 12 and len(m.shards) == 3
    assert (out / "shards" / finals[0]).stat().st_mtime_ns == first_mtime  # reused, not redone
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith("_tmp.")]
    ids = read_all(m, ["id"])["id"].to_pylist()
    assert sorted(ids) == list(range(12))  # no duplicates
    m2 = ingest(str(src), str(out), rows_per_shard=4)  # idempotent
    assert [s.sha256 for s in m2.shards] == [s.sha256 for s in m.shards]
    assert len(list((out / "shards").iterdir())) == 3


def test_ingest_paired_and_list(tmp_path):
    src = tmp_path / "pairs"
    (src / "A").mkdir(parents=True)
    (src / "B").mkdir()
    for i in range(3):
        (src / "A" / f"{i}.jpg").write_bytes(_img_bytes(_rand(i)))
        (src / "B" / f"{i}.png").write_bytes(_img_bytes(_rand(50 + i), "PNG"))
    (src / "A" / "lonely.jpg").write_bytes(_img_bytes(_rand(99)))
    m = ingest(
        str(src),
        str(tmp_path / "po"),
        "paired",
        layout_options={"condition_a": "day", "condition_b": "night"},
    )
    assert m.paired and m.rows == 3 and m.skipped == {"unpaired": 1}
    t = read_all(m)
    assert set(t["condition_b"].to_pylist()) == {"night"} and t["image_b"].null_count == 0

    lst = tmp_path / "lst"
    lst.mkdir()
    for i in range(3):
        (lst / f"{i}.jpg").write_bytes(_img_bytes(_rand(200 + i)))
    with open(lst / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "condition", "place", "split", "x", "y", "z", "qw", "qx", "qy", "qz"])
        w.writerow(["0.jpg", "day", "7", "train", 1, 2, 3, 1, 0, 0, 0])
        w.writerow(["1.jpg", "night", "7", "test", 1, 2, 3, 1, 0, 0, 0])
        w.writerow(["2.jpg", "", "7", "", "", "", "", "", "", "", ""])  # no condition
        w.writerow(["2.jpg", "day", "8", "", 1, 2, "x", 1, 0, 0, 0])  # bad pose
        w.writerow(["missing.jpg", "day", "", "", "", "", "", "", "", "", ""])
    m = ingest(str(lst), str(tmp_path / "lo"), "list")
    assert m.rows == 2 and m.skipped == {"malformed_row": 2, "missing": 1}
    t = read_all(m)
    assert t["pose"].to_pylist()[0] == [1, 2, 3, 1, 0, 0, 0] and t["place"].to_pylist() == [7, 7]
    assert m.counts == {"train": {"day": 1}, "test": {"night": 1}}


# ------------------------------------------------------------------ CLI


def test_cli_synth_inspect_json_and_grid(tmp_path):
    from mdir.cli import app

    r = CliRunner()
    out = tmp_path / "ds"
    res = r.invoke(
        app,
        ["data", "synth", str(out), "--places", "2", "--size", "32", "--conditions", "day,night"],
    )
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["data", "inspect", str(out), "--json", "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["rows"] == 16 and s["conditions"] == {"day": 8, "night": 8} and s["skipped"] == {}
    g = Image.open(tmp_path / "g.png")
    # one labelled row of 96 px tiles per condition, under a title line
    assert 2 * 96 < g.size[1] < 3 * 96
    left = np.asarray(g.convert("L"))[2 * 96 // 2 :, :20]
    assert (left < 128).any()  # the row labels (condition names) left of the tiles
    res = r.invoke(app, ["data", "inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output
    res = r.invoke(
        app, ["data", "ingest", str(tmp_path / "nosrc"), str(tmp_path / "o"), "--layout", "folders"]
    )
    assert res.exit_code == 2 and "nosrc" in res.output
