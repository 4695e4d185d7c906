"""`mdir data translate` on the test Ray cluster (real MLflow registry, a tiny untrained
CycleGAN, 2 CPU actors): every selected source row translated exactly once, provenance
columns and manifest correct, a run interrupted after 2 shards resumed without duplicates
(the 2 shards kept byte for byte), corrupt rows counted and listed, not fatal; the images
equal the library's translation of the source images."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.tiny_models import register_tiny

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CORRUPT = 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Synthetic day/dusk/night dataset (64 px) with CORRUPT day/dusk rows made undecodable."""
    from mdir.data.manifest import read_manifest, write_manifest
    from mdir.data.shards import SHARD_DIR, read_shard, write_shard
    from mdir.data.synth import synthesize

    root = str(tmp_path_factory.mktemp("src") / "synth")
    synthesize(
        root, places=3, size=64, seed=1, poses_per_place=2, conditions=["day", "dusk", "night"]
    )
    m = read_manifest(root)
    shard = m.shards[0]
    t = read_shard(f"{root}/{shard.path}")
    rows = t.to_pylist()
    victims = [r["id"] for r in rows if r["condition"] in ("day", "dusk")][:CORRUPT]
    for r in rows:
        if r["id"] in victims:
            r["image"] = b"\x89PNG truncated"
    import pyarrow as pa

    info = write_shard(root, shard.path.split("/")[-1], pa.Table.from_pylist(rows, schema=t.schema))
    assert info.path.startswith(SHARD_DIR)
    m.shards[0] = info
    write_manifest(root, m)
    return root, victims


def test_translate_dataset_resume_provenance_bad_rows(
    source, mlflow_server, ray_cluster, tmp_path, monkeypatch
):
    import ray

    from mdir.cli import app
    from mdir.data.images import decode_rgb
    from mdir.data.manifest import read_manifest
    from mdir.data.shards import SHARD_DIR, read_all
    from mdir.registry.generators import load_translator
    from mdir.translation.any_size import to_uint8, to_unit
    from mdir.translation.dataset import TranslationInterrupted, translate_dataset

    src, victims = source
    uri = register_tiny("cyclegan", tmp_path, seed=3)
    name = uri.split(":/")[1].split("@")[0]
    if not ray.is_initialized():
        ray_cluster.init()  # MLFLOW_* forwarded: the actors load the model themselves
    out = str(tmp_path / "night")

    src_rows = {r["id"]: r for r in read_all(read_manifest(src)).to_pylist()}
    wanted = sorted(i for i, r in src_rows.items() if r["condition"] in ("day", "dusk"))
    assert len(wanted) == 12 and set(victims) <= set(wanted)

    # 1) interrupted after 2 of 4 shards: no manifest, the 2 shards complete
    with pytest.raises(TranslationInterrupted):
        translate_dataset(
            src, out, uri, to="night", conditions=["day", "dusk"], actors=2, batch_size=2,
            rows_per_shard=3, stop_after_shards=2,
        )  # fmt: skip
    shard_dir = tmp_path / "night" / SHARD_DIR
    first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shard_dir.iterdir()}
    assert len(first) == 2, first
    assert not (tmp_path / "night" / "manifest.json").exists()

    # 2) resumed from the CLI
    res = CliRunner().invoke(
        app,
        ["data", "translate", src, out, "--model", uri, "--conditions", "day,dusk", "--to",
         "night", "--rows-per-shard", "3", "--batch-size", "2", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    # the JSON line may be followed by late log lines (Ray shutdown): read that object only
    doc, _ = json.JSONDecoder().raw_decode(res.output, res.output.rindex('{"out"'))
    assert doc["shards_reused"] == 2 and doc["shards_written"] == 2, doc
    assert doc["actors"] == 2 and doc["device"] == "cpu"
    assert doc["skipped"] == {"undecodable": CORRUPT}
    for n, digest in first.items():  # kept byte for byte
        assert hashlib.sha256((shard_dir / n).read_bytes()).hexdigest() == digest

    m = read_manifest(out)
    tr = m.extra["translation"]
    assert (tr["model_name"], tr["model_version"], tr["to"]) == (name, "1", "night")
    assert tr["source_conditions"] == ["day", "dusk"] and tr["source_dataset"] == src
    assert m.conditions == ["night"] and m.layout == "translated"
    assert m.skipped == {"undecodable": CORRUPT}
    rows = read_all(m).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a source row was translated twice"
    assert sorted(ids) == [i for i in wanted if i not in victims]  # every good row, once
    assert m.rows == len(rows) == sum(sum(v.values()) for v in m.counts.values())
    logged = [json.loads(line) for line in (tmp_path / "night" / "translate_log.jsonl").open()]
    assert sorted(r["id"] for r in logged) == sorted(victims)
    assert {r["reason"] for r in logged} == {"undecodable"}

    tl = load_translator(uri)
    for r in rows:
        s = src_rows[r["id"]]
        assert r["condition"] == "night" and r["source"] == f"translated:{r['id']}"
        assert (r["split"], r["place"], r["place_name"], r["pose"]) == (
            s["split"], s["place"], s["place_name"], s["pose"],
        )  # fmt: skip
        assert r["sha256"] == hashlib.sha256(r["image"]).hexdigest()
        assert (r["width"], r["height"]) == (64, 64) and r["image_b"] is None
    for r in rows[:3]:  # the pixels are the library's translation of the source image
        with torch.no_grad():
            expect = to_uint8(tl.translate(to_unit(decode_rgb(src_rows[r["id"]]["image"]))))
        got = decode_rgb(r["image"])
        assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1

    # the retrieval job's augment.dataset reads these translations by source id
    _retrieval_reads_translations(src, out, name, sorted(ids), victims)

    # 3) a third run has nothing left to do
    again = translate_dataset(
        src, out, uri, to="night", conditions=["day", "dusk"], rows_per_shard=3
    )
    assert (again.shards_written, again.shards_reused, again.translated) == (0, 4, len(rows))


def test_translate_rejects_unknown_condition(source, mlflow_server, tmp_path):
    from mdir.cli import app

    src, _ = source
    uri = register_tiny("cyclegan", tmp_path)
    res = CliRunner().invoke(
        app, ["data", "translate", src, str(tmp_path / "o"), "--model", uri, "--to", "night",
              "--conditions", "fog"],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "fog" in res.output and not (tmp_path / "o").exists()


def _retrieval_reads_translations(src, out, name, translated_ids, victims):
    from mdir.data.store import ShardImageStore
    from mdir.retrieval.augment import DatasetAugmenter, translation_provenance
    from mdir.retrieval.data import open_split

    prov = translation_provenance(out)
    assert (prov["model_name"], prov["model_version"], prov["to"]) == (name, "1", "night")
    data = open_split(src, "train", 32)
    store = ShardImageStore(out, "train", 32)
    aug = DatasetAugmenter(store.load, store.ids(), probability=1.0, seed=0)
    rows = np.flatnonzero(~np.isin(data.ids, victims))  # the corrupt sources do not decode
    ids = data.ids[rows]
    images = data.load(rows.tolist())
    out_images, mask = aug(images, ids=ids)
    expect = np.isin(ids, translated_ids)  # the train split's day/dusk rows
    assert expect.any() and (~expect).any()
    assert np.array_equal(mask, expect)
    assert torch.equal(out_images[torch.from_numpy(mask)], store.load(ids[mask].tolist()))
    assert torch.equal(out_images[torch.from_numpy(~mask)], images[torch.from_numpy(~mask)])
    assert aug.counter.applied == int(mask.sum()) == aug.counter.seen
    with pytest.raises(ValueError, match="augment.dataset"):
        translation_provenance(src)  # a plain dataset is no translation source


def test_augment_config_sources_are_exclusive():
    from pydantic import ValidationError

    from mdir.retrieval.config import AugmentConfig

    assert AugmentConfig(dataset="/data/night").dataset == "/data/night"
    with pytest.raises(ValidationError, match="exclusive"):
        AugmentConfig(generator="models:/g@candidate", dataset="/data/night")


def test_retrieval_job_reads_translations_and_records_their_model(
    mlflow_server, ray_cluster, tmp_path
):
    """A local retrieval run with ``augment.dataset``: translations are applied (counted) and
    the run records the dataset's model name and version."""
    import ray
    from mlflow import MlflowClient

    from mdir.data.synth import synthesize
    from mdir.retrieval.train import run_training
    from mdir.translation.dataset import translate_dataset
    from tests.test_retrieval_job import _cfg

    src = str(tmp_path / "rsynth")
    synthesize(src, places=8, size=32, seed=0, poses_per_place=4)
    uri = register_tiny("cyclegan", tmp_path, seed=5)
    name = uri.split(":/")[1].split("@")[0]
    if not ray.is_initialized():
        ray_cluster.init()
    night = str(tmp_path / "rsynth-night")
    translate_dataset(src, night, uri, to="night", conditions=["day", "dusk", "snow"])

    r = run_training(_cfg(src, tmp_path, augment__dataset=night), local=True)
    seen, applied = r.augment["seen"], r.augment["applied"]
    assert seen == 2 * 2 * 7 and 0 < applied < seen  # every tuple image has a translation
    run = MlflowClient().get_run(r.run_id)
    assert run.data.tags["augment.dataset_model_name"] == name
    assert run.data.tags["augment.dataset_model_version"] == "1"
    assert run.data.tags["augment.dataset_uri"] == night
    assert run.data.params["augment.dataset_model_version"] == "1"
    assert run.data.metrics["augment/applied"] == applied
