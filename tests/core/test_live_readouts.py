"""The live path's fast readouts equal the reference metrics (issue 20): confusion-matrix Dice vs
MONAI's, FGSM's analytic PSNR/RMSE/L0/L2/L∞ vs the figures computed on the float32 image, SSIM
pending until filled, and the uint8 arg-max vs torch's."""

import math

import numpy as np
import pytest
import torch

from napari_medadv.core import metrics as M
from napari_medadv.core.brats import BRATS_REGIONS
from napari_medadv.core.io import Geometry, ImageData, read_image
from napari_medadv.core.live import LiveEps
from napari_medadv.core.models import load_model
from napari_medadv.core.metrics import channel_argmax
from napari_medadv.core.models.base import small_labels
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.scoring import image_quality_per_channel, outcome_metrics
from napari_medadv.core.readouts import DiceTable, computed_quality

CASE = sample_data_dir() / "glioma" / "glioma_001"


@pytest.fixture(scope="module")
def live3d(case):
    return LiveEps(case, load_model("demo:unet3d", device="cpu"), labels=case.labels)


def _close(a, b, rel=1e-4, path=""):
    """Nested dicts equal, floats to ``rel`` (inf equal to inf)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _close(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        if math.isinf(a) or math.isinf(b):
            assert a == b, path
        else:
            assert a == pytest.approx(b, rel=rel, abs=1e-9), path
    else:
        assert a == b, path


@pytest.mark.parametrize("eps", [0.0, 0.004, 0.03, 0.5, 1.0])
def test_live_readouts_equal_the_reference_metrics(live3d, eps):
    o = live3d.outcome(eps, metrics=False)
    live3d.add_metrics(o)
    ref = outcome_metrics(o)
    ref["roi"] = o.metrics["roi"]
    ref["seconds"] = o.metrics["seconds"]
    _close(o.metrics, ref, rel=2e-4)


def test_ssim_is_pending_until_filled(live3d):
    o = live3d.outcome(0.02, metrics=False)
    live3d.readouts(o)
    q = o.metrics["image_quality"]
    assert LiveEps.ssim_pending(o.metrics)
    assert q["ssim"] is None and all(p["ssim"] is None for p in q["per_channel"].values())
    assert q["psnr"] > 0 and o.metrics["dice"]["clean_vs_adversarial"]["foreground"] <= 1.0
    live3d.add_ssim(o)
    assert not LiveEps.ssim_pending(o.metrics)
    ref = image_quality_per_channel(live3d.image.array, o.adversarial, live3d.image.channel_names)
    assert q["ssim"] == pytest.approx(ref["ssim"], rel=1e-6)


def test_analytic_fgsm_quality_equals_computed_on_the_image(live3d):
    """Including clamping: at ε = 0.5 most brain voxels hit a bound before moving ε·range."""
    image = live3d.image
    for eps in (0.001, 0.05, 0.5, 0.9):
        adv, _ = live3d.at(eps)
        analytic = live3d.quality.at(eps)
        computed = computed_quality(torch.from_numpy(image.array), torch.from_numpy(adv),
                                    image.channel_names, live3d.ranges)
        _close(analytic, computed, rel=2e-4)
        norms = M.perturbation_norms(image.array, adv)
        assert analytic["l0"] == norms["l0"]
        assert analytic["linf"] == pytest.approx(norms["linf"], rel=1e-5)
        assert analytic["l2"] == pytest.approx(norms["l2"], rel=1e-4)
    assert not live3d.quality.covers(1.5) and not live3d.quality.covers(1e-12)


def test_image_quality_falls_back_to_the_image_outside_the_table(live3d):
    o = live3d.outcome(1e-12, metrics=False)
    q = live3d.image_quality(o)
    ref = image_quality_per_channel(live3d.image.array, o.adversarial, live3d.image.channel_names)
    assert q["l0"] == ref["l0"] and q["rmse"] == pytest.approx(ref["rmse"], rel=1e-5, abs=1e-12)


def test_dice_table_equals_monai_on_random_maps_with_foreign_values():
    rng = np.random.default_rng(0)
    pred = rng.choice([0, 1, 2, 4], size=(30, 40, 20), p=[0.7, 0.1, 0.1, 0.1]).astype(np.uint8)
    ref = rng.choice([0, 1, 2, 3, 4, 9], size=(30, 40, 20), p=[0.6, 0.1, 0.1, 0.05, 0.1, 0.05]).astype(np.int32)
    table = DiceTable([0, 1, 2, 4], BRATS_REGIONS, {1: "NCR", 2: "ED", 4: "ET"})
    block = table.block(table.confusion(table.indices(pred), table.indices(ref)))
    want = M.dice_per_label(pred, ref, [1, 2, 4])
    for v, d in want.items():
        assert block["per_label"][str(v)] == pytest.approx(d, rel=1e-6)
    assert block["foreground"] == pytest.approx(M.foreground_dice(pred, ref), rel=1e-6)
    for name, d in M.dice_regions(pred, ref).items():
        assert block["regions"][name] == pytest.approx(d, rel=1e-6)
    assert block["label_names"] == {"1": "NCR", "2": "ED", "4": "ET"}
    # a label absent from both maps: Dice 1 (MONAI's ignore_empty=False)
    empty = DiceTable([0, 7])
    z = np.zeros((4, 4), np.uint8)
    assert empty.block(empty.confusion(empty.indices(z), empty.indices(z)))["per_label"]["7"] == 1.0
    # negative or huge values take the sorting path
    odd = np.array([[-3, 0], [70000, 1]])
    assert DiceTable([1]).indices(odd).tolist() == [[2, 0], [2, 1]]


@pytest.mark.parametrize("values", [[0, 1, 2, 4], [0, 100, 200, 31]])
def test_joint_code_margins_equal_pairwise_confusions(values):
    """The live readouts count (adversarial, clean, ground truth) once; its margins are the two
    confusion matrices, for a dense table (values index themselves) and a sparse one."""
    rng = np.random.default_rng(1)
    pick = [*values, 9, 3]  # 9 and 3: not in the table (3 is inside the dense range, unreported)
    adv, clean, gt = (rng.choice(pick, size=(20, 30, 10)).astype(np.uint8) for _ in range(3))
    table = DiceTable(values)
    assert table.dense == (max(values) <= DiceTable.DENSE_MAX)
    a, c, g = (table.indices(m) for m in (adv, clean, gt))
    counts = table.joint(table.code(a, table.code(c, g), 2), 3)
    assert np.array_equal(counts.sum(2), table.confusion(a, c))
    assert np.array_equal(counts.sum(1), table.confusion(a, g))
    assert counts.sum() == adv.size
    for v in values[1:]:
        want = M.dice_per_label(adv, gt, [v])[v]
        assert table.block(counts.sum(1))["per_label"][str(v)] == pytest.approx(want, rel=1e-6)
    assert table.block(counts.sum(1))["foreground"] == pytest.approx(M.foreground_dice(adv, gt), rel=1e-6)


def test_uint8_argmax_equals_torch_including_ties():
    g = torch.Generator().manual_seed(0)
    out = torch.randint(0, 3, (2, 5, 7, 6, 4), generator=g).float()  # many ties
    assert torch.equal(channel_argmax(out).long(), out.argmax(1))
    assert channel_argmax(out).dtype == torch.uint8
    nan = out.clone()
    nan[0, 2, 0, 0, 0] = float("nan")
    assert torch.equal(channel_argmax(nan).long(), nan.argmax(1))
    # label values written by the arg-max itself, across slab boundaries (chunk smaller than a map)
    vals = [0, 4, 2, 1, 7]
    lut = torch.tensor(vals)
    for chunk in (7, 1 << 18):
        assert torch.equal(channel_argmax(out, vals, chunk=chunk).long(), lut[out.argmax(1)])
        assert torch.equal(channel_argmax(nan, vals, chunk=chunk).long(), lut[nan.argmax(1)])
    with pytest.raises(ValueError, match="label values"):
        channel_argmax(out, [0, 300, 1, 2, 3])
    assert small_labels(np.array([0, 1, 2, 4])).dtype == np.uint8
    assert small_labels(np.array([0, 300])).dtype == np.uint16
    assert small_labels(np.array([-1, 3])).dtype == np.int16


def test_label_maps_keep_the_model_dtype(live3d):
    o = live3d.outcome(0.02, metrics=False)
    assert o.seg_adv.dtype == np.uint8 and o.seg_clean.dtype == np.uint8
    assert set(np.unique(o.seg_adv).tolist()) <= {0, 1, 2, 4}


def test_classifier_readouts_equal_the_reference():
    cxr = read_image(sample_data_dir() / "cxr" / "chest_pa.png")
    live = LiveEps(cxr, load_model("demo:cxr", device="cpu"))
    o = live.outcome(0.01, metrics=True)
    ref = outcome_metrics(o)
    ref["roi"], ref["seconds"] = o.metrics["roi"], o.metrics["seconds"]
    _close(o.metrics, ref, rel=2e-4)


def test_whole_image_roi_with_bright_and_dark_bounds():
    """No ROI, many voxels at both bounds: the headroom table carries the clamping."""
    rng = np.random.default_rng(1)
    a = rng.choice([0.0, 50.0, 100.0], size=(1, 48, 40), p=[0.3, 0.4, 0.3]).astype(np.float32)
    a += rng.normal(0, 3, a.shape).astype(np.float32)
    image = ImageData(a, Geometry(np.diag([1.0, 1.0, 1.0, 1.0])), ["image"], "synthetic", "png")
    live = LiveEps(image, load_model("demo:cxr", device="cpu"), roi=None)
    for eps in (0.01, 0.2, 0.7):
        adv, _ = live.at(eps)
        ref = computed_quality(torch.from_numpy(a), torch.from_numpy(adv), ["image"], live.ranges)
        _close(live.quality.at(eps), ref, rel=2e-4)


def test_tracked_step_metrics_equal_the_reference_figures():
    """The attack's per-iteration PSNR and Dice (tensor fast path) equal metrics.psnr_channels /
    foreground_dice; the final tracked forward is handed to the pipeline (no second forward)."""
    from napari_medadv.core.metrics import foreground_dice_fast, psnr_channels_fast
    from napari_medadv.core.pipeline import run_attack

    g = torch.Generator().manual_seed(3)
    clean = torch.rand(2, 3, 9, 10, 11, generator=g) * torch.tensor([1.0, 50.0, 7.0]).reshape(1, 3, 1, 1, 1)
    adv = clean + 0.01 * torch.randn(clean.shape, generator=g)
    adv[1, 2] = clean[1, 2]  # an untouched channel
    flat = clean.flatten(2)
    ranges = (flat.amax(2) - flat.amin(2)).double()
    fast = psnr_channels_fast(clean, adv, ranges)
    for i in range(2):
        assert fast[i] == pytest.approx(M.psnr_channels(clean[i], adv[i]), rel=1e-6)
    pred = torch.randint(0, 3, (2, 9, 10, 11), generator=g)
    ref = torch.randint(0, 3, (2, 9, 10, 11), generator=g)
    ref[1] = 0
    pred[1] = 0
    dice = foreground_dice_fast(pred, ref)
    assert dice[0] == pytest.approx(M.foreground_dice(pred[0], ref[0]), rel=1e-6)  # MONAI sums in float32
    assert dice[1] == 1.0 == M.foreground_dice(pred[1], ref[1])

    case = read_image(CASE)
    model = load_model("demo:unet3d", device="cpu")
    o = run_attack(case, model, "ifgsm", params={"eps": 0.03, "steps": 2, "track_metrics": True},
                   labels=case.labels, seed=0)
    assert o.result.output is not None and o.result.n_forward == 2 + 1  # 2 steps (the first at x), the final
    last = o.result.history[-1]
    assert last["psnr"] == pytest.approx(M.psnr_channels(case.array, o.adversarial), rel=1e-5)
    np.testing.assert_array_equal(o.seg_adv, model.to_label_map(model.forward(model.to_batch(o.adversarial)))[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.float64])
def test_difference_sums_equal_the_plain_expressions(dtype):
    """The slab pass (slabs that do not divide the volume, a batch, an untouched channel) gives the
    float64 Σd², max |d| and changed-voxel count of the whole-tensor expressions."""
    g = torch.Generator().manual_seed(5)
    clean = (torch.rand(2, 3, 7, 11, 13, generator=g) * 900 - 300).to(dtype)
    adv = (clean.double() + torch.randint(-4, 5, clean.shape, generator=g)).to(dtype)
    adv[1, 2] = clean[1, 2]
    adv[0, :, 3] = clean[0, :, 3]  # a plane where no channel changed
    sse, linf, l0 = M.difference_sums(clean, adv, chunk=97)
    d = (adv.double() - clean.double()).flatten(2)
    np.testing.assert_allclose(sse, d.square().sum(2).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(linf, d.abs().amax(2).numpy())
    np.testing.assert_array_equal(l0, (d != 0).any(1).sum(1).numpy())
    assert sse[1, 2] == 0 and linf[1, 2] == 0
    if dtype == torch.int16:  # a difference beyond int16: computed in float32, not wrapped around
        lo, hi = torch.full((1, 1, 4), -30000, dtype=dtype), torch.full((1, 1, 4), 30000, dtype=dtype)
        assert M.difference_sums(lo, hi)[1][0, 0] == 60000.0
    for chunk in (1, 1 << 15):
        s2, _, z2 = M.difference_sums(clean, adv, chunk=chunk)
        np.testing.assert_allclose(s2, sse, rtol=1e-12)
        np.testing.assert_array_equal(z2, l0)


def test_argmax_nonzero_is_the_foreground_of_torchs_argmax():
    """Ties go to the first channel (the background wins a tie with it), NaN outputs and a single
    channel are handled as torch's arg-max handles them."""
    g = torch.Generator().manual_seed(6)
    for k in (1, 2, 4, 7):
        out = torch.randint(0, 3, (2, k, 5, 6, 70), generator=g).float()  # many ties
        np.testing.assert_array_equal(M.argmax_nonzero(out, chunk=64).numpy(), (out.argmax(1) != 0).numpy())
    out = torch.randn(1, 3, 4, 5, 6, generator=g)
    out[0, 0, 1, 1, 1] = float("nan")
    out[0, 2, 2, 2, 2] = float("nan")
    np.testing.assert_array_equal(M.argmax_nonzero(out).numpy(), (out.argmax(1) != 0).numpy())


def test_foreground_overlap_counts_equal_the_masks():
    """The fused arg-max and counts of the tracked Dice equal argmax_nonzero + foreground_dice_fast:
    ties, NaN outputs (torch's arg-max), one channel, slabs that do not divide the volume."""
    g = torch.Generator().manual_seed(8)
    for k in (1, 2, 4):
        out = torch.randint(0, 3, (2, k, 5, 6, 70), generator=g).float()  # many ties
        ref = torch.randint(0, 3, (2, 5, 6, 70), generator=g)
        ref[1] = 0
        fg = M.argmax_nonzero(out)
        pred_n, inter = M.foreground_overlap(out, ref != 0, chunk=97)
        assert pred_n == [int(f.sum()) for f in fg]
        assert inter == [int((f & (r != 0)).sum()) for f, r in zip(fg, ref)]
        dice = [M.dice_from_counts(p, int((r != 0).sum()), i) for p, r, i in zip(pred_n, ref, inter)]
        assert dice == pytest.approx(M.foreground_dice_fast(fg, ref))
    out = torch.randn(1, 3, 4, 5, 6, generator=g)
    out[0, 0, 1, 1, 1] = float("nan")
    ref = torch.ones(1, 4, 5, 6, dtype=torch.int64)
    assert M.foreground_overlap(out, ref != 0)[0] == [int((out.argmax(1) != 0).sum())]
    assert M.dice_from_counts(0, 0, 0) == 1.0
