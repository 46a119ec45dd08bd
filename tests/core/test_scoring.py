"""What a finished attack records (:func:`~napari_medadv.core.scoring.measured_metrics`: fast
passes) equals metrics.json's definition (:func:`~napari_medadv.core.scoring.outcome_metrics`
computed on its own: MONAI Dice, float64 image quality) on every model layout: softmax BraTS
labels with and without ground truth, sigmoid TC/WT/ET regions, a classifier, a transfer."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import ImageData, read_image
from napari_medadv.core.io.geometry import Geometry
from napari_medadv.core.models import load_model
from napari_medadv.core.models.base import LoadedModel, ModelInfo, NativeInputModel
from napari_medadv.core.pipeline import run_attack, transfer_outcome
from napari_medadv.core.scoring import outcome_metrics


def _same(a, b, path=""):
    """Nested dicts equal; floats to 1e-6 relative (the definition's Dice is float32 MONAI)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
            assert a == b or (math.isnan(a) and math.isnan(b)), path
        else:
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


def _check(o):
    ref = outcome_metrics(o)
    for k in ("roi", "seconds", "crafted_on", "evaluated_on"):
        if k in o.metrics:
            ref[k] = o.metrics[k]
    _same(o.metrics, ref)


@pytest.mark.parametrize("with_labels", [True, False])
def test_recorded_segmentation_metrics_equal_the_definition(case, unet3d, with_labels):
    o = run_attack(case, unet3d, "ifgsm", params={"eps": 0.03, "steps": 2},
                   labels=case.labels if with_labels else None, seed=0)
    assert ("ground_truth_vs_adversarial" in o.metrics["dice"]) is with_labels
    assert o.metrics["image_quality"]["ssim"] is not None  # filled, never pending in a record
    _check(o)


def _region_model():
    torch.manual_seed(0)
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output="sigmoid",
                     channel_names=["t1", "t1ce", "t2", "flair"], region_names=["TC", "WT", "ET"])
    module = NativeInputModel(nn.Conv3d(4, 3, 3, padding=1).eval(), info)
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, info=info, spec="test:sigmoid-regions")


def test_recorded_metrics_of_a_sigmoid_region_model_equal_the_definition():
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 20, (4, 10, 9, 8)).astype(np.float32)
    image = ImageData(arr, Geometry(np.eye(4)), ["t1", "t1ce", "t2", "flair"], "synthetic", "nifti")
    labels = rng.choice([0, 1, 2, 4], size=(10, 9, 8)).astype(np.int16)
    o = run_attack(image, _region_model(), "pgd", params={"eps": 0.1, "steps": 2}, labels=labels, roi=None, seed=0)
    assert set(o.metrics["dice"]["clean_vs_adversarial"]["regions"]) == {"WT", "TC", "ET"}
    _check(o)


def test_recorded_classifier_metrics_and_a_transfer_equal_the_definition(case, unet3d):
    cxr = read_image(sample_data_dir() / "cxr" / "chest_pa.png")
    o = run_attack(cxr, load_model("demo:cxr", device="cpu"), "fgsm", params={"eps": 0.02}, seed=0)
    assert "probabilities" in o.metrics
    _check(o)
    seg = run_attack(case, unet3d, "fgsm", params={"eps": 0.02}, labels=case.labels, seed=0)
    t = transfer_outcome(seg, load_model("demo:unet2d", device="cpu"))
    assert t.metrics["image_quality"] == seg.metrics["image_quality"]  # the same two images
    _check(t)


def test_measured_image_quality_equals_the_definition_and_feeds_the_study():
    """Four channels — one untouched, one constant — and a 2-D image: every figure of
    image_quality_per_channel, and the study's per-case quality columns from it."""
    from napari_medadv.core.scoring import image_quality_per_channel, measured_image_quality
    from napari_medadv.core.study.cases import _quality

    rng = np.random.default_rng(4)
    clean = rng.normal(300, 80, (4, 12, 11, 10)).astype(np.float32)
    clean[3] = 7.0  # constant: its range counts as 1
    adv = clean + rng.uniform(-6, 6, clean.shape).astype(np.float32)
    adv[1] = clean[1]  # untouched: infinite PSNR for that channel only
    names = ["t1", "t1ce", "t2", "flair"]
    _same(measured_image_quality(clean, adv, names), image_quality_per_channel(clean, adv, names))
    ref = image_quality_per_channel(clean, adv, names)
    _same(_quality(clean, adv), {k: ref[k] for k in ("psnr", "ssim", "rmse", "linf", "l0_fraction")})
    flat = rng.uniform(0, 255, (1, 40, 33)).astype(np.float32)
    moved = np.clip(flat + rng.choice([-2.0, 0.0, 2.0], flat.shape).astype(np.float32), 0, 255)
    _same(measured_image_quality(flat, moved, ["image"]), image_quality_per_channel(flat, moved, ["image"]))


def _softmax_model(n_out: int):
    torch.manual_seed(1)
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output="softmax",
                     channel_names=["t1", "t1ce", "t2", "flair"])
    module = NativeInputModel(nn.Conv3d(4, n_out, 1).eval(), info)
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, info=info, spec=f"test:softmax{n_out}")


@pytest.mark.parametrize("n_out", [3, 300])
def test_study_dice_columns_equal_monai(case, unet3d, n_out):
    """A study's Dice columns (one confusion matrix) equal metrics' MONAI Dice: the BraTS regions
    of the demo UNet, per label for another model, and per label with more labels than a uint8
    table holds (the mask-per-label path)."""
    from napari_medadv.core import metrics as M
    from napari_medadv.core.study.cases import _evaluate

    o = run_attack(case, unet3d, "fgsm", params={"eps": 0.03}, labels=case.labels, seed=0)
    row = _evaluate(unet3d, o.clean_output, o.adv_output, case.labels, None, {})
    seg_adv = unet3d.to_label_map(o.adv_output)[0]
    for r, v in M.dice_regions(seg_adv, case.labels).items():
        assert row[f"dice_{r}"] == pytest.approx(v, rel=1e-6)
    assert row["dice_fg"] == row["dice_WT"]

    rng = np.random.default_rng(2)
    model = _softmax_model(n_out)
    x = torch.from_numpy(rng.normal(0, 1, (1, 4, 12, 11, 10)).astype(np.float32))
    noise = 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    clean_out, adv_out = model.forward(x), model.forward(x + noise)
    labels = rng.integers(0, n_out, (12, 11, 10)).astype(np.int32)
    row = _evaluate(model, clean_out, adv_out, labels, None, {})
    seg_clean, seg_adv = model.to_label_map(clean_out)[0], model.to_label_map(adv_out)[0]
    values = sorted((set(np.unique(labels).tolist()) | set(np.unique(seg_clean).tolist())) - {0})
    assert (len(values) > 253) if n_out == 300 else (values == [1, 2])
    for v, d in M.dice_per_label(seg_adv, labels, values).items():
        assert row[f"dice_label_{model.info.label_name(v)}"] == pytest.approx(d, rel=1e-6)
    assert row["dice_fg"] == pytest.approx(M.foreground_dice(seg_adv, labels), rel=1e-6)
    assert row["changed_voxels"] == int((seg_clean != seg_adv).sum())


def test_more_labels_than_a_table_holds_fall_back_to_the_definition():
    """A 300-label segmenter: the recorded metrics and the live readouts use a mask per label
    (the definition) instead of failing on the uint8 table."""
    from napari_medadv.core.live import LiveEps

    rng = np.random.default_rng(5)
    arr = rng.normal(100, 20, (4, 12, 11, 10)).astype(np.float32)
    image = ImageData(arr, Geometry(np.eye(4)), ["t1", "t1ce", "t2", "flair"], "synthetic", "nifti")
    labels = rng.integers(0, 300, (12, 11, 10)).astype(np.int32)
    model = _softmax_model(300)
    o = run_attack(image, model, "fgsm", params={"eps": 0.05}, labels=labels, roi=None, seed=0)
    assert len(o.metrics["dice"]["clean_vs_adversarial"]["per_label"]) == 299
    _check(o)
    live = LiveEps(image, model, labels=labels, roi=None)
    lo = live.outcome(0.05)
    _same(lo.metrics["dice"], o.metrics["dice"])
