"""The npe2 labels writer: a labels layer on a DICOM image saved as ``.dcm`` is a DICOM SEG
(as napari's File > Save Selected Layers calls it: display-ordered data plus the layer's metadata)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from napari_medadv._writer import write_labels
from napari_medadv.core.io import read_image
from napari_medadv.core.io.dicom_seg import coded_segments, read_dicom_seg
from napari_medadv.core.orientation import DisplayFrame

pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def ct():
    return read_image(get_testdata_file("CT_small.dcm", download=False))


def _layer_meta(image, **medadv) -> dict:
    return {"name": "layer", "metadata": {"medadv": medadv, "medadv_image": image}}


def test_adversarial_segmentation_layer_saved_as_seg(tmp_path, ct):
    labels = np.zeros(ct.spatial_shape, dtype=np.int32)
    labels[10:40, 20:60] = 2
    labels[50:70, 50:70] = 1
    segments = coded_segments([1, 2], {1: "soft tissue", 2: "dense lesion"})
    meta = _layer_meta(ct, role="segmentation (adversarial)", derived=True, attack="pgd", eps=0.03,
                       model="demo:x", segments=segments)
    data = DisplayFrame.of(ct.geometry).to_display(labels)
    (out,) = write_labels(str(tmp_path / "adv_seg.dcm"), data, meta)
    np.testing.assert_array_equal(read_dicom_seg(out, ct), labels)
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert ds.SeriesDescription == "SEG of adversarial image NOT ORIGINAL (pgd eps=0.03)"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["soft tissue", "dense lesion"]
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.meta["datasets"][0].SeriesInstanceUID


def test_hand_drawn_layer_is_a_manual_seg_with_generic_segments(tmp_path, ct):
    labels = np.zeros(ct.spatial_shape, dtype=np.int32)
    labels[:5, :5] = 3
    (out,) = write_labels(str(tmp_path / "drawn.dcm"), labels, _layer_meta(ct, role="image", derived=False))
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert [(s.SegmentLabel, s.SegmentAlgorithmType) for s in ds.SegmentSequence] == [("3", "MANUAL")]
    assert ds.ContentLabel == "MANUAL"
    np.testing.assert_array_equal(read_dicom_seg(out, ct), labels)


def test_seg_of_a_non_dicom_layer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a labels layer on an image read from DICOM"):
        write_labels(str(tmp_path / "x.dcm"), np.zeros((4, 5), np.int32), {"name": "plain", "metadata": {}})
