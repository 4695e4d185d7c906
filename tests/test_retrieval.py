"""Retrieval: contrastive loss, mining, whitening, positives, search, augmentation (fast, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdir.retrieval.augment import GanAugmenter, reflect_pad_to_multiple, translate_padded
from mdir.retrieval.mining import select_tuples
from mdir.retrieval.positives import Matching, pose_errors, read_pairs
from mdir.retrieval.search import exact_search, faiss_search
from mdir.retrieval.whitening import Whitening, apply_whitening, learn_whitening


def _quat_z(deg: float) -> list[float]:
    h = np.radians(deg) / 2
    return [np.cos(h), 0.0, 0.0, np.sin(h)]


# ---------------------------------------------------------------- contrastive loss via the tuple adapter


def test_contrastive_loss_on_hand_built_tuple():
    from mdir.retrieval.train import _contrastive

    # one tuple (q, p, n1, n2) in 2-D: ‖q−p‖ = 0.6, ‖q−n1‖ = 0.5 (< margin 0.7), ‖q−n2‖ = 1.0 (> margin)
    x = torch.tensor([[0.0, 0.0], [0.6, 0.0], [0.0, 0.5], [1.0, 0.0]])
    loss = _contrastive(x, tuple_len=4, margin=0.7)
    expected = 0.5 * 0.6**2 + 0.5 * (0.7 - 0.5) ** 2 + 0.0
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # two tuples → sum of both (cirtorch sums over pairs)
    loss2 = _contrastive(torch.cat([x, x]), tuple_len=4, margin=0.7)
    assert loss2.item() == pytest.approx(2 * expected, rel=1e-4)


# ---------------------------------------------------------------- positives


def test_pose_positives_use_mduit_thresholds():
    pose = np.array(
        [
            [0, 0, 0, *_quat_z(0)],
            [5, 0, 0, *_quat_z(5)],  # 5 m, 5°: positive
            [6, 0, 0, *_quat_z(9)],  # rotation 9° ≥ 8°: not positive
            [8, 0, 0, *_quat_z(0)],  # 8 m ≥ 7 m: not positive, too close to be a negative (< 14 m)
            [30, 0, 0, *_quat_z(0)],  # far: negative
        ],
        dtype=np.float64,
    )
    m = Matching(mode="pose", place=np.arange(5), pose=pose)
    t, r = pose_errors(pose[0][None], pose[1:2])
    assert t[0] == pytest.approx(5.0) and r[0] == pytest.approx(5.0, abs=1e-6)
    rows = np.arange(5)
    assert m.positive_mask(0, rows).tolist() == [False, True, False, False, False]
    assert m.negative_mask(0, rows).tolist() == [False, False, False, False, True]


def test_place_and_pairs_matching(tmp_path):
    m = Matching(mode="place", place=np.array([0, 0, 1, 1, -1]), pose=np.full((5, 7), np.nan))
    assert m.positive_mask(0, np.arange(5)).tolist() == [False, True, False, False, False]
    assert m.negative_mask(0, np.arange(5)).tolist() == [False, False, True, True, True]
    f = tmp_path / "pairs.csv"
    f.write_text("query,positive\na.jpg,c.jpg\nb.jpg,missing.jpg\n")
    pairs = read_pairs(f, {"a.jpg": 0, "b.jpg": 1, "c.jpg": 2})
    assert pairs == {0: {2}, 2: {0}}  # symmetric, unknown source skipped
    mp = Matching(mode="pairs", place=np.full(3, -1), pose=np.full((3, 7), np.nan), pairs=pairs)
    assert mp.positive_mask(2, np.arange(3)).tolist() == [True, False, False]


# ---------------------------------------------------------------- hard-negative mining


def test_mining_picks_hardest_negatives_one_per_place():
    # rows: 0 = query (place 0); 1,2 positives (place 0); 3..7 negatives of places 1,1,2,3,4
    place = np.array([0, 0, 0, 1, 1, 2, 3, 4])
    m = Matching(mode="place", place=place, pose=np.full((8, 7), np.nan))
    q = np.array([[1.0, 0.0]])
    ang = {1: 0.9, 2: 0.2, 3: 0.3, 4: 0.1, 5: 1.2, 6: 0.5, 7: 2.5}  # angle to the query, radians
    vecs = np.zeros((8, 2))
    vecs[0] = [1, 0]
    for r, a in ang.items():
        vecs[r] = [np.cos(a), np.sin(a)]
    tuples, stats = select_tuples(q, np.array([0]), vecs, np.arange(8), m, neg_num=3)
    # positive: the most similar place-0 image (row 2, angle 0.2); negatives by similarity,
    # one per place: row 4 (place 1, 0.1) — row 3 (same place 1) skipped — then 6 (0.5), 5 (1.2)
    assert tuples.tolist() == [[0, 2, 4, 6, 5]]
    assert stats.short_of_negatives == 0
    assert stats.mean_positive_sim == pytest.approx(np.cos(0.2))
    # negatives restricted to a pool: rows 5 and 7 only → padded by repetition and counted
    pool_mask = np.isin(np.arange(8), [5, 7])
    tuples, stats = select_tuples(
        q, np.array([0]), vecs, np.arange(8), m, neg_num=3, pool_mask=pool_mask
    )
    assert tuples.tolist() == [[0, 2, 5, 7, 5]]
    assert stats.short_of_negatives == 1


# ---------------------------------------------------------------- whitening


def test_learned_whitening_decorrelates_pair_differences():
    rng = np.random.default_rng(0)
    d, n = 6, 4000
    # classes with a shared, strongly correlated intra-class noise
    mix = rng.normal(size=(d, d))
    centers = rng.normal(size=(n // 2, d)) * 3
    x = np.concatenate(
        [
            centers + rng.normal(size=(n // 2, d)) @ mix.T,
            centers + rng.normal(size=(n // 2, d)) @ mix.T,
        ]
    )
    qidx, pidx = np.arange(n // 2), np.arange(n // 2) + n // 2
    mu, proj = learn_whitening(x, qidx, pidx)
    diff = (x[qidx] - x[pidx]) @ proj.T
    cov = diff.T @ diff / len(diff)
    assert np.allclose(cov, np.eye(d), atol=1e-3)  # intra-class covariance → identity
    xc = (x - mu) @ proj.T
    c = xc.T @ xc
    off = c - np.diag(np.diag(c))
    assert np.abs(off).max() < 1e-6 * np.abs(np.diag(c)).max()  # PCA-rotated: decorrelated
    assert np.all(np.diff(np.diag(c)) <= 1e-6)  # sorted by decreasing variance
    # module and numpy apply agree, and as a Linear
    w = Whitening(mu, proj)
    t = torch.from_numpy(x[:5]).float()
    assert np.allclose(w(t).numpy(), apply_whitening(x[:5], mu, proj), atol=1e-4)
    lin = w.as_linear()
    assert torch.allclose(torch.nn.functional.normalize(lin(t), dim=-1), w(t), atol=1e-4)


# ---------------------------------------------------------------- search


def test_exact_and_faiss_search_agree():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(50, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[[3, 7]] + 0.01
    s1, r1 = exact_search(db, q, k=5)
    s2, r2 = faiss_search(db, q, k=5)
    assert r1[:, 0].tolist() == [3, 7]
    assert np.array_equal(r1, r2)
    assert np.allclose(s1, s2, atol=1e-5)


# ---------------------------------------------------------------- augmentation


class _Negate:
    """Stand-in translator: x → −x (checks that only padded-then-cropped pixels come back)."""

    method = "cyclegan"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def translate(self, images, reference=None):
        self.shapes.append(tuple(images.shape))
        return -images


def test_reflect_pad_to_multiple_of_256_and_crop_back():
    x = torch.rand(2, 3, 40, 70) * 2 - 1
    p, (top, left) = reflect_pad_to_multiple(x, 256)
    assert p.shape[-2:] == (256, 256)
    assert torch.equal(p[..., top : top + 40, left : left + 70], x)
    # reflection: the row above the image mirrors the row below its first row
    assert torch.equal(p[..., top - 1, left : left + 70], x[..., 1, :])
    t = _Negate()
    y = translate_padded(t, x, 256)
    assert t.shapes == [(2, 3, 256, 256)] and y.shape == x.shape
    assert torch.allclose(y, -x)


def test_augmenter_applies_with_probability_and_counts():
    t = _Negate()
    aug = GanAugmenter(t, probability=0.15, pad_multiple=32, seed=0)
    x = torch.rand(7, 3, 16, 16) * 0.5 + 0.25  # positive pixels, so translated rows are negative
    total = 0
    for _ in range(200):
        y, mask = aug(x)
        total += int(mask.sum())
        assert torch.equal(y[~torch.from_numpy(mask)], x[~torch.from_numpy(mask)])
        assert bool((y[torch.from_numpy(mask)] < 0).all())
    assert aug.counter.seen == 1400 and aug.counter.applied == total
    assert 0.12 < aug.counter.rate < 0.18  # binomial(1400, 0.15): ±3σ ≈ ±0.029
    # only eligible rows are ever translated
    aug2 = GanAugmenter(t, probability=1.0, pad_multiple=32, seed=0)
    _, mask = aug2(x, eligible=[True, False] * 3 + [True])
    assert mask.tolist() == [True, False] * 3 + [True]


def test_mduit_style_translator_gets_references():
    seen = {}

    class _Ref:
        def translate(self, images, reference=None):
            seen["ref"] = None if reference is None else tuple(reference.shape)
            return images

    aug = GanAugmenter(
        _Ref(),
        probability=1.0,
        pad_multiple=32,
        needs_reference=True,
        draw_reference=lambda n, rng: torch.zeros(n, 3, 16, 16),
        seed=0,
    )
    aug(torch.zeros(3, 3, 16, 16))
    assert seen["ref"] == (3, 3, 32, 32)  # one reference per translated image, at the padded size
    with pytest.raises(ValueError, match="reference"):
        GanAugmenter(_Ref(), needs_reference=True)


# ---------------------------------------------------------------- evaluation wiring (metrics from mdir.metrics)


class _ArrayStore:
    """Stand-in `ImageStore` over in-memory metadata (images are never loaded here)."""

    conditions = ["day", "night"]

    def __init__(self, cond, place, pose):
        self._m = {
            "condition": np.asarray(cond),
            "place": np.asarray(place),
            "pose": np.asarray(pose, float),
        }

    def __len__(self):
        return len(self._m["place"])

    def ids(self):
        return np.arange(len(self)) + 100  # row ids ≠ positions on purpose

    def meta(self):
        return dict(self._m)

    def load(self, ids):  # pragma: no cover - not used
        raise AssertionError


def test_compute_metrics_on_hand_built_descriptors():
    from mdir.retrieval.config import RetrievalEvalConfig
    from mdir.retrieval.data import from_store
    from mdir.retrieval.evaluate import EvalSet, compute_metrics

    # rows 0-3: day database, places 0..3 (1 km apart); rows 4-6: queries night/day/night
    pose = [[1000.0 * p, 0, 0, *_quat_z(0)] for p in range(4)]
    qpose = [[0.3, 0, 0, *_quat_z(1)], [1000.0, 0, 0, *_quat_z(0)], [2004.0, 0, 0, *_quat_z(0)]]
    store = _ArrayStore([0, 0, 0, 0, 1, 0, 1], [0, 1, 2, 3, 0, 1, 2], pose + qpose)
    data = from_store(store, positives="place")
    ecfg = RetrievalEvalConfig(
        database_conditions=["day"], query_conditions=["night"], recall_n=[1, 2]
    )
    es = EvalSet.from_split(data, ecfg)
    assert es.query_rows.tolist() == [4, 6]
    es = EvalSet(
        data=data,
        db_rows=np.arange(4),
        query_rows=np.array([4, 5, 6]),
        is_night=np.array([True, False, True]),
    )
    db = np.eye(4)
    # q4 → place 0 first (right); q5 → place 3 then place 1 (wrong at 1, right at 2); q6 → place 2
    q = np.array([[1.0, 0, 0, 0], [0, 0.6, 0, 0.8], [0, 0, 1.0, 0]])
    m = compute_metrics(q, db, es, ecfg)
    assert (
        m["recall_at_1/night"] == 1.0
        and m["recall_at_1/day"] == 0.0
        and m["recall_at_2/day"] == 1.0
    )
    assert m["recall_at_1/all"] == pytest.approx(2 / 3)
    # revisited (trapezoidal) AP of q5, single positive at rank 2: (0/1 + 1/2) / 2 = 0.25
    assert m["map"] == pytest.approx((1 + 0.25 + 1) / 3)
    # localization from the top-1 pose: q4 is 0.3 m / 1° off (within 0.5 m, 5° but not 0.25 m, 2°),
    # q6 is 4 m off (only 5 m, 10°); q5 retrieved the wrong place (1 km off)
    assert m["loc/night/0.25m_2deg"] == 0.0
    assert m["loc/night/0.5m_5deg"] == 0.5
    assert m["loc/night/5m_10deg"] == 1.0
    assert m["loc/day/5m_10deg"] == 0.0
    # revisited ground truth path: junk ranked first is ignored, Hard uses the hard positives
    es.gnd = [
        {"easy": np.array([0]), "hard": np.array([], np.int64), "junk": np.array([], np.int64)},
        {"easy": np.array([], np.int64), "hard": np.array([1]), "junk": np.array([3])},
        {"easy": np.array([2]), "hard": np.array([], np.int64), "junk": np.array([], np.int64)},
    ]
    m = compute_metrics(q, db, es, ecfg)
    assert m["map/hard"] == 1.0  # q5: junk (place 3) removed → hard positive first
    assert m["map/easy"] == 1.0 and m["map/medium"] == 1.0


def test_config_defaults_follow_the_papers():
    from mdir.config import ConfigError
    from mdir.retrieval.config import RetrievalJobConfig, load_retrieval_config

    c = RetrievalJobConfig(data={"uri": "/x"})
    assert (c.margin, c.lr, c.data.train_max_side, c.mining.neg_num, c.augment.probability) == (
        0.75,
        1e-6,
        362,
        5,
        0.15,
    )
    assert c.data.test_max_side == 1024
    assert (c.data.max_rotation_deg, c.data.max_translation_m, c.augment.pad_multiple) == (
        8.0,
        7.0,
        256,
    )
    for arch in ("resnet50", "resnet101"):
        r = RetrievalJobConfig(data={"uri": "/x"}, model={"arch": arch})
        assert (r.margin, r.lr) == (0.85, 5e-7)
    # an explicit margin wins over the trunk's default
    assert RetrievalJobConfig(data={"uri": "/x"}, mining={"margin": 0.5}).margin == 0.5
    assert c.model_name == "mdir-retrieval-x"
    with pytest.raises(ConfigError, match="optim.batch_size|multiple of scaling.num_workers"):
        load_retrieval_config(None, ["data.uri=/x", "optim.batch_size=5", "scaling.num_workers=2"])
    with pytest.raises(ConfigError, match="augment.probability"):
        load_retrieval_config(None, ["data.uri=/x", "augment.probability=1.5"])


def test_augmenter_with_a_real_mduit_translator_and_references():
    from mdir.methods import build_generator
    from mdir.methods.specs import parse_method_config
    from mdir.registry.generators import Translator

    cfg = parse_method_config(
        {
            "name": "mduit",
            "ngf": 4,
            "ndf": 8,
            "n_res_enc": 1,
            "n_res_dec": 1,
            "ea_hidden": 8,
            "proj_hidden": 16,
            "proj_dim": 8,
            "allow_random_vgg": True,
        }
    )
    torch.manual_seed(0)
    t = Translator(
        generator=build_generator(cfg).eval(),
        method_config=cfg,
        model_uri="test",
        version="1",
        run_id=None,
    )
    drawn = []

    def refs(n, rng):
        drawn.append(n)
        return torch.rand(n, 3, 24, 24) * 2 - 1

    aug = GanAugmenter(
        t, probability=1.0, pad_multiple=32, needs_reference=True, draw_reference=refs, seed=0
    )
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    y, mask = aug(x)
    assert mask.all() and drawn == [2] and y.shape == x.shape
    assert not torch.allclose(y, x) and y.abs().max() <= 1.0
    assert aug.counter.applied == 2 and aug.counter.failed == 0
