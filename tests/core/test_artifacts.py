"""MR artifacts (torchio) as perturbation sources: determinism, invariants, monotone severity,
2-D/3-D multi-channel, ROI, spacing, bad severities, registry and CLI."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from napari_medadv.core import metrics as M
from napari_medadv.core.attacks import ARTIFACTS, ATTACKS, MRBlur
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image
from napari_medadv.core.matching import image_quality

NAMES = [c.name for c in ARTIFACTS]
CASE = sample_data_dir() / "glioma" / "glioma_001"
SPACING3 = (2.5, 2.5, 2.5)


@pytest.fixture(scope="module")
def case_crop():
    """A 4-contrast crop of a shipped skull-stripped glioma case (zero background), 1 C D H W."""
    img = read_image(CASE)
    a = img.array[:, 20:44, 24:56, 20:44]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None], img


@pytest.fixture(scope="module")
def slice_batch(case_crop):
    """Two 2-D slices of the same crop, z-scored per channel (negative values): B C H W."""
    x = case_crop[0][0][:, [8, 14]].permute(1, 0, 2, 3).contiguous()
    mu, sd = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    return (x - mu) / sd


def model3d(c=4):
    torch.manual_seed(0)
    return nn.Conv3d(c, 3, 1)


def model2d(c=4):
    torch.manual_seed(0)
    return nn.Conv2d(c, 3, 1)


def make(name, model, **kw):
    return ATTACKS.create(name, model, **kw)


# ----------------------------------------------------------------------------- registry / CLI

@pytest.mark.parametrize("name", NAMES)
def test_registered_gradient_free_with_one_severity(name):
    spec = ATTACKS.get_spec(name)
    assert spec.gradient_free and spec.targeted == "no"
    assert [p.name for p in spec.params] == ["severity"]
    p = spec.params[0]
    assert (p.min, p.max, p.kind) == (0.0, 1.0, float)


def test_names_do_not_clash_with_attacks():
    assert set(NAMES) == {"motion", "ghosting", "spike", "biasfield", "gaussnoise", "blur"}
    assert ATTACKS.get_spec("noise").cls.__name__ == "RandomNoise"


def test_in_cli_help_and_listing(capsys):
    from napari_medadv.cli import build_parser, main

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = sub.choices["attack"].format_help()
    assert "--severity" in text
    for name in NAMES:
        assert name in text
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


# ----------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("name", NAMES)
def test_deterministic_changes_image_keeps_shape_dtype_and_input(name, case_crop):
    x = case_crop[0]
    x0 = x.clone()
    m = model3d()
    a = make(name, m, severity=0.6, seed=3, spacing=SPACING3)(x)
    b = make(name, m, severity=0.6, seed=3, spacing=SPACING3)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(x, x0)  # the caller's tensor is untouched
    assert (a - x).abs().max() > 1e-3 * float(x.max() - x.min())
    c = make(name, m, severity=0.6, seed=4, spacing=SPACING3)(x)
    if name == "blur":  # deterministic: the seed is unused
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    else:
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_does_not_touch_the_global_rng(name, case_crop):
    m = model3d()
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    make(name, m, severity=0.5, seed=0, spacing=SPACING3)(case_crop[0])
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name, case_crop):
    x = case_crop[0]
    r = make(name, model3d(), severity=0.0, seed=0, spacing=SPACING3).run(x)
    assert torch.equal(r.adversarial, x)
    assert r.n_forward == 0 and r.n_backward == 0


@pytest.mark.parametrize("name", NAMES)
def test_psnr_falls_monotonically_with_severity(name, case_crop):
    x = case_crop[0]
    sev = [0.1, 0.3, 0.5, 0.75, 1.0]
    q = [image_quality(x, make(name, model3d(), severity=s, seed=0, spacing=SPACING3)(x)) for s in sev]
    assert all(math.isfinite(v) for v in q)
    diffs = np.diff(q)
    assert np.all(diffs <= 1e-9), f"{name}: PSNR {np.round(q, 2)} is not non-increasing"
    assert q[-1] < q[0] - 3.0  # and it spans a useful range


@pytest.mark.parametrize("name", NAMES)
def test_labels_are_never_read_or_changed(name, case_crop):
    x, img = case_crop
    labels = torch.from_numpy(img.labels[20:44, 24:56, 20:44].astype(np.int64))[None]
    before = labels.clone()
    m = model3d()
    with_labels = make(name, m, severity=0.5, seed=1, spacing=SPACING3)(x, labels)
    without = make(name, m, severity=0.5, seed=1, spacing=SPACING3)(x)
    assert torch.equal(labels, before)
    torch.testing.assert_close(with_labels, without, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_2d_multichannel_batch_zscored(name, slice_batch):
    x = slice_batch  # 2 × 4 × 32 × 24, negative values
    m = model2d()
    r = make(name, m, severity=0.7, seed=2, spacing=(2.5, 2.5)).run(x)
    adv = r.adversarial
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    for i in range(x.shape[0]):  # every sample and channel is changed, and stays in its range
        for c in range(x.shape[1]):
            assert (adv[i, c] - x[i, c]).abs().max() > 1e-4
            assert adv[i, c].min() >= x[i, c].min() - 1e-5 and adv[i, c].max() <= x[i, c].max() + 1e-5
    assert len(r.extra["torchio_params"]) == 2
    torch.testing.assert_close(adv, make(name, m, severity=0.7, seed=2, spacing=(2.5, 2.5))(x), rtol=0, atol=0)


def test_one_physical_event_for_all_channels(case_crop):
    """Channels that are scaled copies of each other get the same (scaled) artifact."""
    x = case_crop[0][:, :1]
    x2 = torch.cat([x, 3.0 * x + 0.0], 1)  # same contrast, another scale (min 0 in both)
    for name in ("motion", "ghosting", "biasfield", "blur", "spike"):
        adv = make(name, model3d(2), severity=0.5, seed=5, spacing=SPACING3)(x2)
        torch.testing.assert_close(adv[:, 1], 3.0 * adv[:, 0], rtol=1e-4, atol=1e-4)


def test_roi_keeps_the_background(case_crop):
    x = case_crop[0]
    roi = (x != 0).any(1)[0]
    for name in NAMES:
        adv = make(name, model3d(), severity=0.8, seed=0, roi=roi, spacing=SPACING3)(x)
        assert torch.equal(adv[..., ~roi], x[..., ~roi]), name
    # without a ROI the artifact covers the field of view (motion moves signal into the background)
    adv = make("motion", model3d(), severity=0.8, seed=0, spacing=SPACING3)(x)
    assert (adv[..., ~roi] != x[..., ~roi]).any()


def test_spacing_is_in_mm(case_crop):
    x = case_crop[0]
    m = model3d()
    fine = MRBlur(m, severity=0.5, spacing=(1.0, 1.0, 1.0))(x)
    coarse = MRBlur(m, severity=0.5, spacing=(4.0, 4.0, 4.0))(x)
    assert image_quality(x, fine) < image_quality(x, coarse)  # 2 mm is more voxels at 1 mm
    m.input_spacing = (4.0, 4.0, 4.0)  # what the pipeline sets from the image geometry
    torch.testing.assert_close(MRBlur(m, severity=0.5)(x), coarse, rtol=0, atol=0)
    with pytest.raises(ValueError, match="spacing"):
        MRBlur(m, severity=0.5, spacing=(1.0, 1.0))(x)
    with pytest.raises(ValueError, match="spacing"):
        MRBlur(m, severity=0.5, spacing=(1.0, -1.0, 1.0))


def test_extra_records_the_torchio_parameters(case_crop):
    r = make("motion", model3d(), severity=0.5, seed=0, spacing=SPACING3).run(case_crop[0])
    p = r.extra["torchio_params"][0]
    assert r.extra["torchio_transform"] == "Motion" and r.extra["severity"] == 0.5
    assert len(p["degrees"]) == 2 and 0 < p["fraction_out_of_position"] < 0.5
    assert 0 <= r.extra["clamped_fraction"] < 0.05
    assert r.params["severity"] == 0.5 and r.params["torchio_transform"] == "Motion"


def test_track_metrics_costs_one_forward(case_crop):
    r = make("spike", model3d(), severity=0.5, seed=0, track_metrics=True, spacing=SPACING3).run(case_crop[0])
    assert r.n_forward == 1 and r.n_backward == 0
    # the history's PSNR is metrics.json's: each channel on its own range
    assert r.history[-1]["psnr"] == pytest.approx(M.psnr_channels(case_crop[0][0], r.adversarial[0]), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "strong", True])
def test_bad_severity_is_a_clear_error(name, bad):
    with pytest.raises(ValueError, match=r"severity must be .*\[0, 1\]"):
        make(name, model3d(), severity=bad)


def test_unknown_argument_is_refused():
    with pytest.raises(ValueError, match="does not take eps"):
        ATTACKS.create("motion", model3d(), eps=0.1)


# ----------------------------------------------------------------------------- end to end

def test_cli_motion_on_sample_case(tmp_path, capsys):
    from napari_medadv.cli import main

    out = tmp_path / "motion"
    rc = main(["attack", str(CASE), "--model", "demo:unet3d", "--attack", "motion", "--severity", "0.5",
               "--seed", "0", "--out", str(out), "--quiet", "--device", "cpu"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "severity=0.5" in stdout and "PSNR" in stdout
    src = nib.load(str(CASE / "glioma_001_flair.nii.gz"))
    adv = nib.load(str(out / "adversarial.nii.gz"))
    np.testing.assert_allclose(adv.affine, src.affine, atol=1e-5)  # geometry kept
    assert adv.shape[:3] == src.shape
    img = read_image(CASE)
    adv_arr = np.asarray(adv.dataobj)
    adv_arr = adv_arr if adv_arr.shape[0] == 4 else np.moveaxis(adv_arr, -1, 0)
    assert np.all(adv_arr[:, ~np.any(img.array != 0, axis=0)] == 0)  # skull-stripped background kept
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert 20 < metrics["image_quality"]["psnr"] < 60
    record = json.loads((out / "record.json").read_text())
    assert record["attack"]["params"]["severity"] == 0.5 and record["attack"]["seed"] == 0


def test_cli_bad_severity_exits_2(tmp_path, capsys):
    from napari_medadv.cli import main

    rc = main(["attack", str(CASE), "--model", "demo:unet3d", "--attack", "blur", "--severity", "1.5",
               "--out", str(tmp_path / "x"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "severity must be in [0, 1]" in err and not (tmp_path / "x").exists()
    rc = main(["attack", str(CASE), "--model", "demo:unet3d", "--attack", "blur", "--eps", "0.1",
               "--out", str(tmp_path / "x"), "--quiet", "--device", "cpu"])
    assert rc == 2 and "--eps does not apply" in capsys.readouterr().err
