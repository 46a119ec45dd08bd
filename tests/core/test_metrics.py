"""Metrics against hand-computed values and against scikit-image (which we did not write)."""

import numpy as np
import pytest
import torch

from napari_medadv.core import metrics as M


@pytest.fixture
def brats_maps():
    # 1-D "volumes" are enough for Dice; values are BraTS labels {0, 1, 2, 4}
    ref = np.array([0, 1, 1, 2, 2, 2, 4, 4, 0, 0])
    pred = np.array([0, 1, 2, 2, 2, 0, 4, 1, 1, 0])
    return pred, ref


def test_dice_per_label_hand_computed(brats_maps):
    pred, ref = brats_maps
    d = M.dice_per_label(pred, ref)
    # label 1: pred {1,7,8}, ref {1,2}: 2*1/(3+2)
    # label 2: pred {2,3,4}, ref {3,4,5}: 2*2/(3+3)
    # label 4: pred {6}, ref {6,7}: 2*1/(1+2)
    assert d == pytest.approx({1: 2 / 5, 2: 4 / 6, 4: 2 / 3})


def test_dice_regions_hand_computed(brats_maps):
    pred, ref = brats_maps
    d = M.dice_regions(pred, ref)
    # WT: pred {1,2,3,4,6,7,8}, ref {1..7}: inter 6 -> 12/14
    # TC = {1,4}: pred {1,6,7,8}, ref {1,2,6,7}: inter 3 -> 6/8
    # ET = {4}: as label 4 -> 2/3
    assert d == pytest.approx({"WT": 12 / 14, "TC": 6 / 8, "ET": 2 / 3})


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        (np.zeros(5), np.zeros(5), 1.0),  # absent in both: agreement, documented as 1
        (np.array([0, 4, 0, 0, 0]), np.zeros(5), 0.0),  # predicted but absent
        (np.zeros(5), np.array([0, 4, 0, 0, 0]), 0.0),  # missed
    ],
)
def test_dice_empty_cases(pred, ref, expected):
    assert M.dice_regions(pred, ref)["ET"] == expected
    assert M.dice_per_label(pred, ref, labels=[4])[4] == expected


def test_dice_accepts_torch_and_rejects_mismatch():
    a = torch.tensor([[1, 1], [0, 0]])
    assert M.foreground_dice(a, a) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        M.dice_per_label(a, torch.zeros(3))


def test_psnr_rmse_against_skimage():
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

    rng = np.random.default_rng(0)
    clean = rng.normal(size=(2, 24, 24)).astype(np.float32)
    noisy = clean + rng.uniform(-0.1, 0.1, size=clean.shape).astype(np.float32)
    rng_ = float(clean.max() - clean.min())
    assert M.psnr(clean, noisy) == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=rng_), rel=1e-6)
    assert M.rmse(clean, noisy) == pytest.approx(np.sqrt(mean_squared_error(clean, noisy)), rel=1e-6)
    assert M.psnr(clean, clean) == float("inf")
    # hand case: range 1, error 0.1 everywhere -> 20 dB
    a = np.array([0.0, 1.0, 0.5, 0.5])
    assert M.psnr(a, a + 0.1) == pytest.approx(20.0)


@pytest.mark.parametrize("shape", [(48, 40), (20, 24, 22)])
def test_ssim_against_skimage_2d_and_3d(shape):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    clean = rng.uniform(size=shape)
    noisy = np.clip(clean + rng.normal(scale=0.05, size=shape), 0, 1)
    ours = M.ssim(clean, noisy, data_range=1.0, spatial_dims=len(shape))
    ref = structural_similarity(clean, noisy, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    # skimage pads with reflection at the border, MONAI uses valid windows: close, not identical
    assert ours == pytest.approx(ref, abs=0.02)
    assert M.ssim(clean, clean, data_range=1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("shape, dims", [((3, 40, 36), 2), ((2, 24, 20, 18), 3), ((1, 9, 12, 30), 3)])
def test_ssim_equals_monai_ssim_metric(shape, dims):
    """The separable filtering gives MONAI's SSIMMetric values (full kernel) to float32 rounding."""
    import torch
    from monai.metrics import SSIMMetric

    rng = np.random.default_rng(2)
    clean = rng.normal(size=shape).astype(np.float32) * 3 + 1  # z-scored-like, not in [0, 1]
    noisy = clean + rng.normal(scale=0.2, size=shape).astype(np.float32)
    ours = M.ssim(clean, noisy, spatial_dims=dims)
    c = torch.from_numpy(clean).reshape(-1, 1, *shape[-dims:])
    n = torch.from_numpy(noisy).reshape(-1, 1, *shape[-dims:])
    smallest = min(shape[-dims:])
    win = min(11, smallest if smallest % 2 else smallest - 1)
    ref = float(SSIMMetric(spatial_dims=dims, data_range=float(clean.max() - clean.min()), win_size=win)(n, c).mean())
    assert ours == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("shape, dims", [((3, 60, 36), 2), ((2, 41, 20, 18), 3)])
def test_ssim_in_slabs_equals_monai_ssim_metric(monkeypatch, shape, dims):
    """Cut into slabs of 8 map rows (the live path's steps), SSIM still equals MONAI's whole-image
    SSIMMetric, and the generator yields between the slabs."""
    import torch
    from monai.metrics import SSIMMetric

    monkeypatch.setattr(M, "SSIM_SLAB", 1)  # the smallest slab: 8 rows of the map
    rng = np.random.default_rng(3)
    clean = rng.normal(size=shape).astype(np.float32) * 2 + 5
    noisy = clean + rng.normal(scale=0.3, size=shape).astype(np.float32)
    steps = M.ssim_steps(clean, noisy, spatial_dims=dims)
    n_yields = 0
    while True:
        try:
            next(steps)
            n_yields += 1
        except StopIteration as done:
            ours = done.value
            break
    rows = shape[-dims] - 10
    assert n_yields == -(-rows // 8) - 1  # one pause between every two slabs
    c = torch.from_numpy(clean).reshape(-1, 1, *shape[-dims:])
    n = torch.from_numpy(noisy).reshape(-1, 1, *shape[-dims:])
    ref = float(SSIMMetric(spatial_dims=dims, data_range=float(clean.max() - clean.min()))(n, c).mean())
    assert ours == pytest.approx(ref, abs=1e-6)
    assert M.ssim(clean, noisy, spatial_dims=dims) == ours


def test_perturbation_norms():
    clean = np.zeros((2, 3, 3))
    adv = clean.copy()
    adv[0, 0, 0] = 0.5
    adv[1, 0, 0] = -0.25  # same pixel, other channel: still one changed pixel
    adv[1, 2, 2] = 0.1
    n = M.perturbation_norms(clean, adv)
    assert n["l0"] == 2 and n["l0_fraction"] == pytest.approx(2 / 9)
    assert n["linf"] == pytest.approx(0.5)
    assert n["l2"] == pytest.approx(np.sqrt(0.25 + 0.0625 + 0.01))


# --- classifiers: Ghamizi et al. 2023, definitions 1-2 and RISK --------------------------

SCORES = np.array([[0.9, 0.1, 0.5, 0.3],
                   [0.2, 0.8, 0.7, 0.1]])
TRUTH = np.array([[1.0, 0.0, 1.0, 0.0],
                  [0.0, 0.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    "k, per_sample",
    [
        # top1: pred {0} vs truth {0} -> 1 ; pred {1} vs truth {2} (tie 2/3 broken by index) -> 0
        (1, [1.0, 0.0]),
        # top2: pred {0,2} vs {0,2} -> 1 ; pred {1,2} vs {2,3} -> 1/2
        (2, [1.0, 0.5]),
        # top3 (tie rule: of the tied 0-labels, as many as the prediction holds, up to the places left):
        # truth {0,2} + 1 of {1,3}; pred {0,2,3} -> 3/3 ; truth {2,3} + 1 of {0,1}; pred {1,2,0} -> 2/3
        (3, [1.0, 2 / 3]),
    ],
)
def test_k_accuracy_hand_computed(k, per_sample):
    np.testing.assert_allclose(M.k_accuracy_per_sample(SCORES, TRUTH, k), per_sample)
    assert M.k_accuracy(SCORES, TRUTH, k) == pytest.approx(np.mean(per_sample))


def test_top1_equals_k1_on_single_label_and_success_rate():
    truth = np.eye(4)[[0, 2]]
    assert M.top1_accuracy(SCORES, np.array([0, 2])) == 0.5
    assert M.k_accuracy(SCORES, truth, 1) == 0.5
    adv = SCORES[:, ::-1]
    assert M.success_rate(SCORES, adv) == 1.0
    assert M.success_rate(SCORES, SCORES) == 0.0


# several findings tie at 1 in a binary ground truth (definition 1's argsort_k is not unique)
TIE_TRUTH = np.array([[1, 0, 1, 1, 0],    # three findings
                      [0, 1, 1, 0, 0],    # two findings
                      [0, 0, 0, 0, 0],    # no finding: every label tied at 0
                      [1, 0, 0, 0, 0]])   # one finding
TIE_SCORES = np.array([[0.1, 0.2, 0.3, 0.9, 0.4],   # top1 {3}; top3 {3,4,2}
                       [0.8, 0.7, 0.1, 0.2, 0.3],   # top1 {0}; top3 {0,1,4}
                       [0.1, 0.2, 0.3, 0.4, 0.5],   # top1 {4}; top3 {4,3,2}
                       [0.3, 0.1, 0.9, 0.2, 0.8]])  # top1 {2}; top3 {2,4,0}


@pytest.mark.parametrize(
    "k, per_sample",
    [
        # k=1: is the top predicted label a finding? 3 yes; 0 no; (no finding: all tied) yes; 2 no
        (1, [1.0, 0.0, 1.0, 0.0]),
        # k=3, row 1: truth top3 = the 3 findings {0,2,3}; pred {3,4,2} shares {2,3} -> 2/3
        # row 2: truth {1,2} sure + 1 of the tied zeros {0,3,4}; pred {0,1,4}: {1} + min(1, |{0,4}|) -> 2/3
        # row 3: all tied, 3 places; pred shares 3 -> 1 ; row 4: {0} + 2 of zeros; pred {2,4,0}: 1 + 2 -> 1
        (3, [2 / 3, 2 / 3, 1.0, 1.0]),
    ],
)
def test_k_accuracy_tie_rule_hand_computed(k, per_sample):
    np.testing.assert_allclose(M.k_accuracy_per_sample(TIE_SCORES, TIE_TRUTH, k), per_sample)


def test_k1_equals_standard_multilabel_accuracy_whatever_the_label_order():
    rng = np.random.default_rng(3)
    truth = (rng.random((40, 6)) < 0.4).astype(float)
    truth[truth.sum(1) == 0, 0] = 1  # every image has a finding (accuracy needs one)
    scores = rng.random((40, 6))
    assert M.k_accuracy(scores, truth, 1) == pytest.approx(M.top1_accuracy(scores, truth))
    perm = rng.permutation(6)  # relabelling the classes changes nothing (no index tie-break)
    np.testing.assert_allclose(M.k_accuracy_per_sample(scores[:, perm], truth[:, perm], 3),
                               M.k_accuracy_per_sample(scores, truth, 3))


def test_operating_thresholds_youden_hand_computed():
    scores = np.array([[0.1, 0.6], [0.3, 0.7], [0.35, 0.2], [0.8, 0.9]])
    labels = np.array([[0, 1], [0, 1], [1, 1], [1, 1]])
    # label 0: at 0.8 TPR 1/2 FPR 0 (J 0.5); at 0.35 TPR 1 FPR 0 (J 1) -> 0.35
    # label 1: only positives, no ROC curve -> 0.5
    np.testing.assert_allclose(M.operating_thresholds(scores, labels), [0.35, 0.5])


def test_multilabel_accuracy_with_per_label_thresholds_hand_computed():
    scores = np.array([[0.30, 0.60, 0.10],
                       [0.05, 0.40, 0.90]])
    truth = np.array([[1, 1, 0],
                      [0, 0, 1]])
    # thresholds (0.25, 0.5, 0.5): sample 1 -> (1, 1, 0) vs (1, 1, 0): 3/3 ; sample 2 -> (0, 0, 1): 3/3
    np.testing.assert_allclose(M.multilabel_accuracy_per_sample(scores, truth, [0.25, 0.5, 0.5]), [1.0, 1.0])
    # one threshold 0.5: sample 1 -> (0, 1, 0): 2/3 ; sample 2 -> (0, 0, 1): 3/3
    np.testing.assert_allclose(M.multilabel_accuracy_per_sample(scores, truth, 0.5), [2 / 3, 1.0])
    assert M.multilabel_accuracy(scores, truth, 0.5) == pytest.approx(5 / 6)
    # a real-valued reference (the risk target C(y*)) is binarised at 0.5: (0.9, 0.7, 0.2) -> (1, 1, 0);
    # the prediction at 0.5 is (0, 1, 0): 2/3
    target = np.array([[0.9, 0.7, 0.2]])
    assert M.multilabel_accuracy(scores[:1], target, 0.5) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one per label"):
        M.multilabel_accuracy(scores, truth, [0.5, 0.5])


def test_inverse_cooccurrence_and_risk_hand_computed():
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])
    counts = M.cooccurrence_matrix(labels)
    np.testing.assert_array_equal(counts, [[3, 2, 0], [2, 2, 0], [0, 0, 1]])
    inv = M.inverse_cooccurrence(labels)
    np.testing.assert_allclose(inv, [[0, 1 - 2 / 3, 1], [0, 0, 1], [1, 1, 0]])
    clean = np.array([[0.9, 0.2, 0.1], [0.1, 0.1, 0.8]])  # top labels 0 and 2
    adv = np.array([[0.3, 0.6, 0.9], [0.5, 0.5, 0.2]])
    # sample 1: adv . C[0] = 0.6/3 + 0.9 ; sample 2: adv . C[2] = 0.5 + 0.5
    assert M.risk(adv, clean, inv) == pytest.approx(((0.2 + 0.9) + 1.0) / 2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: M.k_accuracy(SCORES, TRUTH, 0), "k must be"),
        (lambda: M.k_accuracy(SCORES, TRUTH[:, :3], 1), r"\(n, M\)"),
        (lambda: M.psnr(np.zeros(3), np.zeros(3) + 1, data_range=0), "data_range"),
        (lambda: M.ssim(np.zeros((2, 2)), np.zeros((2, 2))), ">= 3"),
        (lambda: M.risk(SCORES, SCORES, np.eye(3)), "C"),
        (lambda: M.cooccurrence_matrix(np.zeros(3)), "multi-hot"),
    ],
)
def test_ill_opts(call, message):
    with pytest.raises(ValueError, match=message):
        call()
