"""PACS-ready results: DICOM SEG objects and the derived series of an attack on a DICOM source,
read back with highdicom and pydicom (geometry, references, segment labels, DERIVED flags)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from io_testutils import build_series, pydicom_file
from pydicom.sr.codedict import codes
from torch import nn

import napari_medadv
from napari_medadv.core.errors import InputFileError
from napari_medadv.core.io import read_image
from napari_medadv.core.io.dicom_seg import SegAlgorithm, coded_segments, read_dicom_seg, write_dicom_seg
from napari_medadv.core.models import load_model
from napari_medadv.core.models.base import ModelInfo
from napari_medadv.core.models.registry import register_scheme
from napari_medadv.core.pipeline import run_attack, write_outcome

hd = pytest.importorskip("highdicom")

LABEL_NAMES = {"1": "soft tissue", "2": "dense lesion"}
#: David Clunie's DICOM validator (dicom3tools; .ci/run installs it): an IOD check we did not write
DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (apt: dicom3tools) is not installed")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _threshold_loader(value, *, weights=None, trust_code=False, info=None):
    """1 channel (HU-like values) -> 3 classes: 0 below 0, 1 'soft tissue' 0..600, 2 above 600."""
    dims = int(value)
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 0.02, 0.04]).reshape(3, 1, *([1] * dims)))
        conv.bias.copy_(torch.tensor([0.0, 0.0, -12.0]))
    meta = {"task": "segmentation", "spatial_dims": dims, "in_channels": 1, "output": "softmax",
            "label_values": [0, 1, 2], "label_names": LABEL_NAMES, "name": f"threshold{dims}d"}
    return conv.eval(), ModelInfo.from_dict(meta), f"threshold-{dims}"


def _mean_classifier_loader(value, *, weights=None, trust_code=False, info=None):
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    meta = {"task": "classification", "spatial_dims": 2, "in_channels": 1, "output": "sigmoid",
            "normalization": "minmax", "class_names": ["bright", "dark"], "name": "meancls"}
    return net.eval(), ModelInfo.from_dict(meta), "meancls"


register_scheme("threshold", _threshold_loader)
register_scheme("meancls", _mean_classifier_loader)


def _ipp(ds) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


def _validator_errors(path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _frames(seg) -> list[tuple[str, int, np.ndarray]]:
    """(referenced source SOPInstanceUID, segment number, IPP) of every frame, read with pydicom."""
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        plane = item.get("PlanePositionSequence")
        out.append((src, number, None if plane is None else np.array([float(v) for v in plane[0].ImagePositionPatient])))
    return out


def _labels_from_frames(path, img) -> np.ndarray:
    """The label map rebuilt from the raw frames with pydicom alone (not with the reader under test)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    value_of = {int(s.SegmentNumber): int(s.SegmentDescription.split()[-1]) for s in ds.SegmentSequence}
    index_of = {d.SOPInstanceUID: k for k, d in enumerate(img.meta["datasets"])}
    out = np.zeros((len(index_of), *pixels.shape[1:]), dtype=np.int32)
    for f, (sop, number, _) in enumerate(_frames(ds)):
        out[index_of[sop]][pixels[f] > 0] = value_of[number]
    return out


@pytest.fixture(scope="module")
def series_result(tmp_path_factory):
    """An FGSM result on a CT series whose files are shuffled and listed in descending position."""
    root = tmp_path_factory.mktemp("seg")
    s = build_series(root / "ct", n=5, positions=[10.0, 7.5, 5.0, 2.5, 0.0], seed=3)
    img = read_image(s["folder"])
    model = load_model("threshold:3", device="cpu")
    o = run_attack(img, model, "fgsm", params={"eps": 0.05}, seed=0, roi=None)
    files = write_outcome(o, root / "out", command=["test"])
    return s, img, o, files


def test_series_order_is_descending_on_disk_and_sorted_in_the_image(series_result):
    s, img, _, _ = series_result
    on_disk = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in s["files"]]
    assert on_disk == sorted(on_disk, reverse=True)  # the builder's file k is slice k of [10, 7.5, ...]
    z = [float(d.ImagePositionPatient[2]) for d in img.meta["datasets"]]
    assert z == sorted(z) and img.meta["series_files"] != s["files"]


def test_segs_overlay_the_source_slice_by_slice(series_result):
    s, img, o, files = series_result
    sources = img.meta["datasets"]
    ipp_of = {d.SOPInstanceUID: _ipp(d) for d in sources}
    for key, labels in (("segmentation_clean_dicom", o.seg_clean), ("segmentation_adversarial_dicom", o.seg_adv)):
        seg = hd.seg.segread(files[key])
        assert seg.SOPClassUID == SEG_STORAGE and seg.SegmentationType == "BINARY"
        assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
        assert seg.SeriesInstanceUID not in {s["series_uid"], *(d.SeriesInstanceUID for d in sources)}
        # every frame sits exactly at the source instance it says it was derived from; one frame
        # per slice and segment
        frames = _frames(seg)
        for sop, number, ipp in frames:
            np.testing.assert_allclose(ipp, ipp_of[sop], atol=1e-4)
        assert sorted((sop, n) for sop, n, _ in frames) == sorted((d.SOPInstanceUID, n) for d in sources for n in (1, 2))
        # round trip: raw frames (pydicom), highdicom's reader and ours all give the label map back
        np.testing.assert_array_equal(_labels_from_frames(files[key], img), labels)
        np.testing.assert_array_equal(read_dicom_seg(files[key], img), labels)
        by_source = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in sources], combine_segments=True)
        np.testing.assert_array_equal(by_source, labels)
    assert (o.seg_clean != o.seg_adv).any()  # the two SEGs really differ


def test_seg_volume_geometry_equals_the_image(series_result):
    """highdicom's volume of the SEG lies on the image's grid: each of its voxels is at the world
    position of the image voxel whose label it holds (LPS -> RAS as the reader converts)."""
    _, img, o, files = series_result
    vol = hd.seg.segread(files["segmentation_clean_dicom"]).get_volume(combine_segments=True)
    assert vol.array.shape == o.seg_clean.shape
    # the builder's slices are 2.5 mm apart but keep CT_small's SpacingBetweenSlices of 5 mm: the
    # SEG states the measured spacing (and the source header is left as it was)
    assert vol.spacing[0] == pytest.approx(2.5)
    assert float(img.meta["datasets"][0].SpacingBetweenSlices) == 5.0
    to_image = np.linalg.inv(img.geometry.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    order = []
    for k in range(vol.array.shape[0]):
        for idx in [(k, 0, 0), (k, 17, 99), (k, 127, 5)]:
            mapped = to_image @ [*idx, 1]
            np.testing.assert_allclose(mapped[1:3], idx[1:], atol=1e-3)
        order.append(int(round((to_image @ [k, 0, 0, 1])[0])))
    assert sorted(order) == list(range(len(order)))
    np.testing.assert_array_equal(vol.array, o.seg_clean[order])


def test_segments_references_and_descriptions(series_result):
    s, img, o, files = series_result
    clean = pydicom.dcmread(files["segmentation_clean_dicom"])
    adv = pydicom.dcmread(files["segmentation_adversarial_dicom"])
    derived_uid = pydicom.dcmread(next(Path(files["adversarial"]).iterdir()), stop_before_pixels=True).SeriesInstanceUID
    for seg in (clean, adv):
        assert [(int(x.SegmentNumber), x.SegmentLabel, x.SegmentDescription) for x in seg.SegmentSequence] == [
            (1, "soft tissue", "label value 1"), (2, "dense lesion", "label value 2")]
        types = [x.SegmentedPropertyTypeCodeSequence[0].CodeValue for x in seg.SegmentSequence]
        assert types == [codes.SCT.Tissue.value, codes.SCT.Lesion.value]
        algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "napari-medadv threshold3d" and algo.AlgorithmVersion == napari_medadv.__version__
        assert seg.SoftwareVersions == napari_medadv.__version__ and seg.Manufacturer == "napari-medadv"
        assert s["series_uid"] in [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence]
        assert seg.PatientID == img.meta["datasets"][0].PatientID
    assert "NOT ORIGINAL" in adv.SeriesDescription and "adversarial" in adv.SeriesDescription
    assert "fgsm" in adv.SeriesDescription and "NOT ORIGINAL" not in clean.SeriesDescription
    assert clean.ContentLabel == "CLEAN" and adv.ContentLabel == "ADVERSARIAL"
    adv_params = adv.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert "attack=fgsm" in adv_params and "eps=0.05" in adv_params and "attack" not in clean.SegmentSequence[
        0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    # the adversarial SEG also references the derived series it was computed from; the clean one does not
    assert derived_uid in [r.SeriesInstanceUID for r in adv.ReferencedSeriesSequence]
    assert derived_uid not in [r.SeriesInstanceUID for r in clean.ReferencedSeriesSequence]


def test_derived_series_keeps_frame_of_reference_and_geometry(series_result):
    s, img, o, files = series_result
    by_sop = {d.SOPInstanceUID: d for d in img.meta["datasets"]}
    written = [pydicom.dcmread(f) for f in sorted(Path(files["adversarial"]).iterdir())]
    assert len(written) == 5 and len({d.SeriesInstanceUID for d in written}) == 1
    assert written[0].SeriesInstanceUID != s["series_uid"]
    for ds in written:
        src = by_sop[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SOPInstanceUID not in by_sop
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]  # value 3 kept: the CT IOD needs it
        assert "NOT ORIGINAL" in ds.SeriesDescription and "NOT ORIGINAL" in ds.DerivationDescription
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID and ds.StudyInstanceUID == src.StudyInstanceUID
        np.testing.assert_allclose(_ipp(ds), _ipp(src))
        assert list(ds.ImageOrientationPatient) == list(src.ImageOrientationPatient)
        ref = ds.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == s["series_uid"]
        assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    back = read_image(files["adversarial"])
    np.testing.assert_allclose(back.geometry.affine, img.geometry.affine, atol=1e-5)
    np.testing.assert_allclose(back.array, o.adversarial, atol=0.51)  # stored as integers (slope 1)


@needs_dciodvfy
def test_outputs_pass_the_dicom_validator(series_result):
    _, _, _, files = series_result
    derived = sorted(Path(files["adversarial"]).iterdir())
    for path in (files["segmentation_clean_dicom"], files["segmentation_adversarial_dicom"], derived[0], derived[-1]):
        assert _validator_errors(path) == [], path


def test_single_dicom_slice_with_a_2d_model(tmp_path):
    img = read_image(pydicom_file("CT_small.dcm"))
    o = run_attack(img, load_model("threshold:2", device="cpu"), "fgsm", params={"eps": 0.05}, seed=0, roi=None)
    files = write_outcome(o, tmp_path / "out", command=["test"])
    assert files["segmentation_clean"].endswith(".png")  # the existing raster copy stays
    for key, labels in (("segmentation_clean_dicom", o.seg_clean), ("segmentation_adversarial_dicom", o.seg_adv)):
        np.testing.assert_array_equal(read_dicom_seg(files[key], img), labels)
        seg = pydicom.dcmread(files[key])
        assert seg.FrameOfReferenceUID == img.meta["datasets"][0].FrameOfReferenceUID
        for sop, _, ipp in _frames(seg):
            assert sop == img.meta["datasets"][0].SOPInstanceUID
            np.testing.assert_allclose(ipp, _ipp(img.meta["datasets"][0]), atol=1e-4)


def test_radiograph_without_frame_of_reference(tmp_path):
    """A CR has no patient coordinate system: the SEG frame refers to the image pixel for pixel."""
    img = read_image(pydicom_file("RG1_UNCR.dcm"))
    assert "FrameOfReferenceUID" not in img.meta["datasets"][0]
    labels = np.zeros(img.spatial_shape, dtype=np.uint8)
    labels[100:400, 200:900] = 2
    labels[1500:, :50] = 1
    segs = coded_segments([1, 2], {1: "lung", 2: "nodule"})
    out = write_dicom_seg(labels, tmp_path / "cr_seg.dcm", like=img, segments=segs,
                          algorithm=SegAlgorithm("test", "1"), description="test")
    np.testing.assert_array_equal(read_dicom_seg(out, img), labels)
    assert "FrameOfReferenceUID" not in pydicom.dcmread(out, stop_before_pixels=True)
    assert "PixelSpacing" in img.meta["datasets"][0]  # the source header is left as it was
    if DCIODVFY is not None:  # PatientOrientation (Type 2C without a plane position) is there
        assert _validator_errors(out) == []


def test_a_seg_opened_as_an_image_says_what_it_is(series_result):
    *_, files = series_result
    with pytest.raises(InputFileError, match="is a DICOM SEG .* not an image"):
        read_image(files["segmentation_clean_dicom"])


def test_classifier_on_a_dicom_file_writes_no_seg(tmp_path):
    img = read_image(pydicom_file("MR_small.dcm"))
    o = run_attack(img, load_model("meancls:0", device="cpu"), "fgsm", params={"eps": 0.02}, seed=0)
    files = write_outcome(o, tmp_path / "out", command=["test"])
    assert not any(k.startswith("segmentation") for k in files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adversarial.dcm", "metrics.json", "perturbation.nii.gz", "record.json"]


@pytest.mark.parametrize("values, names, brats, expected", [
    ([0, 1, 2, 4], {1: "NCR/NET", 2: "ED", 4: "ET"}, True,
     [(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Necrosis),
      (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Edema),
      (codes.SCT.MorphologicallyAbnormalStructure, codes.NCIt.EnhancingLesion)]),
    ([1, 2], {1: "liver", 2: "Tumour"}, False,
     [(codes.SCT.Tissue, codes.SCT.Tissue), (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)]),
    ([4], {}, False, [(codes.SCT.Tissue, codes.SCT.Tissue)]),  # BraTS's 4 means nothing without BraTS
])
def test_segment_codes(values, names, brats, expected):
    segs = coded_segments(values, names, brats=brats)
    assert [(s.category, s.type) for s in segs] == expected
    assert [s.label for s in segs] == [names.get(v, str(v)) for v in sorted(set(values) - {0})]


def test_source_without_sop_instance_uid_is_named_and_nothing_is_written(tmp_path):
    s = build_series(tmp_path / "ct", n=3)
    bad = s["files"][1]
    ds = pydicom.dcmread(bad)
    del ds.SOPInstanceUID
    ds.save_as(bad)
    img = read_image(s["folder"])
    o = run_attack(img, load_model("threshold:3", device="cpu"), "fgsm", params={"eps": 0.05}, seed=0, roi=None)
    with pytest.raises(InputFileError, match=f"{bad.name}: has no SOPInstanceUID"):
        write_outcome(o, tmp_path / "out", command=["test"])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(InputFileError, match=f"{bad.name}: has no SOPInstanceUID"):
        write_dicom_seg(o.seg_clean, tmp_path / "seg.dcm", like=img, segments=coded_segments([1, 2], {}),
                        algorithm=SegAlgorithm("test", "1"), description="test")


def test_label_without_a_segment_is_refused(tmp_path, ct_series):
    img = read_image(ct_series["folder"])
    labels = np.zeros(img.spatial_shape, dtype=np.uint8)
    labels[2, :4, :4] = 3
    with pytest.raises(InputFileError, match=r"label values \[3\] have no segment description"):
        write_dicom_seg(labels, tmp_path / "seg.dcm", like=img, segments=coded_segments([1, 2], {}),
                        algorithm=SegAlgorithm("test", "1"), description="test")
    assert not list(tmp_path.glob("*seg*"))


def test_single_image_without_slice_thickness_is_named(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del ds.SliceThickness
    ds.save_as(tmp_path / "mr.dcm")
    img = read_image(tmp_path / "mr.dcm")
    with pytest.raises(InputFileError, match=r"mr\.dcm: has no SliceThickness"):
        write_dicom_seg(np.ones(img.spatial_shape, np.uint8), tmp_path / "seg.dcm", like=img,
                        segments=coded_segments([1], {}), algorithm=SegAlgorithm("test", "1"), description="t")
