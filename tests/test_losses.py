"""Every loss of mdir.losses against a value computed by hand on a small tensor."""

from __future__ import annotations

import math

import pytest
import torch

from mdir import losses

T = torch.tensor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gan_loss_vanilla_is_bce_with_logits():
    # real target: mean(log(1 + e^-x)) over x = 0, 2
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert losses.gan_loss(T([0.0, 2.0]), True, "vanilla").item() == pytest.approx(
        expected, rel=1e-6
    )
    # fake target: mean(log(1 + e^x))
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert losses.gan_loss(T([0.0, 2.0]), False, "vanilla").item() == pytest.approx(
        expected, rel=1e-6
    )


def test_gan_loss_lsgan():
    assert losses.gan_loss(T([0.5, -1.0]), True, "lsgan").item() == pytest.approx((0.25 + 4.0) / 2)
    assert losses.gan_loss(T([0.5, -1.0]), False, "lsgan").item() == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError, match="vanilla, lsgan"):
        losses.gan_loss(T([0.0]), True, "hinge")  # type: ignore[arg-type]


def test_discriminator_loss_is_mean_of_real_and_fake():
    # lsgan: real 1 → 0, fake 0.5 → 0.25; mean = 0.125
    assert losses.discriminator_loss(T([1.0]), T([0.5]), "lsgan").item() == pytest.approx(0.125)
    # vanilla at logits 0: both terms log 2
    assert losses.discriminator_loss(T([0.0]), T([0.0])).item() == pytest.approx(math.log(2))


def test_l1_cycle_identity():
    pred, zero = T([[1.0, -2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    assert losses.l1_loss(pred, zero).item() == pytest.approx(2.5)
    assert losses.cycle_loss(pred, zero).item() == pytest.approx(2.5)
    assert losses.identity_loss(zero, pred).item() == pytest.approx(2.5)


def test_loss_weight_normalization_thesis():
    w = losses.normalized_weights({"gan": 1.0, "l1": 100.0})
    assert w["gan"] == pytest.approx(1 / 101) and w["l1"] == pytest.approx(100 / 101)
    assert losses.normalized_weights({"gan": 1.0, "l1": 100.0}, normalize=False) == {
        "gan": 1.0,
        "l1": 100.0,
    }


def test_weighted_sum():
    total, logs = losses.weighted_sum(
        {"a": T(2.0), "b": T(3.0), "c": T(7.0)}, {"a": 1.0, "b": 10.0, "c": 0.0}
    )
    assert total.item() == pytest.approx(32.0)
    assert logs == {"a": 2.0, "b": 3.0, "c": 7.0}


def test_content_triplet_loss():
    f_s = torch.zeros(1, 1, 1, 2)
    f_pos = T([[[[1.0, 1.0]]]])  # mean sq. distance 1
    # negative far (mean sq. 2): max(0, 1 − 2 + 0.1) = 0
    assert losses.content_triplet_loss(f_s, f_pos, T([[[[2.0, 0.0]]]]), 0.1).item() == 0.0
    # negative close (mean sq. 0.5): 1 − 0.5 + 0.1 = 0.6
    assert losses.content_triplet_loss(
        f_s, f_pos, T([[[[1.0, 0.0]]]]), 0.1
    ).item() == pytest.approx(0.6)


def test_filter_cosine_loss():
    w_t, w_pos, w_neg = T([[1.0, 0.0]]), T([[1.0, 1.0]]), T([[0.0, 1.0]])
    # 1 − cos(45°) + cos(90°)
    assert losses.filter_cosine_loss(w_t, w_pos, w_neg).item() == pytest.approx(
        1 - 1 / math.sqrt(2), rel=1e-5
    )
    # flattened over all filter dims: [1,2,1,1] behaves the same
    assert losses.filter_cosine_loss(
        w_t.view(1, 2, 1, 1), w_pos.view(1, 2, 1, 1), w_neg.view(1, 2, 1, 1)
    ).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-5)


def test_nce_loss():
    z, z_pos, z_neg = T([[1.0, 0.0]]), T([[1.0, 0.0]]), T([[0.0, 1.0]])
    # −log(e^{1/τ} / (e^{1/τ} + e^{0})) = log(1 + e^{−1/τ})
    assert losses.nce_loss(z, z_pos, z_neg, tau=1.0).item() == pytest.approx(
        math.log(1 + math.exp(-1)), rel=1e-6
    )
    assert losses.nce_loss(z, z_pos, z_neg, tau=0.5).item() == pytest.approx(
        math.log(1 + math.exp(-2)), rel=1e-6
    )
    # per-sample negatives [B, N, K]: two negatives, one equal to the query
    negs = T([[[0.0, 1.0], [1.0, 0.0]]])
    expected = math.log(math.e + 1 + math.e) - 1  # −log(e / (e + 1 + e))
    assert losses.nce_loss(z, z_pos, negs, tau=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_tuples():
    # tuple: query (0,0), positive at distance 5, negatives at 0.5 and 1 (margin 0.7)
    x = T([[0.0, 0.0], [3.0, 4.0], [0.3, 0.4], [1.0, 0.0]])
    label = T([-1, 1, 0, 0])
    expected = 0.5 * 25 + 0.5 * 0.2**2 + 0.0
    assert losses.contrastive_loss(x, label, margin=0.7).item() == pytest.approx(expected, abs=1e-4)
    # two tuples back to back: each row is compared with its own query
    x2 = torch.cat([x, T([[10.0, 10.0], [10.0, 11.0]])])
    l2 = torch.cat([label, T([-1, 1])])
    assert losses.contrastive_loss(x2, l2, margin=0.7).item() == pytest.approx(
        expected + 0.5, abs=1e-4
    )
    with pytest.raises(ValueError, match="query"):
        losses.contrastive_loss(x, T([1, -1, 0, 0]))
