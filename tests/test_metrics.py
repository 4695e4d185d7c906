"""Metric functions against inputs with known answers (pure numpy / torch, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdir.metrics import (
    EvalConfig,
    GaussianStats,
    frechet_distance,
    localization_recall,
    metric_key,
    recall_at_n,
    revisited_map,
)
from mdir.metrics.inception_score import inception_score
from mdir.metrics.kid import kernel_inception_distance, mmd2_unbiased
from mdir.metrics.prd import compute_prd, f_beta, plot_prd, prd_from_histograms
from mdir.metrics.retrieval import average_poses, positives_within, quaternion_angle_deg
from mdir.metrics.ssim import gaussian_window, ms_ssim, ssim

# ---------------------------------------------------------------- Fréchet distance


def _closed_form_diag(m1, a, m2, b):
    """Commuting covariances: FD = ‖μ₁−μ₂‖² + Σ (√aᵢ − √bᵢ)²."""
    return float(((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


def test_frechet_diagonal_2048d_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 2048
    a, b = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    exact = _closed_form_diag(m1, a, m2, b)
    got = frechet_distance(m1, np.diag(a), m2, np.diag(b))
    assert abs(got - exact) / exact < 1e-6


def test_frechet_commuting_rotated_covariances():
    rng = np.random.default_rng(1)
    d = 256
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.01, 9.0, d), rng.uniform(0.01, 9.0, d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    exact = _closed_form_diag(m1, a, m2, b)
    assert abs(frechet_distance(m1, s1, m2, s2) - exact) / exact < 1e-6
    # symmetric in its arguments
    assert abs(frechet_distance(m2, s2, m1, s1) - exact) / exact < 1e-6


def test_frechet_one_dimensional_and_identical():
    # 1-d: (μ₁−μ₂)² + (σ₁−σ₂)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 32))
    st = GaussianStats.from_features(x)
    assert st.frechet_distance(st) == pytest.approx(0.0, abs=1e-9)


def test_frechet_singular_covariances_n_less_than_d():
    """Fewer samples than dims: rank-deficient Σ; compare with an eigendecomposition
    of √Σ₁ Σ₂ √Σ₁ computed independently."""
    rng = np.random.default_rng(3)
    d = 64
    x = rng.normal(size=(20, d))
    y = rng.normal(size=(30, d)) * 1.5 + 0.2
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert np.linalg.matrix_rank(s1) < d and np.linalg.matrix_rank(s2) < d
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    m1, m2 = x.mean(0), y.mean(0)
    ref = (
        ((m1 - m2) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sqrt(np.clip(ev, 0, None)).sum()
    )
    got = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(got) and abs(got - ref) / ref < 1e-6
    # the singular factor can be the second argument too
    assert abs(frechet_distance(m2, s2, m1, s1) - ref) / ref < 1e-6
    # zero covariance: only the means and the other trace remain
    z = np.zeros((d, d))
    assert frechet_distance(m1, z, m2, s2) == pytest.approx(
        ((m1 - m2) ** 2).sum() + np.trace(s2), rel=1e-9
    )


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- Gaussian statistics


def test_gaussian_stats_streaming_and_merge_are_exact():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(1000, 16)) * 3 + 100).astype(np.float32)  # offset stresses naive sums
    ref_mean = x.astype(np.float64).mean(0)
    ref_cov = np.cov(x.astype(np.float64), rowvar=False)
    streamed = GaussianStats(16)
    for s in range(0, 1000, 37):
        streamed.update(x[s : s + 37])
    parts = [GaussianStats.from_features(p) for p in np.array_split(x, 5)]
    merged = GaussianStats(16)
    for p in parts:
        merged.merge(p)
    merged.merge(GaussianStats(16))  # an empty worker changes nothing
    for st in (streamed, merged):
        assert st.n == 1000
        np.testing.assert_allclose(st.mean, ref_mean, rtol=1e-13)
        np.testing.assert_allclose(st.cov, ref_cov, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        GaussianStats(16).update(np.zeros((3, 5)))


def test_gaussian_stats_save_load(tmp_path):
    st = GaussianStats.from_features(np.random.default_rng(5).normal(size=(10, 4)))
    st.save(str(tmp_path / "s.npz"))
    back = GaussianStats.load(str(tmp_path / "s.npz"))
    assert back.n == 10 and np.array_equal(back.m2, st.m2) and np.array_equal(back.mean, st.mean)


# ---------------------------------------------------------------- KID


def test_mmd2_matches_brute_force_formula():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 5
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mmd2_unbiased(x, y) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-12)


def test_kid_same_distribution_near_zero_and_shift_has_closed_form_scale():
    """N(0, I) vs N(m, I) under k = (xᵀy/d + 1)³:
    MMD² = 3s/d + 3s²/d² + (s³ + 6s² + (3d + 6)s)/d³ with s = ‖m‖²."""
    d = 8
    rng = np.random.default_rng(7)
    x, x2 = rng.normal(size=(2000, d)), rng.normal(size=(2000, d))
    same, _ = kernel_inception_distance(x, x2, num_subsets=10, subset_size=500, seed=0)
    s = 1.0
    shift = np.full(d, math.sqrt(s / d))
    exact = 3 * s / d + 3 * s**2 / d**2 + (s**3 + 6 * s**2 + (3 * d + 6) * s) / d**3
    shifted, _ = kernel_inception_distance(x, x2 + shift, num_subsets=10, subset_size=500, seed=0)
    assert abs(same) < 0.05 * exact
    assert shifted == pytest.approx(exact, rel=0.2)


# ---------------------------------------------------------------- Inception Score


def test_inception_score_uniform_is_one_and_one_hot_is_num_classes():
    uniform = np.zeros((100, 1008))
    assert inception_score(uniform, splits=10)[0] == pytest.approx(1.0, abs=1e-9)
    k = 10
    one_hot = np.full((100, 1008), -100.0)
    one_hot[np.arange(100), np.arange(100) % k] = 100.0  # each split sees all 10 classes
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        inception_score(np.zeros((3, 5)), splits=10)


# ---------------------------------------------------------------- PRD


def test_prd_histogram_case_by_hand():
    # Q puts everything in bin 0, P splits 50/50: max precision 1, max recall 0.5
    p, r = prd_from_histograms(np.array([1.0, 0.0]), np.array([0.5, 0.5]), num_angles=2001)
    assert p.max() == pytest.approx(1.0, abs=1e-3) and r.max() == pytest.approx(0.5, abs=1e-3)
    assert f_beta(np.array([0.0]), np.array([0.0]), 8.0)[0] == 0.0
    assert f_beta(np.array([1.0]), np.array([1.0]), 8.0)[0] == pytest.approx(1.0)


def test_prd_identical_is_one_and_disjoint_is_zero(tmp_path):
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(5, 16)) * 20
    x = centers[rng.integers(0, 5, 400)] + rng.normal(size=(400, 16))
    same = compute_prd(x, x.copy(), num_clusters=20, num_angles=201, num_runs=2, seed=0)
    assert same.f8 == pytest.approx(1.0, abs=1e-3) and same.f1_8 == pytest.approx(1.0, abs=1e-3)
    far = x + 1000.0
    dis = compute_prd(x, far, num_clusters=20, num_angles=201, num_runs=2, seed=0)
    assert dis.f8 < 1e-3 and dis.f1_8 < 1e-3
    png = plot_prd({"same": same, "disjoint": dis}, str(tmp_path / "prd.png"))
    assert (tmp_path / "prd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.endswith(".png")


# ---------------------------------------------------------------- SSIM / MS-SSIM


def test_ssim_identical_constant_and_hand_computed_window():
    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    # constant images a, b: SSIM = (2ab + C1) / (a² + b² + C1)
    a, b, c1 = 100.0, 150.0, (0.01 * 255) ** 2
    ca = np.full((1, 16, 16, 3), 100, np.uint8)
    cb = np.full((1, 16, 16, 3), 150, np.uint8)
    assert ssim(ca, cb) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    # one 11×11 window: Gaussian-weighted moments computed by hand
    x = rng.uniform(0, 1, (11, 11))
    y = np.clip(x + rng.normal(0, 0.1, (11, 11)), 0, 1)
    g1 = gaussian_window().numpy()
    w = np.outer(g1, g1)
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cxy = (w * x * y).sum() - mx * my
    k1, k2 = 0.01**2, 0.03**2
    want = (2 * mx * my + k1) * (2 * cxy + k2) / ((mx**2 + my**2 + k1) * (vx + vy + k2))
    got = ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None], data_range=1.0)
    assert got == pytest.approx(want, rel=1e-10)
    assert want < 0.99


def test_ms_ssim_identical_is_one_and_noise_lowers_it():
    rng = np.random.default_rng(10)
    img = rng.integers(0, 256, (1, 176, 176, 3), dtype=np.uint8)
    assert ms_ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(img.astype(int) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    v = ms_ssim(img, noisy)
    assert 0.0 < v < 1.0 and v == pytest.approx(ms_ssim(noisy, img), rel=1e-12)
    with pytest.raises(ValueError, match="160"):
        ms_ssim(img[:, :64, :64], img[:, :64, :64])
    with pytest.raises(ValueError, match="data_range"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


# ---------------------------------------------------------------- retrieval


def _gnd():
    # query 0: easy {0, 3}, hard {5}, junk {1}; query 1: easy {2} only
    return [{"easy": [0, 3], "hard": [5], "junk": [1]}, {"easy": [2], "hard": [], "junk": []}]


def _ranks():
    return np.array([[1, 0, 2, 5, 3, 4, 6, 7, 8, 9], [2, 0, 1, 3, 4, 5, 6, 7, 8, 9]])


def test_revisited_map_hand_built_ranking():
    """Query 0, positions after junk removal and trapezoidal AP worked out by hand:
    easy:   positives {0,3}, junk {1,5}: positions [0, 2] → AP = (1 + (1/2 + 2/3)/2)/2
    medium: positives {0,3,5}, junk {1}: positions [0, 2, 3]
            → AP = (1 + (1/2 + 2/3)/2 + (2/3 + 3/4)/2)/3
    hard:   positives {5}, junk {1,0,3}: position [1] → AP = (0 + 1/2)/2 = 1/4
    Query 1 (AP 1) has no hard positive and is left out of the hard average."""
    ap_easy = (1 + (1 / 2 + 2 / 3) / 2) / 2
    ap_med = (1 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 3
    easy = revisited_map(_ranks(), _gnd(), "easy")
    med = revisited_map(_ranks(), _gnd(), "medium")
    hard = revisited_map(_ranks(), _gnd(), "hard")
    assert easy["map"] == pytest.approx((ap_easy + 1) / 2, rel=1e-12)
    assert med["map"] == pytest.approx((ap_med + 1) / 2, rel=1e-12)
    assert hard["map"] == pytest.approx(0.25, rel=1e-12) and hard["num_queries"] == 1
    # mP@k (reference definition k' = min(max position, k)):
    # easy q0 positions (1-based) [1, 3]: P@1 = 1, P@5 → k' = 3 → 2/3; q1: 1, 1
    assert easy["mp@1"] == pytest.approx(1.0)
    assert easy["mp@5"] == pytest.approx((2 / 3 + 1) / 2)
    # hard q0 position [2]: P@1 = 0, P@5 → k' = 2 → 1/2
    assert hard["mp@1"] == 0.0 and hard["mp@5"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="protocol"):
        revisited_map(_ranks(), _gnd(), "extreme")  # type: ignore[arg-type]


def test_recall_at_n_and_positives_by_distance():
    db = np.array([[0.0, 0, 0], [30.0, 0, 0], [100.0, 0, 0]])
    q = np.array([[1.0, 0, 0], [95.0, 0, 0], [500.0, 0, 0]])
    pos = positives_within(q, db, threshold_m=25.0)
    assert [p.tolist() for p in pos] == [[0], [2], []]
    ranks = np.array([[0, 1, 2], [1, 0, 2], [0, 1, 2]])
    rec = recall_at_n(ranks, pos, ns=(1, 2, 3))
    assert rec == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}


def _qz(deg):
    """Quaternion (w, x, y, z) of a rotation by `deg` about z."""
    h = math.radians(deg) / 2
    return [math.cos(h), 0.0, 0.0, math.sin(h)]


def test_localization_recall_hand_placed_poses_day_night_and_topk():
    db = np.array(
        [
            [0, 0, 0, *_qz(0)],
            [0.2, 0, 0, *_qz(1.5)],  # 0.2 m, 1.5°: within all thresholds
            [3, 0, 0, *_qz(8)],  # 3 m, 8°: only (5 m, 10°)
            [100, 0, 0, *_qz(0)],  # far away
            [0.2, 0, 0, *_qz(3)],
            [0.8, 0, 0, *_qz(-3)],
        ]
    )
    gt = [0, 0, 0, *_qz(0)]
    queries = np.array([gt, gt, gt, [np.nan] * 7])
    conds = ["day", "night", "night-rain", "day"]
    ranks = np.array(
        [[1, 0, 2, 3, 4, 5], [2, 0, 1, 3, 4, 5], [3, 0, 1, 2, 4, 5], [0, 1, 2, 3, 4, 5]]
    )
    out = localization_recall(ranks, queries, db, conds)
    assert [out[f"day/{t}"] for t in ("0.25m_2deg", "0.5m_5deg", "5m_10deg")] == [1.0, 1.0, 1.0]
    assert [out[f"night/{t}"] for t in ("0.25m_2deg", "0.5m_5deg", "5m_10deg")] == [0.0, 0.0, 0.5]
    assert out["all/5m_10deg"] == pytest.approx(2 / 3)
    assert out["skipped_queries"] == 1 and out["num_day"] == 1 and out["num_night"] == 2
    # top-k averaging: db 4 and 5 straddle the true pose (0.5, 0, 0) at ±3°
    q = np.array([[0.5, 0, 0, *_qz(0)]])
    r = np.array([[4, 5, 0, 1, 2, 3]])
    top1 = localization_recall(r, q, db, ["day"], top_k=1)
    top2 = localization_recall(r, q, db, ["day"], top_k=2)
    assert top1["day/0.25m_2deg"] == 0.0 and top1["day/0.5m_5deg"] == 1.0
    assert top2["day/0.25m_2deg"] == 1.0


def test_pose_helpers():
    assert quaternion_angle_deg(np.array(_qz(10)), np.array(_qz(-20))) == pytest.approx(30.0)
    # q and −q are the same rotation
    assert quaternion_angle_deg(np.array(_qz(10)), -np.array(_qz(10))) == pytest.approx(
        0.0, abs=1e-6
    )
    avg = average_poses(np.array([[0, 0, 0, *_qz(4)], [2, 0, 0, *(-np.array(_qz(-4)))]]))
    np.testing.assert_allclose(avg, [1, 0, 0, 1, 0, 0, 0], atol=1e-9)


# ---------------------------------------------------------------- naming and config


def test_metric_key_and_config():
    assert metric_key("fid", "inception") == "fid_legacy"
    assert metric_key("kid_std", "inception", "clean") == "kid_std_clean"
    assert metric_key("fid", "random_inception") == "fid_legacy_random_inception"
    with pytest.raises(ValueError, match="protocol"):
        metric_key("fid", "inception", "tf")
    cfg = EvalConfig()
    assert cfg.metrics == ["fid", "kid", "is", "prd"] and not cfg.allow_random_features
    assert cfg.fid_protocol == "legacy" and not cfg.require_standard_weights
    with pytest.raises(Exception, match="extra"):
        EvalConfig(fid_images=3)  # type: ignore[call-arg]
