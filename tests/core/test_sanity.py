"""Evaluation sanity checks: each fires on a case built to violate it (hand-made tables, a model
with a rounding step, a model with dropout kept on) and stays quiet on the shipped demo UNet."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image
from napari_medadv.core.models import load_model
from napari_medadv.core.models.registry import register_scheme
from napari_medadv.core.pipeline import model_input
from napari_medadv.core.sanity import (SanityWarning, check_black_box, check_gradients, check_monotone,
                                       check_stochastic, robustness_of, run_sanity_checks, warn_failed)

sys.path.insert(0, str(Path(__file__).parent))
import _tiny_models  # noqa: E402  (registers the tiny: and masked: schemes)




@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    root = _tiny_models.make_small_cases(tmp_path_factory.mktemp("sanity"), names=("glioma_001",), size=32)
    return read_image(root / "glioma_001")


# --------------------------------------------------------------------------- the checks on hand-made input


def test_gradient_share_by_hand():
    g = np.ones((2, 4, 5), dtype=np.float32)  # C X Y: 20 voxels
    g[:, 0, :] = 0.0  # 5 voxels zero in every channel
    g[0, 1, 0] = 0.0  # zero in one channel only: not a zero-gradient voxel
    g[1, 2, 0] = np.nan  # non-finite in one channel
    g[0, 3, 1] = np.inf
    r = check_gradients(g, max_share=0.2)
    assert r.details["zero"] == 5 and r.details["non_finite"] == 2 and r.value == pytest.approx(7 / 20)
    assert not r.passed and "possible gradient masking" in r.message
    roi = np.zeros((4, 5), bool)
    roi[1:3] = True  # 10 voxels: one NaN, no zero
    r = check_gradients(g[None], roi, max_share=0.2)
    assert r.passed and r.value == pytest.approx(1 / 10) and r.details["voxels"] == 10
    with pytest.raises(ValueError, match="ROI shape"):
        check_gradients(g, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="empty"):
        check_gradients(g, np.zeros((4, 5), bool))


def test_black_box_stronger_than_white_box_is_flagged():
    r = check_black_box({"fgsm": 0.6, "pgd": 0.35}, {"noise": 0.9, "transfer": 0.25}, tolerance=0.02)
    assert not r.passed and r.value == pytest.approx(0.10)
    assert "possible gradient masking" in r.message and "transfer" in r.message and "pgd" in r.message
    ok = check_black_box({"pgd": 0.35}, {"noise": 0.34}, tolerance=0.02)  # within the tolerance
    assert ok.passed and ok.value == pytest.approx(0.01)
    with pytest.raises(ValueError, match="at least one"):
        check_black_box({}, {"noise": 0.3})


def test_monotonicity_in_eps_and_steps():
    r = check_monotone({0.01: 0.8, 0.02: 0.5, 0.04: 0.6, 0.08: 0.55}, what="eps", attack="PGD")
    assert not r.passed and r.value == pytest.approx(0.1) and r.name == "monotone_in_eps_pgd"
    assert "rises from 0.500 at eps 0.02 to 0.600 at eps 0.04" in r.message
    # against the lowest value so far, not the previous one: two small rises add up
    r = check_monotone({1: 0.5, 5: 0.515, 10: 0.53}, what="steps", tolerance=0.02)
    assert not r.passed and r.value == pytest.approx(0.03) and r.name == "monotone_in_steps"
    assert check_monotone({1: 0.5, 5: 0.51, 10: 0.3}, what="steps").passed
    per_key = check_monotone({0.01: {"WT": 0.9, "ET": 0.8}, 0.02: {"WT": 0.7, "ET": 0.85}}, tolerance=0.02)
    assert not per_key.passed and "(ET)" in per_key.message and per_key.value == pytest.approx(0.05)
    with pytest.raises(ValueError, match="two"):
        check_monotone({0.01: 0.5})
    with pytest.raises(ValueError, match="tolerance"):
        check_monotone({0.01: 0.5, 0.02: 0.4}, tolerance=-1)


def test_warn_failed_names_the_check():
    bad = check_monotone({1: 0.2, 2: 0.9}, what="steps")
    with pytest.warns(SanityWarning, match="sanity check 'monotone_in_steps' failed: possible gradient masking"):
        msgs = warn_failed([bad, check_monotone({1: 0.9, 2: 0.2})])
    assert len(msgs) == 1


# --------------------------------------------------------------------------- on models built to violate them


def test_rounding_layer_masks_the_gradient(small_case):
    model = load_model("masked:round", device="cpu")
    with pytest.warns(SanityWarning) as caught:
        rep = run_sanity_checks(small_case, model, eps=(0.01, 0.03), pgd_eps=(0.03,), pgd_steps=2, steps=(1, 2),
                                steps_eps=0.03, source_model=load_model("tiny:0", device="cpu"))
    by = {c.name: c for c in rep.checks}
    assert not by["zero_gradients"].passed and by["zero_gradients"].value == 1.0
    assert rep.tables["fgsm_eps"]["0.03"] == 1.0  # FGSM cannot move it (PGD only by its random start) ...
    # ... while PGD crafted on the same network without the rounding step transfers
    assert rep.tables["transfer_eps"]["0.03"] < rep.tables["pgd_eps"]["0.03"] - 0.1
    assert not by["black_box_vs_white_box"].passed and "transfer" in by["black_box_vs_white_box"].message
    assert by["stochastic_outputs"].passed
    assert {c.name for c in rep.failed} <= {"zero_gradients", "black_box_vs_white_box"}
    assert any("zero_gradients" in str(w.message) for w in caught)
    d = rep.to_dict()
    assert d["passed"] is False and "zero_gradients" in d["failed"]


def test_dropout_at_inference_needs_eot(small_case):
    model = load_model("masked:dropout", device="cpu")
    r = check_stochastic(model, model_input(small_case, model))
    assert not r.passed and "EOT is needed" in r.message and r.value > 0
    assert r.details["changed_voxels"] > 0
    tiny = load_model("tiny:0", device="cpu")
    assert check_stochastic(tiny, model_input(small_case, tiny)).passed


def test_classifier_figure_by_hand_and_checks_with_dgde(tmp_path):
    import imageio.v3 as iio

    register_scheme("tinycls", _tiny_models.tiny_classifier_loader)
    model = load_model("tinycls:0", device="cpu")
    clean = torch.tensor([[2.0, -1.0, 0.0]])  # p = 0.881, 0.269, 0.5: decisions yes, no, yes
    adv = torch.tensor([[-1.0, 1.0, -2.0]])  # p = 0.269, 0.731, 0.119: all three flipped
    s = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    assert robustness_of(model, clean, adv) == pytest.approx(np.mean([s(-1.0), 1 - s(1.0), s(-2.0)]))
    assert robustness_of(model, clean, clean) == pytest.approx(np.mean([s(2.0), 1 - s(-1.0), 0.5]))
    img = np.random.default_rng(0).random((16, 16)) * 0.2 + 0.1
    img[:8] += 0.5
    iio.imwrite(tmp_path / "a.png", (img * 255).astype(np.uint8))
    rep = run_sanity_checks(read_image(tmp_path / "a.png"), model, eps=(0.05, 0.1), pgd_eps=(0.1,), pgd_steps=3,
                            steps=(1, 3), steps_eps=0.1, warn=False)
    assert set(rep.tables["dgde_eps"]) == {"0.1"}  # DGDE: on by default for classifiers, at the largest ε
    assert rep.passed, [c.message for c in rep.failed]
    assert "probability" in rep.to_dict()["robustness_figure"]


# --------------------------------------------------------------------------- the shipped demo UNet


def test_demo_unet_passes_every_check():
    """glioma_001 with demo:unet3d, at reduced settings (a test must stay small)."""
    image = read_image(sample_data_dir() / "glioma" / "glioma_001")
    model = load_model("demo:unet3d", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SanityWarning)
        rep = run_sanity_checks(image, model, labels=image.labels, eps=(0.005, 0.01, 0.02), pgd_eps=(0.01,),
                                pgd_steps=2, steps=(1, 2), steps_eps=0.01)
    assert rep.passed, [c.message for c in rep.failed]
    assert {c.name for c in rep.checks} == {"zero_gradients", "stochastic_outputs", "monotone_in_eps_fgsm",
                                            "monotone_in_steps_pgd", "black_box_vs_white_box"}
    assert rep.tables["pgd_steps"]["2"] == rep.tables["pgd_eps"]["0.01"]  # run once, in both tables
    assert rep.tables["fgsm_eps"]["0.02"] < rep.tables["fgsm_eps"]["0.005"] < 1.0
