"""Orientation in the viewer: the same anatomy stored RAS, LAS, LPS, PSR, oblique and as an
axial DICOM series coincides in napari's world (RAS+ mm); the letters and the one-click views
put the patient's left on screen right (radiological) or left (neurological); derived layers
and the writers keep the source's transform and stored orientation."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared case builders
from orientation_cases import CASES, stored_as, write_cases  # noqa: E402

pytestmark = pytest.mark.gui

VOXEL = 2.5  # mm, glioma_001
WAIT = 60_000


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    return write_cases(tmp_path_factory.mktemp("orientation_gui"))


def _world_centroid(layer) -> np.ndarray:
    """Centroid of the non-zero voxels, through the layer's own data -> world transform."""
    return np.asarray(layer.data_to_world(np.argwhere(np.asarray(layer.data) > 0).mean(0)), dtype=float)


def test_same_anatomy_in_six_storages_coincides_in_one_viewer(make_napari_viewer, cases):
    viewer = make_napari_viewer()
    for name in CASES:
        viewer.open(str(cases[name]), plugin="napari-medadv")
    assert len(viewer.layers) == len(CASES)
    by_case = {name: viewer.layers[i] for i, name in enumerate(CASES)}
    ras = _world_centroid(by_case["RAS"])
    np.testing.assert_allclose(ras, (-32.56, -22.21, 34.22), atol=0.01)  # the left hemisphere
    rows = []
    for name, lyr in by_case.items():
        c = _world_centroid(lyr)
        rows.append(f"{name:8s} ({c[0]:7.2f}, {c[1]:7.2f}, {c[2]:7.2f})  {np.linalg.norm(c - ras):.2f} mm")
        assert np.linalg.norm(c - ras) < VOXEL, (name, c)
    print("\n".join(["tumour centroid in napari world (RAS mm), distance from RAS:", *rows]))


@pytest.mark.parametrize("name", CASES)
def test_letters_and_tumour_side_on_screen(make_napari_viewer, cases, name):
    """Axial radiological: A at the top, L at the right edge, and the left-hemisphere tumour
    right of the canvas centre; neurological: R on the right and the tumour left of centre."""
    from napari_medadv._qt.orientation import OrientationWidget

    viewer = make_napari_viewer(show=True)  # a shown window: the screenshot is drawn
    w = OrientationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Orientation")
    (lyr,) = viewer.open(str(cases[name]), plugin="napari-medadv")
    lyr.contrast_limits = (0, 1)  # every labelled voxel white
    lyr.interpolation2d = "nearest"
    viewer.dims.point = tuple(_world_centroid(lyr))
    w.buttons["axial"].click()
    assert w.markers.texts() == {"top": "A", "bottom": "P", "left": "R", "right": "L"}

    def tumour_column_fraction():
        shot = viewer.screenshot(canvas_only=True, flash=False)
        cols = np.nonzero(shot[..., :3].min(-1) > 128)[1]  # white voxels, not the yellow letters
        return cols.mean() / shot.shape[1]

    assert tumour_column_fraction() > 0.55  # patient's left on screen right
    w.neurological.setChecked(True)
    assert w.markers.texts()["right"] == "R"
    assert tumour_column_fraction() < 0.45
    w.buttons["coronal"].click()
    assert w.markers.texts() == {"top": "S", "bottom": "I", "left": "L", "right": "R"}
    w.radiological.setChecked(True)
    assert w.markers.texts() == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    w.buttons["sagittal"].click()
    assert w.markers.texts() == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    viewer.dims.ndisplay = 3
    assert w.markers.texts() == {}  # no edge letters on a rotatable 3-D view
    viewer.dims.ndisplay = 2
    w.show_letters.setChecked(False)
    assert w.markers.texts() == {}


def test_no_letters_for_a_radiograph(make_napari_viewer):
    from napari_medadv._qt.orientation import OrientationWidget

    viewer = make_napari_viewer()
    w = OrientationWidget(viewer)
    viewer.open_sample("napari-medadv", "cxr")
    w.buttons["axial"].click()  # no 3-D world: nothing happens
    assert w.markers.texts() == {}


def test_derived_layers_and_writers_follow_a_permuted_source(make_napari_viewer, qtbot, tmp_path,
                                                             glioma_small, unet2d):
    """A case stored PSR (axes permuted, the display is a transposed view): the attack's layers
    get the source layer's exact transform, the DGDE markers sit on the changed voxels, and
    the written result is back in the stored (PSR) order with the input's affine."""
    import nibabel as nib

    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._writer import write_image, write_labels
    from napari_medadv.core.io import Geometry, read_image

    arrays = [stored_as(glioma_small.array[c], glioma_small.geometry.affine, "PSR")[0] for c in range(4)]
    labels, aff = stored_as(glioma_small.labels, glioma_small.geometry.affine, "PSR")
    psr = dataclasses.replace(glioma_small, array=np.stack(arrays), labels=labels.astype(np.int32),
                              geometry=Geometry(aff, shape=labels.shape))
    viewer = make_napari_viewer()
    for data, kw, kind in layer_data_for_image(psr, name="case"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    src = viewer.layers["case flair"]
    assert src.data.shape == glioma_small.spatial_shape  # shown in RAS axis order ...
    assert np.shares_memory(src.data, psr.array)  # ... as a view of the stored array
    np.testing.assert_allclose(_world_centroid(viewer.layers["case labels"]),
                               glioma_small.geometry.affine[:3, :3] @ np.argwhere(glioma_small.labels > 0).mean(0)
                               + glioma_small.geometry.affine[:3, 3], atol=1e-6)
    aw = AttackWidget(viewer)
    viewer.window.add_dock_widget(aw, name="attack")
    aw.session.set_model(unet2d)
    aw.set_attack("dgde", max_queries=30, population=4, init_tries=2)
    job = aw.run()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    qtbot.waitUntil(lambda: not aw.running, timeout=WAIT)
    ref = src.data_to_world
    for name in ("case flair adversarial", "case flair perturbation", "case segmentation (adversarial)",
                 "case diff", "case perturbed pixels"):
        lyr = viewer.layers[name]
        for idx in ((0, 0, 0), (3, 5, 7)):
            np.testing.assert_allclose(lyr.data_to_world(idx), ref(idx), atol=1e-9)
    pts = viewer.layers["case perturbed pixels"].data
    assert len(pts)
    adv = np.stack([np.asarray(viewer.layers[f"case {c} adversarial"].data) for c in ("t1", "t1ce", "t2", "flair")])
    moved = np.argwhere(np.any(adv != np.stack([viewer.layers[f"case {c}"].data for c in
                                                ("t1", "t1ce", "t2", "flair")]), axis=0))
    assert {tuple(p) for p in np.round(pts).astype(int)} == {tuple(p) for p in moved}
    # writers: back to the stored (PSR) voxel order and affine
    lyr = viewer.layers["case flair adversarial"]
    out = write_image(str(tmp_path / "adv.nii.gz"), lyr.data, {"name": lyr.name, "metadata": lyr.metadata})
    back = nib.load(out[0])
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    np.testing.assert_allclose(np.asarray(back.dataobj), np.transpose(lyr.data, (1, 2, 0)), atol=1e-5)
    seg = viewer.layers["case labels"]
    out = write_labels(str(tmp_path / "seg.nii.gz"), seg.data, {"name": seg.name, "metadata": seg.metadata})
    np.testing.assert_array_equal(np.asarray(nib.load(out[0]).dataobj), labels)
    assert read_image(tmp_path / "adv.nii.gz").geometry.same_grid(psr.geometry)


def test_a_plain_layer_with_a_full_affine_keeps_it(make_napari_viewer, tmp_path):
    """A user's own Image layer (not read by the plugin) with a flipping, rotating affine and a
    scale: the attack source and the writer use its whole data -> world transform. (napari
    itself cannot draw a layer whose affine permutes the displayed axes.)"""
    import nibabel as nib

    from napari_medadv._qt.layers import source_from_layer
    from napari_medadv._writer import write_image

    viewer = make_napari_viewer()
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    t = np.deg2rad(10.0)
    affine = np.array([[-1.0, 0, 0, 10], [0, np.cos(t), -np.sin(t), -5], [0, np.sin(t), np.cos(t), 2], [0, 0, 0, 1]])
    lyr = viewer.add_image(data, name="mine", scale=(2.0, 3.0, 4.0), affine=affine)
    expected = affine @ np.diag([2.0, 3.0, 4.0, 1.0])
    src = source_from_layer(viewer, lyr)
    np.testing.assert_allclose(src.image.geometry.affine, expected)
    for idx in ((0, 0, 0), (5, 6, 7)):
        np.testing.assert_allclose(src.frame.data_to_world(np.array([idx]))[0], lyr.data_to_world(idx))
    out = write_image(str(tmp_path / "mine.nii.gz"), lyr.data, {"name": "mine", "scale": lyr.scale,
                                                                 "translate": lyr.translate,
                                                                 "affine": lyr.affine.affine_matrix,
                                                                 "rotate": lyr.rotate, "shear": lyr.shear,
                                                                 "metadata": {}})
    np.testing.assert_allclose(nib.load(out[0]).affine, expected, atol=1e-6)
