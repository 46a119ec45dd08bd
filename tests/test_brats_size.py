"""A BraTS-size case (4×240×240×155, int16, 1 mm, BraTS-2023 file names), generated here from the
shipped glioma_001 (not shipped), through ``medadv attack`` with FGSM and the demo 3-D UNet: it
runs, and every output lies on the input's grid (issue 10)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_medadv.cli import main
from napari_medadv.core.data.paths import sample_data_dir

pytestmark = pytest.mark.slow

SHAPE = (240, 240, 155)
NAMES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


@pytest.fixture(scope="module")
def brats_case(tmp_path_factory):
    src = sample_data_dir() / "glioma" / "glioma_001"
    case = "BraTS-GLI-00001-000"
    folder = tmp_path_factory.mktemp("brats") / case
    folder.mkdir()
    affine = np.array([[-1.0, 0, 0, 120.0], [0, -1.0, 0, 120.0], [0, 0, 1.0, -70.0], [0, 0, 0, 1]])  # LPS-stored, 1 mm
    for old, new in {**NAMES_2023, "seg": "seg"}.items():
        img = nib.load(src / f"glioma_001_{old}.nii.gz")
        data = np.asarray(img.dataobj) if old == "seg" else img.get_fdata() * (1000.0 / max(img.get_fdata().max(), 1e-6))
        zoom = [n / s for n, s in zip(SHAPE, data.shape)]
        up = ndimage.zoom(data, zoom, order=0 if old == "seg" else 1, grid_mode=True, mode="nearest")
        up = np.round(up[:SHAPE[0], :SHAPE[1], :SHAPE[2]]).astype(np.int16)  # scanner-like int16, 0..1000
        if old == "seg":  # BraTS 2023 labels: 1 NCR, 2 ED, 3 ET
            up[up == 4] = 3
        out = nib.Nifti1Image(up, affine)
        out.set_data_dtype(np.int16)
        nib.save(out, folder / f"{case}-{new}.nii.gz")
    return folder


def test_brats_size_case_through_the_cli(brats_case, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["attack", str(brats_case), "--model", "demo:unet3d", "--attack", "fgsm", "--eps", "0.02",
               "--no-labels", "--seed", "0", "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    ref = nib.load(brats_case / f"{brats_case.name}-t1n.nii.gz")
    assert ref.shape == SHAPE
    for name in ("adversarial.nii.gz", "perturbation.nii.gz", "segmentation_clean.nii.gz",
                 "segmentation_adversarial.nii.gz"):
        img = nib.load(out / name)
        assert img.shape[:3] == SHAPE, name
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5, err_msg=name)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["channels"].startswith("matched by name: t1 <- t1")
    assert np.isfinite(metrics["image_quality"]["psnr"])
    assert set(metrics["dice"]["clean_vs_adversarial"]["regions"]) == {"WT", "TC", "ET"}
    record = json.loads((out / "record.json").read_text())
    assert record["input"]["shape"] == [4, *SHAPE]
