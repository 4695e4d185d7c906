"""Shards on a real S3-compatible server (moto on 127.0.0.1): round trip, ingest, errors."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from mdir.data import io as dio
from mdir.data.ingest import ingest
from mdir.data.io import DataPathError, check_reachable
from mdir.data.manifest import read_manifest
from mdir.data.pipeline import iter_images
from mdir.data.shards import read_all
from mdir.data.store import ShardImageStore
from mdir.data.synth import synthesize


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.bucket("mdir-data-test")


def test_synth_round_trip_s3_matches_local(bucket, tmp_path):
    uri = f"{bucket}/synth"
    m_s3 = synthesize(uri, places=2, size=32, seed=5, conditions=["day", "night"])
    m_loc = synthesize(str(tmp_path / "l"), places=2, size=32, seed=5, conditions=["day", "night"])
    m = read_manifest(uri)
    assert m.rows == m_loc.rows == 16 and m.counts == m_loc.counts
    assert (
        [s.sha256 for s in m.shards]
        == [s.sha256 for s in m_loc.shards]
        == [s.sha256 for s in m_s3.shards]
    )
    for s in m.shards:  # bytes on the server are exactly what the manifest says
        assert hashlib.sha256(dio.read_bytes(dio.join(uri, s.path))).hexdigest() == s.sha256
    a, b = read_all(m), read_all(m_loc)
    assert a.equals(b)  # images and metadata round-trip exactly
    meta, img = next(iter_images(uri, split="train", conditions=["night"]))
    assert meta["condition"] == "night" and img.shape == (32, 32, 3)
    st = ShardImageStore(uri, "train", 16)
    assert st.load(st.ids()[:2]).shape == (2, 3, 16, 16)


def test_ingest_s3_to_s3_with_bad_input_and_rerun(bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    root = bucket.split("://", 1)[1] + "/src"
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(i).random((24, 24, 3)) * 255).astype(np.uint8)).save(
            buf, "JPEG"
        )
        fs.pipe(f"{root}/day/{i}.jpg", buf.getvalue())
    fs.pipe(f"{root}/night/empty.jpg", b"")
    fs.pipe(f"{root}/night/junk.jpg", b"definitely not a jpeg")
    out = f"{bucket}/ingested"
    m = ingest(f"{bucket}/src", out, "folders", rows_per_shard=2)
    assert m.rows == 3 and m.skipped == {"empty": 1, "not_image": 1}
    shards_before = sorted(fs.ls(out.split("://", 1)[1] + "/shards"))
    m2 = ingest(f"{bucket}/src", out, "folders", rows_per_shard=2)  # idempotent
    assert [s.sha256 for s in m2.shards] == [s.sha256 for s in m.shards]
    assert sorted(fs.ls(out.split("://", 1)[1] + "/shards")) == shards_before
    assert not [p for p in fs.find(out.split("://", 1)[1]) if "/_tmp." in p]


def test_unreachable_bucket_named(s3_server):
    with pytest.raises(DataPathError, match="no-such-bucket-xyz"):
        check_reachable("s3://no-such-bucket-xyz/data")
    with pytest.raises(DataPathError, match="no-such-bucket-xyz"):
        ingest("s3://no-such-bucket-xyz/src", "s3://no-such-bucket-xyz/out")
