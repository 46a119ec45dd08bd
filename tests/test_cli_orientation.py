"""``medadv attack`` on a case stored LAS (x flipped, as many DICOM conversions write NIfTI):
every output is written on the input's own grid, in its own voxel order."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from napari_medadv.cli import main
from napari_medadv.core.data.paths import sample_data_dir

CASE = sample_data_dir() / "glioma" / "glioma_001"


def _las_case(folder):
    folder.mkdir()
    for f in sorted(CASE.glob("*.nii.gz")):
        img = nib.load(str(f))
        t = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "A", "S")))
        data = apply_orientation(np.asarray(img.dataobj), t)  # scaled values; nibabel re-scales on save
        nib.save(nib.Nifti1Image(data, img.affine @ inv_ornt_aff(t, img.shape), header=img.header), str(folder / f.name))
    return folder


def test_attack_outputs_for_a_las_input_lie_on_its_grid(tmp_path, capsys):
    case = _las_case(tmp_path / "glioma_001_las")
    out = tmp_path / "out"
    rc = main(["attack", str(case), "--model", "demo:unet3d", "--attack", "fgsm", "--eps", "0.02",
               "--out", str(out), "--json", "--device", "cpu", "--seed", "0"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    src = nib.load(str(case / "glioma_001_flair.nii.gz"))
    assert "".join(nib.aff2axcodes(src.affine)) == "LAS"
    for name in ("adversarial.nii.gz", "perturbation.nii.gz", "segmentation_clean.nii.gz",
                 "segmentation_adversarial.nii.gz"):
        img = nib.load(str(out / name))
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
        assert img.shape[:3] == src.shape
    # voxel order kept: the adversarial FLAIR is the LAS FLAIR + at most ε · range
    flair = np.asarray(src.dataobj, dtype=np.float32)
    adv = nib.load(str(out / "adversarial.nii.gz")).get_fdata()[..., 3]
    assert np.abs(adv - flair).max() <= 0.02 * (flair.max() - flair.min()) + 1e-3
    # and the clean segmentation overlays the (LAS) ground truth
    gt = np.asarray(nib.load(str(case / "glioma_001_seg.nii.gz")).dataobj) > 0
    seg = np.asarray(nib.load(str(out / "segmentation_clean.nii.gz")).dataobj) > 0
    assert 2 * (gt & seg).sum() / (gt.sum() + seg.sum()) > 0.5
    assert json.loads(stdout)["dice"]["ground_truth_vs_clean"]["regions"]["WT"] > 0.5
