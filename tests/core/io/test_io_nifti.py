"""NIfTI and BraTS folders: layout, geometry, round trips, label checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from io_testutils import NIBABEL_DATA, write_brats

from napari_medadv.core.errors import InputFileError
from napari_medadv.core.io import read_image, read_labels, write_image, write_labels


@pytest.mark.parametrize(
    "name, shape, names",
    [
        ("example4d.nii.gz", (2, 128, 96, 24), ["channel0", "channel1"]),
        ("anatomical.nii", (1, 33, 41, 25), ["image"]),
        ("example_nifti2.nii.gz", (2, 32, 20, 12), ["channel0", "channel1"]),
    ],
)
def test_read_nifti_layout_and_affine(name, shape, names):
    path = NIBABEL_DATA / name
    img = read_image(path)
    ref = nib.load(path)
    assert img.kind == "nifti" and img.array.dtype == np.float32
    assert img.array.shape == shape and img.channel_names == names
    np.testing.assert_array_equal(img.geometry.affine, ref.affine)
    expected = np.asarray(ref.dataobj, dtype=np.float32)
    expected = np.moveaxis(expected, -1, 0) if expected.ndim == 4 else expected[None]
    np.testing.assert_array_equal(img.array, expected)  # file voxel order, no reorientation
    assert img.spatial_dims == 3 and img.n_channels == shape[0]
    np.testing.assert_allclose(img.geometry.spacing, ref.header.get_zooms()[:3], rtol=1e-5)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "anatomical.nii"])
def test_nifti_round_trip(tmp_path, name):
    img = read_image(NIBABEL_DATA / name)
    perturbed = img.array + np.float32(0.25)
    out = write_image(perturbed, tmp_path / "out" / "adv.nii.gz", like=img)
    back = read_image(out)
    np.testing.assert_allclose(back.array, perturbed, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.geometry.affine, img.geometry.affine, atol=1e-5)
    written = nib.load(out)
    assert written.get_data_dtype() == np.float32
    assert written.header["descrip"].item().decode().startswith("adversarially perturbed")
    assert written.ndim == (4 if img.n_channels > 1 else 3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["adv.nii.gz"]  # no temp left


def test_nifti_header_is_copied_not_shared(tmp_path, nifti3d):
    img = read_image(nifti3d)
    before = img.meta["nifti_header"]["descrip"].copy()
    write_image(img.array, tmp_path / "a.nii", like=img, description="x")
    assert img.meta["nifti_header"]["descrip"] == before


def test_labels_round_trip_exact(tmp_path, nifti3d):
    img = read_image(nifti3d)
    labels = (np.arange(np.prod(img.spatial_shape)) % 5).reshape(img.spatial_shape)
    out = write_labels(labels, tmp_path / "seg.nii.gz", like=img)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    assert written.header.get_intent()[0] == "label"
    back = read_labels(out, like=img)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    big = labels * 100  # 400 > 255 -> int16
    out = write_labels(big, tmp_path / "seg16.nii", like=img)
    assert nib.load(out).get_data_dtype() == np.int16
    np.testing.assert_array_equal(read_labels(out, like=img), big)


def test_read_labels_refuses_other_grid(tmp_path, nifti3d):
    img = read_image(nifti3d)
    labels = np.zeros(img.spatial_shape, np.uint8)
    shifted = img.geometry.affine.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(labels, shifted), tmp_path / "moved.nii.gz")
    with pytest.raises(InputFileError, match=r"moved\.nii\.gz.*not on the grid of anatomical\.nii"):
        read_labels(tmp_path / "moved.nii.gz", like=img)
    nib.save(nib.Nifti1Image(labels[:-1], img.geometry.affine), tmp_path / "small.nii.gz")
    with pytest.raises(
        InputFileError, match=r"small\.nii\.gz.*shape \(32, 41, 25\) does not match"
    ):
        read_labels(tmp_path / "small.nii.gz", like=img)
    nib.save(
        nib.Nifti1Image(labels + np.float32(0.5), img.geometry.affine), tmp_path / "frac.nii.gz"
    )
    with pytest.raises(InputFileError, match=r"frac\.nii\.gz.*non-integer"):
        read_labels(tmp_path / "frac.nii.gz", like=img)


# -- BraTS ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "names, sep, seg_values, expected_labels, remapped",
    [
        (("t1", "t1ce", "t2", "flair", "seg"), "_", (0, 1, 2, 4), {0, 1, 2, 4}, False),
        # BraTS 2023 naming and ET = 3: converted to the classic ET = 4
        (("t1n", "t1c", "t2w", "t2f", "seg"), "-", (0, 1, 2, 3), {0, 1, 2, 4}, True),
        (("flair", "t2", "t1ce", "t1"), "_", None, None, False),  # no seg, any file order
    ],
    ids=["classic", "brats2023", "no-seg"],
)
def test_read_brats(tmp_path, names, sep, seg_values, expected_labels, remapped):
    case = write_brats(tmp_path / "case", names=names, sep=sep, seg_values=seg_values or (0,))
    img = read_image(case["folder"])
    assert img.kind == "brats"
    assert img.channel_names == ["t1", "t1ce", "t2", "flair"]
    assert img.array.shape == (4, 6, 7, 5)
    # channel order is t1, t1ce, t2, flair whatever the file names
    order = {"t1": 0, "t1ce": 1, "t2": 2, "flair": 3, "t1n": 0, "t1c": 1, "t2w": 2, "t2f": 3}
    for name, vol in case["volumes"].items():
        np.testing.assert_array_equal(img.array[order[name]], vol)
    np.testing.assert_array_equal(img.geometry.affine, case["affine"])
    if expected_labels is None:
        assert img.labels is None
    else:
        assert set(np.unique(img.labels).tolist()) == expected_labels
        expected = case["seg"].copy()
        expected[expected == 3] = 4
        np.testing.assert_array_equal(img.labels, expected)
    assert ("label_remap" in img.meta) is remapped


def test_brats_written_as_4d_nifti(tmp_path):
    case = write_brats(tmp_path / "case")
    img = read_image(case["folder"])
    out = write_image(img.array * 2, tmp_path / "adv.nii.gz", like=img)
    back = read_image(out)
    assert back.kind == "nifti" and back.array.shape == (4, 6, 7, 5)
    np.testing.assert_array_equal(back.array, img.array * 2)
    np.testing.assert_array_equal(back.geometry.affine, img.geometry.affine)
    seg = write_labels(img.labels, tmp_path / "seg.nii.gz", like=img)
    np.testing.assert_array_equal(read_labels(seg, like=back), img.labels)


def test_brats_bad_cases(tmp_path):
    # a modality on another grid
    case = write_brats(tmp_path / "grid")
    moved = case["affine"].copy()
    moved[2, 3] += 3
    nib.save(nib.Nifti1Image(case["volumes"]["t2"], moved), case["folder"] / "case001_t2.nii.gz")
    with pytest.raises(InputFileError, match=r"case001_t2\.nii\.gz: does not share the grid"):
        read_image(case["folder"])
    # a modality of another shape
    case = write_brats(tmp_path / "shape")
    nib.save(
        nib.Nifti1Image(np.zeros((6, 7, 4), np.float32), case["affine"]),
        case["folder"] / "case001_flair.nii.gz",
    )
    with pytest.raises(InputFileError, match=r"case001_flair\.nii\.gz.*shape"):
        read_image(case["folder"])
    # missing modality
    case = write_brats(tmp_path / "missing", names=("t1", "t2", "flair"))
    with pytest.raises(InputFileError, match=r"missing: BraTS case folder lacks t1ce"):
        read_image(case["folder"])
    # invalid label value
    case = write_brats(tmp_path / "labels", seg_values=(0, 1, 2, 5))
    with pytest.raises(
        InputFileError, match=r"case001_seg\.nii\.gz: unexpected BraTS label values \[5\]"
    ):
        read_image(case["folder"])
    # both 3 and 4: not a known convention
    case = write_brats(tmp_path / "both", seg_values=(0, 3, 4))
    with pytest.raises(InputFileError, match=r"unexpected BraTS label values \[3\]"):
        read_image(case["folder"])
    # two cases in one folder
    case = write_brats(tmp_path / "two")
    nib.save(
        nib.Nifti1Image(case["volumes"]["t1"], case["affine"]), case["folder"] / "case002_t1.nii.gz"
    )
    with pytest.raises(InputFileError, match="more than one BraTS case"):
        read_image(case["folder"])
