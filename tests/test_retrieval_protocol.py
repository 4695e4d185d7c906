"""The retrieval test protocol of the papers (issue 17): aspect-kept max-side resize, revisited
queries cropped to their bounding box, revisited Easy / Medium / Hard mAP against hand-computed
values, multi-scale GeM-p descriptors, and the papers' table printed, written and logged.

Datasets are written here in the real layouts (`layout_fixtures`) and ingested; the network is
the tiny random trunk, which is enough to compare two ways of computing the same descriptor."""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from layout_fixtures import write_jpg, write_revisited, write_tokyo247

SIZE = (40, 48)  # (h, w): landscape, so a square squash would change the aspect


def _cfg(uri: str, max_side: int = 48, **eval_kw):
    from mdir.retrieval.config import RetrievalJobConfig

    return RetrievalJobConfig.model_validate(
        {
            "model": {"arch": "tiny", "width": 8, "allow_random": True},
            "data": {"uri": uri, "train_max_side": max_side, "test_max_side": max_side},
            "eval": eval_kw,
        }
    )


def _net(seed: int = 0):
    from mdir.retrieval.config import RetrievalModelConfig
    from mdir.retrieval.model import build_model

    torch.manual_seed(seed)
    return build_model(RetrievalModelConfig(arch="tiny", width=8, allow_random=True)).eval()


# ---------------------------------------------------------------- max-side resize


def test_max_side_size_keeps_aspect_and_never_enlarges():
    from mdir.data.transforms import max_side_size, resize_max_side

    assert max_side_size(500, 800, 362) == (226, 362)  # 500·362/800 = 226.25
    assert max_side_size(800, 500, 362) == (362, 226)
    assert max_side_size(768, 1024, 1024) == (768, 1024)
    assert max_side_size(100, 50, 362) == (100, 50)  # smaller images stay (PIL thumbnail)
    with pytest.raises(ValueError, match="max_side"):
        max_side_size(10, 10, 0)
    img = torch.randint(0, 256, (3, 300, 451), dtype=torch.uint8)
    out = resize_max_side(img, 200)
    h, w = out.shape[-2:]
    assert max(h, w) == 200 and out.dtype == torch.uint8
    assert abs(h / w - 300 / 451) <= 1.0 / min(h, w)  # aspect kept up to one pixel
    # a crop is shrunk by its full image's factor (×200/451): its longer side becomes
    # ⌊150 · 200/451⌋ = 66 (PIL floors the requested box), the other side follows the aspect
    crop = img[:, :100, :150]
    assert resize_max_side(crop, 200, scale_from=451).shape[-2:] == (44, 66)


def test_crop_box_rounds_like_pil_and_rejects_empty_boxes():
    from mdir.data.transforms import crop_box

    img = torch.arange(3 * 10 * 12, dtype=torch.uint8).reshape(3, 10, 12)
    c = crop_box(img, (1.4, 2.6, 7.5, 9.2))  # PIL: round → (1, 3, 8, 9)
    assert torch.equal(c, img[:, 3:9, 1:8])
    assert crop_box(img, (-5, -5, 100, 100)).shape == img.shape  # clipped to the image
    with pytest.raises(ValueError, match="empty"):
        crop_box(img, (5, 5, 5, 9))


@pytest.fixture
def roxford(tmp_path) -> tuple[str, str]:
    """(ingested URI, source folder): 4 database images, 1 query with a float bounding box."""
    from mdir.data.ingest import ingest

    src = tmp_path / "roxford"
    gnd = [{"bbx": [5.4, 3.6, 29.2, 23.7], "easy": [0], "hard": [2], "junk": [1]}]
    write_revisited(src, ["a_1", "b_2", "c_3", "d_4"], ["a_q"], gnd, SIZE)
    ingest(str(src), str(tmp_path / "out"), "revisited", workers=1)
    return str(tmp_path / "out"), str(src)


def test_store_keeps_aspect_and_loads_mixed_shapes_as_a_list(tmp_path):
    from mdir.data.ingest import ingest
    from mdir.data.store import ShardImageStore
    from mdir.retrieval.data import load_images

    src = tmp_path / "imgs"
    write_jpg(src / "day" / "wide.jpg", 0, (40, 64))
    write_jpg(src / "day" / "tall.jpg", 1, (64, 40))
    ingest(str(src), str(tmp_path / "out"), "folders", workers=1)
    store = ShardImageStore(str(tmp_path / "out"), None, 32, keep_aspect=True)
    imgs = store.load_list(store.ids().tolist())
    assert sorted(tuple(t.shape) for t in imgs) == [(3, 20, 32), (3, 32, 20)]
    assert all(float(t.min()) >= -1.0 and float(t.max()) <= 1.0 for t in imgs)
    with pytest.raises(ValueError, match="load_list"):
        store.load(store.ids().tolist())
    assert isinstance(load_images(store, store.ids().tolist()), list)
    # the square squash (GAN training) is unchanged
    square = ShardImageStore(str(tmp_path / "out"), None, 32)
    assert square.load(square.ids().tolist()).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------- query cropping


def test_query_descriptor_comes_from_its_bounding_box(roxford, tmp_path):
    """The revisited query is cropped to bbx before extraction: its descriptor equals that of
    the pre-cropped image evaluated without a box."""
    from mdir.data.ingest import ingest
    from mdir.data.transforms import decode_many
    from mdir.retrieval.descriptors import extract
    from mdir.retrieval.evaluate import EvalSet

    uri, src = roxford
    es = EvalSet.open(_cfg(uri))
    assert es.dataset == "roxford5k" and len(es.query_crops) == 1
    # the pre-cropped query: the same decoded pixels, PIL-rounded box (5, 4, 29, 24), as PNG
    q = (tmp_path / "roxford" / "jpg" / "a_q.jpg").read_bytes()
    crop = decode_many([q])[0][:, 4:24, 5:29]
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(crop.permute(1, 2, 0).numpy()).save(buf, "PNG")
    pre = tmp_path / "precropped"
    for n in ("a_1", "b_2", "c_3", "d_4"):
        (pre / "jpg").mkdir(parents=True, exist_ok=True)
        (pre / "jpg" / f"{n}.jpg").write_bytes(
            (tmp_path / "roxford" / "jpg" / f"{n}.jpg").read_bytes()
        )
    (pre / "jpg" / "a_q.jpg").write_bytes(buf.getvalue())
    g = pickle.loads((tmp_path / "roxford" / "gnd_roxford5k.pkl").read_bytes())
    g["gnd"][0]["bbx"] = []
    (pre / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(g))
    ingest(str(pre), str(tmp_path / "pre_out"), "revisited", workers=1)
    es_pre = EvalSet.open(_cfg(str(tmp_path / "pre_out")))
    assert es_pre.query_crops is None

    net = _net()
    qa = extract(net, es.data.load, es.query_rows)
    qb = extract(net, es_pre.data.load, es_pre.query_rows)
    assert es.data.load(es.query_rows)[0].shape == (3, 20, 24)
    np.testing.assert_allclose(qa, qb, atol=1e-6)
    # the uncropped query is a different image: the comparison above can fail
    es_full = EvalSet.open(_cfg(uri, crop_queries=False))
    assert es_full.data.load(es_full.query_rows)[0].shape == (3, 40, 48)
    assert not np.allclose(extract(net, es_full.data.load, es_full.query_rows), qa, atol=1e-3)
    # at test size 24 the full image is halved, and so is the crop (cirtorch's scale rule)
    es_small = EvalSet.open(_cfg(uri, max_side=24))
    assert es_small.data.load(es_small.query_rows)[0].shape == (3, 10, 12)
    assert es_small.data.load(es_small.db_rows[:1])[0].shape == (3, 20, 24)


# ---------------------------------------------------------------- revisited mAP


def _gnd(easy, hard, junk):
    return {
        "easy": np.array(easy, np.int64),
        "hard": np.array(hard, np.int64),
        "junk": np.array(junk, np.int64),
    }


def test_revisited_map_equals_hand_computed_values():
    """Three queries over 6 database images; AP by the trapezoid rule after junk removal.

    q1 ranks [3,0,5,1,4,2], easy {0,4}, hard {1}, junk {5}:
      Easy  (junk += hard): positives at 1, 4; two junk before 4 → 1, 2;
            AP = ((0 + 1/2)/2 + (1/2 + 2/3)/2) / 2 = 5/12
      Medium: positives at 1, 3, 4 → 1, 2, 3: ((0+1/2) + (1/2+2/3) + (2/3+3/4)) / 2 / 3 = 37/72
      Hard  (junk += easy): positive at 3, junk 0 and 5 before → 1: (0 + 1/2)/2 = 1/4
    q2 ranks [1,2,0,3,4,5], easy {2}, junk {1}: Easy = Medium = 1; no hard → not in Hard.
    q3 has no positive at all → excluded from every protocol (revisitop), not counted as 0.
    """
    from mdir.metrics.retrieval import revisited_map

    ranks = np.array([[3, 0, 5, 1, 4, 2], [1, 2, 0, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    gnd = [_gnd([0, 4], [1], [5]), _gnd([2], [], [1]), _gnd([], [], [0])]
    e = revisited_map(ranks, gnd, "easy")
    m = revisited_map(ranks, gnd, "medium")
    h = revisited_map(ranks, gnd, "hard")
    assert e["map"] == pytest.approx((5 / 12 + 1) / 2)
    assert m["map"] == pytest.approx((37 / 72 + 1) / 2)
    assert h["map"] == pytest.approx(1 / 4)
    assert (e["num_queries"], m["num_queries"], h["num_queries"]) == (2, 2, 1)
    # mP@k (revisitop: k capped at the last positive's rank): q1 Easy ranks 2, 3 → P@1 = 0,
    # P@5 = P@10 = 2/3 (k → 3); q2 rank 1 → 1, 1, 1
    assert [e["mp@1"], e["mp@5"], e["mp@10"]] == pytest.approx([0.5, 5 / 6, 5 / 6])
    assert [h["mp@1"], h["mp@5"], h["mp@10"]] == pytest.approx([0.0, 0.5, 0.5])
    # no query with a positive at all: undefined, not zero
    assert math.isnan(revisited_map(ranks[2:], gnd[2:], "medium")["map"])


def test_compute_metrics_reports_the_three_protocols(roxford):
    from mdir.retrieval.evaluate import EvalSet, compute_metrics

    uri, _ = roxford
    cfg = _cfg(uri)
    es = EvalSet.open(cfg)
    # descriptors that rank db 0 (easy), 3 (negative), 2 (hard), 1 (junk)
    q = np.array([[1.0, 0.1, 0.5, 0.7]])
    m = compute_metrics(q / np.linalg.norm(q), np.eye(4), es, cfg.eval)
    assert m["map/easy"] == pytest.approx(1.0)
    assert m["map/medium"] == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)
    assert m["map/hard"] == pytest.approx(0.25)
    assert m["mp_at_1/medium"] == pytest.approx(1.0)


# ---------------------------------------------------------------- multi-scale


def test_multiscale_is_the_gem_p_average_of_single_scale_descriptors():
    """f = Lw(L2N((mean_s f_s^p)^(1/p))) with f_s the pre-whitening descriptor of the image
    resized by s (cirtorch extract_ms), for a list of images of two shapes."""
    from mdir.retrieval.descriptors import MULTISCALE, embed, extract

    net = _net()
    with torch.no_grad():
        net.net.pool.p.fill_(2.5)
    lin = torch.nn.Linear(8, 8)
    torch.nn.init.normal_(lin.weight)
    net.net.whiten = lin
    images = [
        torch.rand(3, 40, 48) * 2 - 1,
        torch.rand(3, 36, 36) * 2 - 1,
        torch.rand(3, 40, 48) * 2 - 1,
    ]
    got = embed(net, images, MULTISCALE)
    with torch.no_grad():
        expected = []
        for x in images:
            fs = []
            for s in MULTISCALE:
                xs = (
                    x[None]
                    if s == 1
                    else F.interpolate(
                        x[None], scale_factor=s, mode="bilinear", align_corners=False
                    )
                )
                fs.append(net.net.pooled(((xs + 1) / 2 - net.in_mean) / net.in_std))
            v = (sum(f.pow(2.5) for f in fs) / 3).pow(1 / 2.5)
            v = v / v.norm()
            w = lin(v)
            expected.append(w / w.norm())
        expected = torch.cat(expected)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # single scale of a list = each image alone through the network
    one = embed(net, images)
    torch.testing.assert_close(one, torch.cat([net(x[None]) for x in images]), atol=1e-6, rtol=0)
    # a plain mean (p = 1) of the whitened descriptors differs: the test can fail
    plain = F.normalize(
        sum(
            net(F.interpolate(images[0][None], scale_factor=s, mode="bilinear")) for s in MULTISCALE
        ),
        dim=-1,
    )
    assert not torch.allclose(plain, got[:1], atol=1e-3)
    # extraction by row ids (batches mixing shapes) gives the same vectors
    v = extract(
        net, lambda ids: [images[i] for i in ids], [2, 0, 1], batch_size=2, scales=MULTISCALE
    )
    np.testing.assert_allclose(v, got[[2, 0, 1]].numpy(), atol=1e-5)


def test_training_forward_on_mixed_shapes_is_one_call_with_gradients():
    """The training step embeds a tuple of different shapes in one forward (DDP sees one call);
    gradients flow back to every image's group."""
    net = _net()
    net.train()
    images = [
        torch.rand(3, 40, 48) * 2 - 1,
        torch.rand(3, 48, 40) * 2 - 1,
        torch.rand(3, 40, 48) * 2 - 1,
    ]
    d = net(images)
    assert d.shape == (3, 8)
    torch.testing.assert_close(d[1:2], net(images[1][None]), atol=1e-6, rtol=0)
    d.sum().backward()
    assert net.net.features[0].weight.grad.abs().sum() > 0


def test_augmenter_translates_a_list_one_image_at_a_time():
    from mdir.retrieval.augment import GanAugmenter

    class Negate:
        def translate(self, images, reference=None):
            assert images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0
            return -images

    aug = GanAugmenter(Negate(), probability=1.0, pad_multiple=32)
    images = [torch.rand(3, 20, 24) * 2 - 1, torch.rand(3, 24, 20) * 2 - 1]
    out, mask = aug(images, eligible=[True, False])
    assert mask.tolist() == [True, False] and isinstance(out, list)
    torch.testing.assert_close(out[0], -images[0])
    assert out[1] is images[1] and aug.counter.applied == 1


# ---------------------------------------------------------------- the papers' table


def test_paper_row_and_markdown():
    from mdir.retrieval.table import COLUMNS, paper_row, to_markdown

    ox = {"map/easy": 0.8, "map/medium": 0.6, "map/hard": 0.3}
    par = {"map/easy": 0.9, "map/medium": 0.7, "map/hard": 0.5}
    tok = {"map": 0.79, "recall_at_1/all": 0.5, "recall_at_5/all": 0.75, "recall_at_10/all": 1.0}
    row = paper_row({"roxford5k": ox, "rparis6k": par, "tokyo247": tok})
    assert row["roxf_medium"] == pytest.approx(60.0) and row["rpar_hard"] == pytest.approx(50.0)
    assert row["tokyo_r5"] == pytest.approx(75.0)
    assert row["avg"] == pytest.approx((79 + 60 + 70) / 3)
    # the thesis's Avg column: baseline (79.31 + 60.73 + 69.10) / 4 = 52.29 as published
    pub = paper_row({"tokyo247": {**tok, "map": 0.7931}, "roxford5k": {**ox, "map/medium": 0.6073},
                     "rparis6k": {**par, "map/medium": 0.6910}})  # fmt: skip
    assert pub["avg_thesis"] == pytest.approx(52.29, abs=0.006)  # 52.285, published 52.29
    md = to_markdown([("base", row)])
    lines = md.splitlines()
    assert lines[0].count("|") == len(COLUMNS) + 2 and "ROxf M" in lines[0]
    assert (
        "| base | 80.00 | 60.00 | 30.00 | 90.00 | 70.00 | 50.00 | 79.00 | 50.00 | 75.00 | 100.00 |"
        in md
    )
    only_ox = paper_row({"roxford5k": ox})
    assert math.isnan(only_ox["tokyo_map"]) and math.isnan(only_ox["avg"])
    assert "|  |" in to_markdown([("ox", only_ox)])  # empty cells, not "nan"
    with pytest.raises(ValueError, match="no column"):
        paper_row({"robotcar_seasons": {}})


def test_eval_cli_prints_writes_and_logs_the_table(roxford, tmp_path, mlflow_server):
    """`mdir retrieval eval` on ROxf + Tokyo fixtures: the table's cells are ×100 the per-dataset
    metrics, table.md / table.json are written, and the MLflow run holds the same numbers."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from mdir.cli import app
    from mdir.data.ingest import ingest
    from mdir.retrieval.registry import save_model_files

    uri, _ = roxford
    tok_src = tmp_path / "tokyo"
    write_tokyo247(
        tok_src,
        {"q/00001.jpg": "night", "q/00002.jpg": "day"},
        [[100.5, 860.0], [51.0, 71.0]],
        SIZE,
    )
    tok = str(tmp_path / "tokyo_out")
    ingest(str(tok_src), tok, "tokyo247", workers=1)
    model_dir = save_model_files(_net(), tmp_path / "model")
    out = tmp_path / "table"
    args = ["retrieval", "eval", "--model", str(model_dir), "--data", uri, "--data", tok,
            "--max-side", "48", "--multiscale", "--out", str(out),
            "--set", "mlflow.experiment=retrieval-table-test"]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert f"[2/2] evaluating on {tok}" in res.stderr and "descriptors 5/5" in res.stderr
    doc = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    by = {d["dataset"]: d["metrics"] for d in doc["results"]}
    cols = doc["table"]["columns"]
    assert cols["roxf_medium"] == pytest.approx(100 * by["roxford5k"]["map/medium"])
    assert cols["roxf_hard"] == pytest.approx(100 * by["roxford5k"]["map/hard"])
    assert cols["tokyo_r10"] == pytest.approx(100 * by["tokyo247"]["recall_at_10/all"])
    assert cols["tokyo_map"] == pytest.approx(100 * by["tokyo247"]["map"])
    assert "rpar_medium" not in cols  # not evaluated: absent, not a made-up number
    assert doc["results"][0]["cropped_queries"] == 1 and len(doc["scales"]) == 3
    assert json.loads((out / "table.json").read_text())["columns"] == cols
    assert f"{cols['roxf_medium']:.2f}" in (out / "table.md").read_text()
    client = MlflowClient()
    exp = client.get_experiment_by_name("retrieval-table-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    logged = runs[0].data
    assert logged.metrics["table/roxf_medium"] == pytest.approx(cols["roxf_medium"])
    assert logged.metrics["tokyo247/recall_at_1/all"] == pytest.approx(
        by["tokyo247"]["recall_at_1/all"]
    )
    assert logged.tags["mdir.job"] == "retrieval-eval"
    arts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "table")]
    assert sorted(arts) == ["table/table.json", "table/table.md"]
    # the human-readable form prints the markdown table
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "| model | ROxf E | ROxf M |" in res.stdout
    bad = CliRunner().invoke(
        app, ["retrieval", "eval", "--model", str(model_dir), "--data", str(tmp_path / "nope")]
    )
    assert bad.exit_code == 2 and "nope" in bad.output  # a clear error naming the path


def test_eval_uri_is_checked_before_launch(roxford, tmp_path):
    """Training can evaluate on another ingest (e.g. roxford5k while training on R-SfM); a
    missing one fails before any Ray resources, naming the field."""
    from mdir.retrieval.config import load_retrieval_config
    from mdir.retrieval.evaluate import EvalSet
    from mdir.retrieval.train import LaunchError, validate_before_launch

    uri, _ = roxford
    cfg = load_retrieval_config(None, [f"data.uri={uri}", f"eval.uri={tmp_path / 'missing'}"])
    with pytest.raises(LaunchError, match="eval.uri"):
        validate_before_launch(cfg)
    ok = load_retrieval_config(None, [f"data.uri={tmp_path}", f"eval.uri={uri}"])
    assert EvalSet.open(ok, uri=ok.eval.uri).dataset == "roxford5k"


# ---------------------------------------------------------------- localization (MDUIT Table 1)


def _qz(deg: float) -> list[float]:
    h = math.radians(deg) / 2
    return [math.cos(h), 0.0, 0.0, math.sin(h)]


class _PosedStore:
    """A stand-in `ImageStore`: only ids, conditions and poses (descriptors are given)."""

    def __init__(self, poses, conditions):
        self.conditions = ["day", "night", "ref"]
        self._pose = np.asarray(poses, np.float64)
        self._cond = np.array([self.conditions.index(c) for c in conditions])

    def __len__(self):
        return len(self._cond)

    def ids(self):
        return np.arange(len(self), dtype=np.int64)

    def meta(self):
        return {"condition": self._cond, "place": np.arange(len(self)), "pose": self._pose}

    def load(self, ids):
        raise AssertionError("descriptors are given in this test")


def test_localization_row_equals_a_hand_count():
    """4 queries at the origin (2 day, 2 night) against 4 posed database images; the top-1 of
    each query is set by its descriptor. Hand count per threshold:
    q0 day → d1 (0.2 m, 1.5°: all three), q1 day → d3 (100 m: none),
    q2 night → d2 (3 m, 8°: only 5 m / 10°), q3 night → d0 (exact: all three)."""
    from mdir.retrieval.config import RetrievalEvalConfig
    from mdir.retrieval.data import from_store
    from mdir.retrieval.evaluate import EvalSet, compute_metrics
    from mdir.retrieval.table import localization_markdown, localization_row

    origin = [0.0, 0.0, 0.0, *_qz(0)]
    db = [origin, [0.2, 0, 0, *_qz(1.5)], [3, 0, 0, *_qz(8)], [100, 0, 0, *_qz(0)]]
    data = from_store(
        _PosedStore([origin] * 4 + db, ["day", "day", "night", "night"] + ["ref"] * 4),
        positives="pose",
    )
    ecfg = RetrievalEvalConfig(database_conditions=["ref"], night_conditions=["night"])
    es = EvalSet.from_split(data, ecfg, n_query_rows=4)
    qv = np.eye(4)[[1, 3, 2, 0]] + 0.01
    m = compute_metrics(qv / np.linalg.norm(qv, axis=1, keepdims=True), np.eye(4), es, ecfg)
    row = localization_row(m)
    assert [row["day_0.25m_2deg"], row["day_0.5m_5deg"], row["day_5m_10deg"]] == [50, 50, 50]
    assert [row["night_0.25m_2deg"], row["night_0.5m_5deg"], row["night_5m_10deg"]] == [
        50,
        50,
        100,
    ]
    md = localization_markdown([("hand", row)])
    assert "| hand | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 100.0 |" in md
    assert "Night 5 m, 10°" in md.splitlines()[0]
    with pytest.raises(ValueError, match="poses"):
        localization_row({"map": 0.5})


def test_eval_cli_localization_table(roxford, tmp_path):
    """`--localization` on a posed synthetic set prints MDUIT's table with the metrics' values;
    on a dataset without orientation it is a clear error, not an empty table."""
    from typer.testing import CliRunner

    from mdir.cli import app
    from mdir.data.synth import synthesize
    from mdir.retrieval.registry import save_model_files

    data = str(tmp_path / "synth")
    synthesize(data, places=3, size=32, seed=0, poses_per_place=3, conditions=["day", "night"])
    model_dir = save_model_files(_net(), tmp_path / "model")
    base = ["retrieval", "eval", "--model", str(model_dir), "--max-side", "32", "--localization"]
    res = CliRunner(env={"MLFLOW_TRACKING_URI": ""}).invoke(
        app, [*base, "--data", data, "--set", "eval.database_split=train", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    loc = doc["table"]["localization"]["synth"]
    m = doc["metrics"]
    assert loc["night_5m_10deg"] == pytest.approx(100 * m["loc/night/5m_10deg"])
    assert loc["day_0.25m_2deg"] == pytest.approx(100 * m["loc/day/0.25m_2deg"])
    text = CliRunner(env={"MLFLOW_TRACKING_URI": ""}).invoke(
        app, [*base, "--data", data, "--set", "eval.database_split=train"]
    )
    assert "| model | Day 0.25 m, 2° |" in text.stdout
    bad = CliRunner(env={"MLFLOW_TRACKING_URI": ""}).invoke(app, [*base, "--data", roxford[0]])
    assert bad.exit_code == 2 and "--localization" in bad.output


# ---------------------------------------------------------------- Retrieval-SfM pairs


def test_rsfm_training_pairs_come_from_the_manifest(tmp_path):
    """positives=pairs without a pairs file uses the qidxs/pidxs the retrieval_sfm ingest
    stored: exactly those pairs (both ways), and same-cluster images are never negatives."""
    from mdir.data.ingest import ingest
    from mdir.data.layouts.retrieval_sfm import cid2path
    from mdir.retrieval.config import load_retrieval_config
    from mdir.retrieval.data import open_split
    from mdir.retrieval.train import LaunchError, validate_before_launch

    src = tmp_path / "rsfm"
    cids = [f"c{i:07d}" for i in range(5)]
    for i, c in enumerate(cids):
        write_jpg(src / "ims" / cid2path(c), i, (32, 40))
    db = {"train": {"cids": cids, "cluster": [0, 0, 0, 1, 1], "qidxs": [0, 3], "pidxs": [2, 4]}}
    (src / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))
    uri = str(tmp_path / "out")
    ingest(str(src), uri, "retrieval_sfm", workers=1)
    data = open_split(uri, "train", 32, positives="pairs")
    rows = {str(s).rsplit("/", 1)[-1]: k for k, s in enumerate(data.store.meta()["source"])}
    q, p, other = rows[cids[0]], rows[cids[2]], rows[cids[1]]
    assert data.matching.pairs[q] == {p} and data.matching.pairs[p] == {q}
    assert data.matching.pairs[rows[cids[3]]] == {rows[cids[4]]}
    everyone = np.arange(len(data))
    assert data.matching.positive_mask(q, everyone).sum() == 1  # c1 (same cluster) is no positive
    assert not data.matching.negative_mask(q, everyone)[other]  # ... and no negative either
    validate_before_launch(load_retrieval_config(None, [f"data.uri={uri}", "data.positives=pairs"]))
    bad = load_retrieval_config(
        None, [f"data.uri={uri}", "data.positives=pairs", "data.train_split=val"]
    )
    with pytest.raises(LaunchError, match="data.positives=pairs"):
        validate_before_launch(bad)
