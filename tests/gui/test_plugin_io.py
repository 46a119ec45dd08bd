"""npe2 manifest, reader, writers and sample data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image

pytestmark = pytest.mark.gui

CASE = sample_data_dir() / "glioma" / "glioma_001"


def test_manifest_declares_readers_writers_samples_widgets():
    import npe2

    pm = npe2.PluginManifest.from_distribution("napari-medadv")
    c = pm.contributions
    assert c.readers and c.readers[0].accepts_directories
    assert {tuple(w.layer_types) for w in c.writers} == {("image",), ("labels",)}
    assert {s.key for s in c.sample_data} == {"glioma", "glioma-1mm", "cxr"}
    assert {w.display_name for w in c.widgets} == {"Model", "Attack", "Readouts", "Plots", "Orientation",
                                                  "Reader study"}
    for cmd in c.commands:  # every python_name resolves
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr))


def test_reader_brats_case_one_layer_per_contrast_with_geometry():
    from napari_medadv._reader import napari_get_reader

    reader = napari_get_reader(str(CASE))
    assert reader is not None
    layers = reader(str(CASE))
    img = read_image(CASE)
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["glioma_001 t1", "glioma_001 t1ce", "glioma_001 t2", "glioma_001 flair", "glioma_001 labels"]
    for data, kw, kind in layers:  # RAS file: data as stored, the layer transform is the file's affine
        assert data.shape == img.spatial_shape
        assert tuple(kw["scale"]) == img.geometry.spacing and tuple(kw["translate"]) == img.geometry.origin
        np.testing.assert_array_equal(kw["affine"], np.eye(4))
    assert [k for *_, k in layers] == ["image"] * 4 + ["labels"]
    np.testing.assert_array_equal(layers[3][0], img.array[3])
    assert [kw["visible"] for _, kw, _ in layers[:4]] == [False, False, False, True]  # FLAIR on screen
    lo, hi = layers[3][1]["contrast_limits"]
    assert lo < hi


def test_reader_declines_foreign_files(tmp_path):
    from napari_medadv._reader import napari_get_reader

    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None


def test_bad_file_gives_a_notification_not_an_exception(make_napari_viewer, tmp_path, monkeypatch):
    import napari.utils.notifications as nt

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    messages = []
    monkeypatch.setattr(nt, "show_error", lambda m: messages.append(m))
    viewer = make_napari_viewer()
    try:
        viewer.open(str(bad), plugin="napari-medadv")
    except Exception as e:  # napari may say that no layers were read; that is not *our* exception
        assert "broken.nii.gz" in str(e) or "No" in str(e) or "no" in str(e)
    assert messages and "broken.nii.gz" in messages[0]
    assert len(viewer.layers) == 0


def test_open_through_napari_and_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medadv", "cxr")
    assert len(viewer.layers) == 1 and viewer.layers[0].data.ndim == 2
    viewer.open(str(CASE), plugin="napari-medadv")
    assert "glioma_001 flair" in viewer.layers and "glioma_001 labels" in viewer.layers
    assert tuple(viewer.layers["glioma_001 flair"].scale) == (2.5, 2.5, 2.5)


def test_the_1mm_sample_opens_with_its_grid(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medadv", "glioma-1mm")
    flair = viewer.layers["glioma_1mm_001 flair"]
    assert flair.data.shape == (197, 233, 189) and tuple(flair.scale) == (1.0, 1.0, 1.0)
    assert "glioma_1mm_001 labels" in viewer.layers


def test_writers_round_trip_keep_geometry_and_mark_derived(make_napari_viewer, tmp_path):
    import nibabel as nib

    viewer = make_napari_viewer()
    viewer.open(str(CASE), plugin="napari-medadv")
    img = read_image(CASE)
    flair = viewer.layers["glioma_001 flair"]
    out = tmp_path / "flair.nii.gz"
    from napari_medadv._writer import write_image, write_labels

    meta = {"name": flair.name, "scale": flair.scale, "translate": flair.translate, "metadata": flair.metadata}
    written = write_image(str(out), flair.data, meta)
    back = read_image(written[0])
    np.testing.assert_allclose(back.array[0], img.array[3])
    assert back.geometry.same_grid(img.geometry)
    # an edited ("derived") copy is written as derived
    meta2 = dict(meta, metadata={**flair.metadata, "medadv": {**flair.metadata["medadv"], "derived": True,
                                                                "attack": "fgsm", "eps": 0.03,
                                                                "role": "adversarial"}})
    w2 = write_image(str(tmp_path / "adv.nii.gz"), flair.data + 1, meta2)
    descrip = nib.load(w2[0]).header["descrip"].tobytes().decode(errors="ignore")
    assert "NOT the original" in descrip or "napari-medadv" in descrip
    lab = viewer.layers["glioma_001 labels"]
    w3 = write_labels(str(tmp_path / "seg.nii.gz"), lab.data,
                      {"name": lab.name, "scale": lab.scale, "translate": lab.translate, "metadata": lab.metadata})
    back_lab = np.asarray(nib.load(w3[0]).dataobj)
    np.testing.assert_array_equal(back_lab, img.labels)


def test_writer_for_plain_layers_uses_scale_and_translate(tmp_path):
    from napari_medadv._writer import write_image

    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    w = write_image(str(tmp_path / "plain.nii.gz"), data, {"name": "plain", "scale": (2.0, 3.0, 4.0),
                                                             "translate": (1.0, 2.0, 3.0), "metadata": {}})
    back = read_image(w[0])
    assert back.geometry.napari_scale_translate() == ((2.0, 3.0, 4.0), (1.0, 2.0, 3.0))
