"""Soft Dice (Liu et al. 2021 eq. 5-6) on hand-computed cases, and the other losses."""

import math

import pytest
import torch
from monai.losses import DiceLoss

from napari_medadv.core.losses import (
    BCELoss, CrossEntropyLoss, MSELoss, SoftDiceLoss, as_dense_target, make_loss, soft_dice_coefficient,
)

# One sample, N = 3 classes, 4 pixels. Probabilities F (columns = pixels) and one-hot Y.
F = torch.tensor([[[0.7, 0.1, 0.2, 0.6],
                   [0.2, 0.8, 0.1, 0.3],
                   [0.1, 0.1, 0.7, 0.1]]])
Y = torch.tensor([[[1.0, 0.0, 0.0, 1.0],
                   [0.0, 1.0, 0.0, 0.0],
                   [0.0, 0.0, 1.0, 0.0]]])
G = 1e-5
# class 1: sum F*Y = 0.8, sum F = 1.4, sum Y = 1  -> (1.6 + g) / (2.4 + g)
# class 2: sum F*Y = 0.7, sum F = 1.0, sum Y = 1  -> (1.4 + g) / (2.0 + g)
D1 = (1.6 + G) / (2.4 + G)
D2 = (1.4 + G) / (2.0 + G)


@pytest.mark.parametrize(
    "normalization, include_background, expected",
    [
        ("paper", False, (D1 + D2) / 3),  # eq. 5 as printed: 1/N with N = 3 classes
        ("mean", False, (D1 + D2) / 2),
        # class 0: sum F*Y = 1.3, sum F = 1.6, sum Y = 2 -> (2.6 + g) / (3.6 + g)
        ("mean", True, ((2.6 + G) / (3.6 + G) + D1 + D2) / 3),
    ],
)
def test_soft_dice_hand_computed(normalization, include_background, expected):
    d = soft_dice_coefficient(F, Y, gamma=G, include_background=include_background, normalization=normalization)
    assert d.shape == (1,)
    assert float(d[0]) == pytest.approx(expected, rel=1e-6)


def test_loss_is_one_minus_dice_and_monai_differs_by_n_minus_1_over_n():
    ours = SoftDiceLoss("none", gamma=G)(F, Y)
    assert float(ours[0]) == pytest.approx(1 - (D1 + D2) / 3, rel=1e-6)
    # MONAI's DiceLoss averages over the N-1 included classes: equal to our "mean" normalisation,
    # not to eq. 5 as printed — which is why the paper's loss is written by hand.
    monai = DiceLoss(include_background=False, smooth_nr=G, smooth_dr=G, reduction="none")(F, Y)
    ours_mean = SoftDiceLoss("none", gamma=G, normalization="mean")(F, Y)
    assert float(monai.mean()) == pytest.approx(float(ours_mean[0]), rel=1e-5)
    assert float(monai.mean()) != pytest.approx(float(ours[0]), rel=1e-3)
    # ... and the gradients of both dice coefficients differ by exactly (N-1)/N, so FGSM's sign agrees
    f1 = F.clone().requires_grad_(True)
    f2 = F.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(soft_dice_coefficient(f1, Y, gamma=G).sum(), f1)
    (g2,) = torch.autograd.grad(soft_dice_coefficient(f2, Y, gamma=G, normalization="mean").sum(), f2)
    torch.testing.assert_close(g1, g2 * 2 / 3)


def test_soft_dice_accepts_index_labels_and_softmax():
    logits = torch.randn(2, 3, 5, 5)
    idx = torch.randint(0, 3, (2, 5, 5))
    a = SoftDiceLoss()(logits, idx)
    b = SoftDiceLoss()(logits, as_dense_target(idx, logits))
    torch.testing.assert_close(a, b)
    assert a.shape == (2,)
    assert torch.all((a > 0) & (a < 1))


def test_perfect_prediction_gives_zero_mean_dice_loss():
    idx = torch.tensor([[[0, 1], [2, 1]]])
    onehot = as_dense_target(idx, torch.zeros(1, 3, 2, 2))
    loss = SoftDiceLoss("none", normalization="mean")(onehot, idx)
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-6)


def test_cross_entropy_bce_mse_per_sample():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ce = CrossEntropyLoss()(logits, torch.tensor([0, 0]))
    assert float(ce[0]) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert float(ce[1]) == pytest.approx(math.log(1 + math.e), rel=1e-6)
    bce = BCELoss()(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert float(bce[0]) == pytest.approx(math.log(2), rel=1e-6)
    mse = MSELoss("none")(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]))
    assert float(mse[0]) == pytest.approx(0.25)


def test_automatic_loss_choice():
    assert isinstance(make_loss(None, torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)), SoftDiceLoss)
    assert isinstance(make_loss(None, torch.zeros(2, 5), torch.tensor([1, 2])), CrossEntropyLoss)
    assert isinstance(make_loss(None, torch.zeros(2, 5), torch.zeros(2, 5)), BCELoss)
    sig = make_loss(None, torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))  # multi-hot regions
    assert isinstance(sig, SoftDiceLoss) and sig.activation == "sigmoid" and sig.include_background


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: SoftDiceLoss("relu"), "activation"),
        (lambda: SoftDiceLoss(gamma=0), "gamma"),
        (lambda: SoftDiceLoss()(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3)), "class index"),
        (lambda: SoftDiceLoss()(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long)), "does not fit"),
        (lambda: soft_dice_coefficient(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)), "at least 2 classes"),
        (lambda: make_loss("hinge", torch.zeros(1, 2), None), "unknown loss"),
    ],
)
def test_ill_opts(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- ordinal loss OL (Ghamizi et al. 2023 after Frank & Hall 2001) -----------------------------


def test_ordinal_targets_hand_computed():
    from napari_medadv.core.losses import ordinal_targets

    t = torch.tensor([[0.2, 0.9, 0.2, 0.5],   # 3 levels 0.2 < 0.5 < 0.9 -> 0, 1, 0, 1/2
                      [1.0, 0.0, 1.0, 0.0],   # binary: the target itself
                      [0.3, 0.3, 0.3, 0.3]])  # one level: no cut
    expected = torch.tensor([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(ordinal_targets(t), expected)
    # segmentation layout B K H W: per voxel along the channels
    seg = t[:2].T.reshape(1, 4, 1, 2)
    torch.testing.assert_close(ordinal_targets(seg), expected[:2].T.reshape(1, 4, 1, 2))


def test_ordinal_loss_hand_computed_and_order_only():
    from napari_medadv.core.losses import OrdinalLoss

    logits = torch.tensor([[0.0, 2.0, -1.0]])
    target = torch.tensor([[0.1, 0.8, 0.4]])  # levels -> (0, 1, 1/2)
    p = torch.sigmoid(logits)[0]
    # BCE per label against the cumulative targets, averaged over the 3 labels
    hand = -(torch.log(1 - p[0]) + torch.log(p[1]) + 0.5 * torch.log(p[2]) + 0.5 * torch.log(1 - p[2])) / 3
    ol = OrdinalLoss()(logits, target)
    assert ol.shape == (1,)
    assert float(ol[0]) == pytest.approx(float(hand), rel=1e-6)
    # only the order of the target matters; a binary target gives plain BCE
    assert float(OrdinalLoss()(logits, target ** 3 + 5)[0]) == pytest.approx(float(ol[0]), rel=1e-6)
    binary = torch.tensor([[0.0, 1.0, 1.0]])
    assert float(OrdinalLoss()(logits, binary)[0]) == pytest.approx(float(BCELoss()(logits, binary)[0]), rel=1e-6)
    assert float(OrdinalLoss("none")(torch.sigmoid(logits), target)[0]) == pytest.approx(float(hand), rel=1e-5)
    assert isinstance(make_loss("ol", logits, target), OrdinalLoss)
    with pytest.raises(ValueError, match="activation"):
        OrdinalLoss("relu")
