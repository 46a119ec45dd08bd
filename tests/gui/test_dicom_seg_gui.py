"""PACS-ready results from the GUI: Save attack on a DICOM series writes the DICOM SEGs, and a
segmentation layer saved as ``.dcm`` (the npe2 labels writer) is a SEG with the model's segments."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from torch import nn

from napari_medadv.core.models.base import ModelInfo
from napari_medadv.core.models.registry import register_scheme

pytestmark = pytest.mark.gui
hd = pytest.importorskip("highdicom")
WAIT = 60_000
NAMES = {"1": "soft tissue", "2": "dense lesion"}


def _threshold(value, *, weights=None, trust_code=False, info=None):
    """HU-like values -> 0 below 0, 1 'soft tissue' up to 600, 2 'dense lesion' above."""
    conv = nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 0.02, 0.04]).reshape(3, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.0, -12.0]))
    meta = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "output": "softmax",
            "label_values": [0, 1, 2], "label_names": NAMES, "name": "threshold"}
    return conv.eval(), ModelInfo.from_dict(meta), "threshold"


register_scheme("guithreshold", _threshold)


def _series(folder, n=5):  # 4 slices would be taken for RGBA by napari
    """``n`` CT_small slices 2.5 mm apart, files named in descending position order."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    folder.mkdir()
    uid = generate_uid()
    for k in range(n):
        ds = copy.deepcopy(src)
        ds.ImagePositionPatient = [*src.ImagePositionPatient[:2], float(src.ImagePositionPatient[2]) + 2.5 * k]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = (src.pixel_array + 40 * k).astype(src.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"slice{n - k:02d}.dcm", enforce_file_format=True)
    return folder


def test_save_attack_and_layer_save_write_dicom_segs(make_napari_viewer, qtbot, tmp_path):
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._writer import write_labels
    from napari_medadv.core.io import read_image
    from napari_medadv.core.io.dicom_seg import read_dicom_seg
    from napari_medadv.core.models import load_model

    viewer = make_napari_viewer()
    image = read_image(_series(tmp_path / "ct"))
    for data, kw, kind in layer_data_for_image(image, name="case"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    aw = AttackWidget(viewer)
    viewer.window.add_dock_widget(aw)
    aw.session.set_model(load_model("guithreshold:0", device="cpu"))
    aw.set_attack("fgsm", eps=0.05)
    job = aw.run()
    qtbot.waitUntil(lambda: not job.running and not aw.running, timeout=WAIT)
    outcome = aw.session.shown.outcome
    out = tmp_path / "saved"
    save = aw.save_attack(str(out))
    qtbot.waitUntil(lambda: not save.running and (out / "segmentation_adversarial.dcm").exists(), timeout=WAIT)
    np.testing.assert_array_equal(read_dicom_seg(out / "segmentation_clean.dcm", image), outcome.seg_clean)
    np.testing.assert_array_equal(read_dicom_seg(out / "segmentation_adversarial.dcm", image), outcome.seg_adv)

    layer = viewer.layers["case segmentation (adversarial)"]
    meta = {"name": layer.name, "scale": layer.scale, "translate": layer.translate, "metadata": layer.metadata}
    (path,) = write_labels(str(tmp_path / "layer_seg.dcm"), layer.data, meta)
    np.testing.assert_array_equal(read_dicom_seg(path, image), outcome.seg_adv)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["soft tissue", "dense lesion"]
    assert "NOT ORIGINAL" in ds.SeriesDescription and "fgsm" in ds.SeriesDescription
    aw.cancel()
