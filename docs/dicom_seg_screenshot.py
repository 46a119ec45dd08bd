"""Regenerate docs/images/dicom_seg.png: PACS-ready results read back and overlaid in napari.

    xvfb-run -a -s "-screen 0 1700x1100x24" python docs/dicom_seg_screenshot.py

The glioma phantom's FLAIR is written as a DICOM MR series (one file per axial slice, names
shuffled) and attacked with FGSM (ε = 0.02) through a small FLAIR-threshold segmentation model
defined here (two labels). ``write_outcome`` writes the derived adversarial series and the two
DICOM SEG objects; the picture shows what is *read back from those files*: left, the original
series with ``segmentation_clean.dcm``; right, the derived series with
``segmentation_adversarial.dcm``; the dock lists their DICOM headers (descriptions, segments,
references). Prints the output folder so the files can be opened in a DICOM viewer.
"""

import copy
import random
import sys
import tempfile
import time
from pathlib import Path

import napari
import nibabel as nib
import numpy as np
import pydicom
import torch
from _screenshot import save_window
from napari._qt.qt_event_loop import get_qapp
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from qtpy.QtWidgets import QLabel
from torch import nn

from napari_medadv._qt.compat import grid
from napari_medadv._qt.demo import axial_view, fit_window_to_screen
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image
from napari_medadv.core.io.dicom_seg import read_dicom_seg
from napari_medadv.core.models.base import ModelInfo
from napari_medadv.core.models.registry import load_model, register_scheme
from napari_medadv.core.orientation import DisplayFrame
from napari_medadv.core.pipeline import run_attack, write_outcome

OUT = Path(__file__).parent / "images" / "dicom_seg.png"
LABELS = {"1": "FLAIR-bright lesion", "2": "FLAIR-very-bright lesion"}


def nifti_to_dicom_series(nifti: Path, folder: Path) -> Path:
    """One MR slice file per index along the NIfTI's third axis; pixel (r, c) of slice k is voxel
    (c, r, k), so the DICOM geometry is the NIfTI affine (in LPS) exactly. File names shuffled."""
    img = nib.load(str(nifti))
    vol = img.get_fdata(dtype=np.float32)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # RAS -> LPS
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    slope = float(vol.max()) / 4000.0
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    order = list(range(vol.shape[2]))
    random.Random(0).shuffle(order)
    for n, k in enumerate(order):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "FLAIR (glioma phantom)", 3, k + 1
        ds.PatientName, ds.PatientID = "Phantom^Glioma", "PHANTOM001"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*aff[:3, 0] / spacing[0], *aff[:3, 1] / spacing[1])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in aff[:3, :3] @ [0, 0, k] + aff[:3, 3]]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:g}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", "0"
        pixels = np.rint(vol[:, :, k].T / slope).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        for kw in ("WindowCenter", "WindowWidth"):
            if kw in ds:
                delattr(ds, kw)
        ds.save_as(folder / f"IM{n:04d}", enforce_file_format=True)
    return folder


def _flair_threshold(value, *, weights=None, trust_code=False, info=None):
    """z-scored FLAIR (non-zero voxels) -> label 1 above z = 1.3, label 2 above z = 2.5."""
    conv = nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 4.0, 8.0]).reshape(3, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, -5.2, -15.2]))
    meta = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "output": "softmax",
            "normalization": "zscore-nonzero", "label_values": [0, 1, 2], "label_names": LABELS,
            "name": "FLAIR threshold (docs)"}
    return conv.eval(), ModelInfo.from_dict(meta), "flair-threshold"


def _header_text(path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    segs = "<br>".join(f"&nbsp;&nbsp;{s.SegmentNumber}: {s.SegmentLabel} "
                       f"({s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning}, {s.SegmentDescription})"
                       for s in ds.SegmentSequence)
    refs = "<br>".join(f"&nbsp;&nbsp;{r.SeriesInstanceUID[-12:]} ({len(r.ReferencedInstanceSequence)} instances)"
                       for r in ds.ReferencedSeriesSequence)
    return (f"<b>{path.name}</b> ({ds.SOPClassUID.name}, {ds.SegmentationType}, {ds.NumberOfFrames} frames)<br>"
            f"SeriesDescription: {ds.SeriesDescription}<br>Segments:<br>{segs}<br>"
            f"ReferencedSeriesSequence:<br>{refs}<br>"
            f"FrameOfReferenceUID …{ds.FrameOfReferenceUID[-12:]}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="medadv-seg-"))
    series = nifti_to_dicom_series(sample_data_dir() / "glioma" / "glioma_001" / "glioma_001_flair.nii.gz",
                                   work / "flair_series")
    register_scheme("docsflair", _flair_threshold)
    image = read_image(series)
    outcome = run_attack(image, load_model("docsflair:0", device="cpu"), "fgsm", params={"eps": 0.02}, seed=0)
    files = write_outcome(outcome, work / "result", command=["docs/dicom_seg_screenshot.py"])
    print(f"result folder: {work / 'result'}", file=sys.stderr)

    # everything shown below is read back from the files just written
    clean = read_dicom_seg(files["segmentation_clean_dicom"], image)
    adv = read_dicom_seg(files["segmentation_adversarial_dicom"], image)
    assert np.array_equal(clean, outcome.seg_clean) and np.array_equal(adv, outcome.seg_adv)
    derived = read_image(files["adversarial"])
    assert np.allclose(derived.geometry.affine, image.geometry.affine, atol=1e-4)  # same grid, same frame
    frame = DisplayFrame.of(image.geometry)

    app = get_qapp()
    viewer = napari.Viewer(title="napari-medadv — DICOM SEG read back over the source series")
    fit_window_to_screen(viewer, fraction=0.95)
    lo, hi = np.percentile(image.array[0][image.array[0] > 0], [1, 99.5])
    kw = frame.napari_kwargs()
    viewer.add_image(frame.to_display(image.array[0]), name="original series (DICOM)", contrast_limits=(lo, hi), **kw)
    lab_clean = viewer.add_labels(frame.to_display(clean), name="segmentation_clean.dcm", opacity=0.6, **kw)
    viewer.add_image(frame.to_display(derived.array[0]), name="adversarial series (DERIVED)",
                     contrast_limits=(lo, hi), **kw)
    viewer.add_labels(frame.to_display(adv), name="segmentation_adversarial.dcm", opacity=0.6, **kw)
    for lyr in viewer.layers:
        lyr.name_overlay.visible = True
    axial_view(viewer, lab_clean)
    g = grid(viewer)
    g.enabled = True
    g.stride = 2  # each cell: an image and its SEG
    text = "<br><br>".join(_header_text(Path(files[k]))
                           for k in ("segmentation_clean_dicom", "segmentation_adversarial_dicom"))
    label = QLabel(text)
    label.setWordWrap(True)
    label.setFixedWidth(440)
    viewer.window.add_dock_widget(label, name="DICOM SEG headers (read back)", area="right")
    for _ in range(40):
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    changed = int(np.count_nonzero(clean != adv))
    viewer.status = f"FGSM ε=0.02: {changed} voxels change label between the two SEGs"
    save_window(app, viewer, OUT)
    print(OUT)
    viewer.close()


if __name__ == "__main__":
    main()
