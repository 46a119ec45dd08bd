"""Orientation and laterality: the patient frame, display frames, letters, label maps in
another orientation, and writers that keep the input's orientation (no Qt, no napari)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: the shared case builders
from orientation_cases import CASES, glioma_labels, oblique, stored_as, write_cases  # noqa: E402

from napari_medadv.core.errors import InputFileError
from napari_medadv.core.io import Geometry, read_image, read_labels, write_image, write_labels
from napari_medadv.core.io.geometry import onto_grid
from napari_medadv.core.orientation import (
    DisplayFrame,
    axis_codes,
    convention_of,
    plane_of,
    screen_letters,
    view_settings,
)

VOXEL = 2.5  # mm, glioma_001


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    return write_cases(tmp_path_factory.mktemp("orientation"))


def _world_centroid(image) -> np.ndarray:
    frame = DisplayFrame.of(image.geometry)
    shown = frame.to_display(image.array[0])
    return frame.data_to_world(np.argwhere(shown > 0).mean(0)[None])[0]


# case, stored axis codes, display permutation (display axis k = stored axis perm[k])
EXPECTED = [("RAS", "RAS", (0, 1, 2)), ("LAS", "LAS", (0, 1, 2)), ("LPS", "LPS", (0, 1, 2)),
            ("PSR", "PSR", (2, 0, 1)), ("oblique", "RAS", (0, 1, 2)), ("DICOM", "SPL", (2, 1, 0))]


@pytest.mark.parametrize(("name", "codes", "perm"), EXPECTED)
def test_same_anatomy_lands_on_the_same_patient_position(cases, name, codes, perm):
    """Tumour centroid in the world (RAS mm) within one voxel of the RAS file's, whatever the
    stored orientation; the tumour stays in the patient's left hemisphere (x < 0)."""
    ras = _world_centroid(read_image(cases["RAS"]))
    image = read_image(cases[name])
    assert axis_codes(image.geometry.affine) == codes
    frame = DisplayFrame.of(image.geometry)
    assert frame.perm == perm
    c = _world_centroid(image)
    assert np.linalg.norm(c - ras) < VOXEL, (name, c, ras)
    assert c[0] < -20  # left hemisphere: RAS x negative
    # the display matrix runs display axis k along world axis k (a napari-sliceable affine)
    m = frame.matrix[:3, :3]
    assert np.all(np.argmax(np.abs(m), axis=0) == [0, 1, 2])


def test_display_frame_is_a_view_and_round_trips():
    labels, affine = glioma_labels()
    arr, aff = stored_as(labels, affine, "PSR")
    frame = DisplayFrame.of(Geometry(aff, shape=arr.shape))
    shown = frame.to_display(arr)
    assert np.shares_memory(shown, arr) and shown.shape == labels.shape
    np.testing.assert_array_equal(frame.to_stored(shown), arr)
    stacked = np.stack([arr, arr])  # channel axis first: only the spatial axes move
    assert frame.to_display(stacked).shape == (2, *labels.shape)
    idx = np.argwhere(arr > 0)[:5]
    np.testing.assert_array_equal(shown[tuple(frame.coords_to_display(idx).T)], arr[tuple(idx.T)])
    kw = frame.napari_kwargs()
    np.testing.assert_allclose(kw["affine"] @ np.diag([*kw["scale"], 1]), frame.matrix)
    assert kw["scale"] == (2.5, 2.5, 2.5) and kw["translate"] == (0.0, 0.0, 0.0)
    ras = DisplayFrame.of(Geometry(affine, shape=labels.shape)).napari_kwargs()  # no flips: plain
    assert ras["translate"] == tuple(affine[:3, 3]) and np.array_equal(ras["affine"], np.eye(4))


def test_oblique_keeps_its_rotation_and_2d_stays_in_the_image_plane():
    labels, affine = glioma_labels()
    arr, aff = oblique(labels, affine, 20.0, 10.0)
    kw = DisplayFrame.of(Geometry(aff, shape=arr.shape)).napari_kwargs()
    r = kw["affine"][:3, :3]
    assert abs(np.degrees(np.arctan2(r[1, 0], r[0, 0])) - 20.0) < 1e-6  # shown rotated, not snapped
    flat = DisplayFrame.of(Geometry.from_spacing((0.5, 0.25), (1.0, 2.0), shape=(4, 6)))
    assert not flat.patient and flat.napari_kwargs()["scale"] == (0.5, 0.25)
    assert flat.napari_kwargs()["translate"] == (1.0, 2.0)


# plane, convention, dims.order, camera orientation, edge letters (top, bottom, left, right)
VIEWS = [
    ("axial", "radiological", (2, 1, 0), ("away", "up", "left"), "APRL"),
    ("axial", "neurological", (2, 1, 0), ("towards", "up", "right"), "APLR"),
    ("coronal", "radiological", (1, 2, 0), ("towards", "up", "left"), "SIRL"),
    ("coronal", "neurological", (1, 2, 0), ("away", "up", "right"), "SILR"),
    ("sagittal", "radiological", (0, 2, 1), ("away", "up", "left"), "SIAP"),
    ("sagittal", "neurological", (0, 2, 1), ("away", "up", "left"), "SIAP"),
]


@pytest.mark.parametrize(("plane", "convention", "order", "orientation", "letters"), VIEWS)
def test_views_and_letters(plane, convention, order, orientation, letters):
    assert view_settings(plane, convention) == (order, orientation)
    got = screen_letters(order[1:], orientation[1:])
    assert "".join(got[e] for e in ("top", "bottom", "left", "right")) == letters
    assert plane_of(order) == plane
    if plane != "sagittal":
        assert convention_of(order[1:], orientation[1:]) == convention


def test_letters_of_napari_default_view_and_ill_opts():
    # napari's default: world axes (1, 2) on screen, increasing down and right
    assert screen_letters((1, 2), ("down", "right")) == {"top": "P", "bottom": "A", "left": "I", "right": "S"}
    with pytest.raises(ValueError, match="plane"):
        view_settings("oblique")
    with pytest.raises(ValueError, match="convention"):
        view_settings("axial", "upside-down")
    with pytest.raises(ValueError, match="world axes"):
        screen_letters((3, 0), ("up", "left"))


@pytest.mark.parametrize("codes", ["LAS", "LPS", "PSR", "SPL"])
def test_label_map_in_another_orientation_is_put_on_the_image_grid(tmp_path, codes):
    image = read_image(Path(__file__).resolve().parents[3] / "sample_data" / "glioma" / "glioma_001")
    arr, aff = stored_as(image.labels, image.geometry.affine, codes)
    path = tmp_path / f"seg_{codes}.nii.gz"
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), aff), str(path))
    np.testing.assert_array_equal(read_labels(path, like=image), image.labels)


def test_label_map_on_a_truly_different_grid_is_refused(tmp_path):
    image = read_image(Path(__file__).resolve().parents[3] / "sample_data" / "glioma" / "glioma_001")
    arr, aff = stored_as(image.labels, image.geometry.affine, "LAS")
    shifted = aff.copy()
    shifted[0, 3] += 5.0  # 2 voxels off: not the same voxels
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), shifted), str(tmp_path / "off.nii.gz"))
    with pytest.raises(InputFileError, match="not on the grid"):
        read_labels(tmp_path / "off.nii.gz", like=image)
    _, rot = oblique(image.labels.astype(np.float32), image.geometry.affine)
    assert onto_grid(image.labels, rot, image.geometry) is None  # rotated: a different grid


def test_brats_seg_stored_in_another_orientation_is_accepted(tmp_path):
    src = Path(__file__).resolve().parents[3] / "sample_data" / "glioma" / "glioma_001"
    folder = tmp_path / "case"
    folder.mkdir()
    for f in src.iterdir():
        img = nib.load(str(f))
        if f.name.endswith("_seg.nii.gz"):
            arr, aff = stored_as(np.asarray(img.dataobj), img.affine, "LPS")
            img = nib.Nifti1Image(arr, aff)
        nib.save(img, str(folder / f.name))
    np.testing.assert_array_equal(read_image(folder).labels, read_image(src).labels)


@pytest.mark.parametrize("name", ["LAS", "PSR", "oblique", "DICOM"])
def test_writers_keep_the_inputs_own_orientation(cases, tmp_path, name):
    image = read_image(cases[name])
    changed = image.array + 1.0
    if name == "DICOM":  # a derived series: the same slices, positions and orientation
        out = write_image(changed, tmp_path / "out", like=image)
    else:
        out = write_image(changed, tmp_path / "out.nii.gz", like=image)
        np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(cases[name])).affine, atol=1e-5)
        seg = write_labels(image.array[0].astype(np.int32), tmp_path / "seg.nii.gz", like=image)
        np.testing.assert_allclose(nib.load(str(seg)).affine, image.geometry.affine, atol=1e-5)
    back = read_image(out)
    assert back.geometry.same_grid(image.geometry)
    np.testing.assert_allclose(back.array, changed, atol=1e-3)


def test_every_case_is_listed():
    assert set(CASES) == {name for name, *_ in EXPECTED}
