"""The shipped demo models load safely and meet their quality bars on the held-out cases."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image
from napari_medadv.core.metrics import dice_regions
from napari_medadv.core.models import load_model
from napari_medadv.core.training import train_demo

SD = sample_data_dir()
GLIOMA_CASES = sorted(p for p in (SD / "glioma").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def glioma_cases():
    return [read_image(p) for p in GLIOMA_CASES]


@pytest.mark.parametrize("name, bar", [("unet3d", 0.85), ("unet2d", 0.80)])
def test_segmentation_quality_bar(glioma_cases, name, bar):
    model = load_model(f"demo:{name}", device="cpu")
    assert len(glioma_cases) == 4
    wt = []
    for case in glioma_cases:
        pred = model.to_label_map(model.forward(case.array))[0]
        assert pred.shape == case.spatial_shape
        wt.append(dice_regions(pred, case.labels)["WT"])
    assert np.mean(wt) >= bar, f"demo:{name} whole-tumour Dice {np.mean(wt):.3f} < {bar} ({wt})"


def _auc(pos, neg) -> float:
    from scipy.stats import mannwhitneyu

    return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


def test_cxr_classifier_auc_bar():
    model = load_model("demo:cxr", device="cpu")
    folder = SD / "cxr" / "heldout"
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    probs, labels = [], []
    for r in rows:
        img = read_image(folder / r["file"])
        probs.append(model.probabilities(model.forward(img.array))[0].numpy())
        labels.append([int(r[n]) for n in model.info.class_names])
    probs, labels = np.array(probs), np.array(labels)
    aucs = [_auc(probs[labels[:, j] == 1, j], probs[labels[:, j] == 0, j]) for j in range(labels.shape[1])]
    assert np.mean(aucs) >= 0.90, f"demo:cxr AUC {aucs}"


def test_demo_models_declare_their_contract():
    m = load_model("demo:unet3d", device="cpu")
    assert m.info.task == "segmentation" and m.info.in_channels == 4 and m.info.label_values == [0, 1, 2, 4]
    assert m.checksum.startswith("sha256:")
    assert all(not p.requires_grad for p in m.module.parameters())
    c = load_model("demo:cxr", device="cpu")
    assert c.info.task == "classification" and c.info.class_names == ["nodule", "opacity"]


def test_unet3d_handles_other_grids_and_spacing(glioma_cases):
    """A volume on another grid (1.25 mm, cropped) is resampled inside the model and back."""
    import torch.nn.functional as F

    model = load_model("demo:unet3d", device="cpu")
    case = glioma_cases[0]
    x = torch.from_numpy(case.array)[None]
    fine = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)[..., 10:-10, :, :]
    model.module.set_input_spacing((1.25, 1.25, 1.25))
    out = model.forward(fine)
    assert out.shape[2:] == fine.shape[2:]
    model.module.set_input_spacing(None)


@pytest.mark.parametrize("name", ["unet2d", "cxr"])
def test_training_runs_from_a_seed_and_writes_loadable_weights(tmp_path, name, monkeypatch):
    rec = train_demo(name, tmp_path, seed=1, n_cases=4, epochs=1, log=lambda s: None)
    assert (tmp_path / f"{name}.pt").is_file() and (tmp_path / f"{name}.json").is_file()
    assert rec["seed"] == 1 and rec["n_cases"] == 4
    from napari_medadv.core.models.demo import load_demo

    net, info, checksum = load_demo(name, folder=tmp_path)
    assert info.name == f"demo:{name}" and checksum.startswith("sha256:")
