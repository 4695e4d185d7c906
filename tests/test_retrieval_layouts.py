"""Retrieval evaluation on datasets ingested from the evaluation layouts (fixtures written here
in the real layouts): revisited Oxford/Paris ground truth (Easy/Medium/Hard, junk) and Tokyo
24/7 positives within 25 m are taken from the manifest, query/db splits are found, and a
saved network evaluates end to end through `evaluate_registered`."""

from __future__ import annotations

import numpy as np
import pytest
from layout_fixtures import write_revisited, write_tokyo247

SIZE = (40, 48)


def _cfg(uri: str):
    from mdir.retrieval.config import RetrievalJobConfig

    return RetrievalJobConfig.model_validate(
        {
            "model": {"arch": "tiny", "width": 8, "allow_random": True},
            "data": {"uri": uri, "train_max_side": 32, "test_max_side": 32},
        }
    )


@pytest.fixture
def roxford(tmp_path) -> str:
    from mdir.data.ingest import ingest

    src = tmp_path / "roxford"
    gnd = [{"bbx": [0, 0, 9, 9], "easy": [0], "hard": [2], "junk": [1]}]
    write_revisited(src, ["a_1", "b_2", "c_3", "d_4"], ["a_q"], gnd, SIZE)
    ingest(str(src), str(tmp_path / "out"), "revisited", workers=1)
    return str(tmp_path / "out")


def test_revisited_ground_truth_from_the_manifest(roxford):
    from mdir.retrieval.evaluate import EvalSet, compute_metrics

    cfg = _cfg(roxford)
    es = EvalSet.open(cfg)  # eval.split "test" does not exist → query / db
    assert len(es.query_rows) == 1 and len(es.db_rows) == 4 and not es.localize
    g = es.gnd[0]
    assert (g["easy"].tolist(), g["hard"].tolist(), g["junk"].tolist()) == ([0], [2], [1])
    # ranking db0 (easy), db3 (negative), db2 (hard), db1 (junk)
    db = np.eye(4)
    q = np.array([[1.0, 0.1, 0.5, 0.7]])
    m = compute_metrics(q / np.linalg.norm(q), db, es, cfg.eval)
    assert m["map/easy"] == pytest.approx(1.0)
    # medium: positives at 0 and 2 → (1 + 1)/2 and (1/2 + 2/3)/2, averaged over 2 positives
    assert m["map/medium"] == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)
    # hard: the easy image counts as junk → the hard positive moves from 2 to 1: (0 + 1/2)/2
    assert m["map/hard"] == pytest.approx(0.25)
    assert m["recall_at_1/all"] == 1.0 and "loc/all/5m_10deg" not in m


def test_tokyo_positives_within_25m_and_saved_model_eval(tmp_path):
    from mdir.data.ingest import ingest
    from mdir.retrieval.evaluate import EvalSet, evaluate_registered
    from mdir.retrieval.model import build_model
    from mdir.retrieval.registry import save_model_files

    src = tmp_path / "tokyo"
    queries = {"q/00001.jpg": "night", "q/00002.jpg": "day"}
    write_tokyo247(src, queries, [[100.5, 860.0], [51.0, 71.0]], SIZE)
    out = str(tmp_path / "out")
    ingest(str(src), out, "tokyo247", workers=1)
    cfg = _cfg(out)
    es = EvalSet.open(cfg)
    assert es.is_night.tolist() == [True, False]
    # query 1 is ~1 m from db 0/1; query 2 is 40 m from db 2 (> 25 m): no positive
    assert [p.tolist() for p in es.pos_override] == [[0, 1], []]

    model = build_model(cfg.model)
    d = save_model_files(model, tmp_path / "model")
    doc = evaluate_registered(str(d), out, cfg)
    m = doc["metrics"]
    assert m["eval/queries"] == 2 and m["eval/queries_without_positive"] == 1
    assert m["recall_at_10/night"] == 1.0  # 3 database images: every positive is in the top 10
    assert m["recall_at_10/day"] == 0.0  # no positive within 25 m counts as a miss
