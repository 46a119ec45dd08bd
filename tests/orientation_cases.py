"""The same anatomy stored in several orientations, for the orientation tests (core and GUI).

The anatomy is the tumour label map of the shipped ``glioma_001`` (stored RAS, 2.5 mm,
tumour in the patient's left hemisphere). Each case holds the same voxels, re-indexed and
with the affine changed to match, as ``dcm2niix`` and scanner exports produce: LAS (x
flipped), LPS, axes permuted (PSR), an oblique acquisition (resampled, nearest neighbour, on
a grid rotated 20° about z and 10° about x) and an axial DICOM series (LPS, slice-first).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image

CASE = sample_data_dir() / "glioma" / "glioma_001"
NIFTI_CASES = ("RAS", "LAS", "LPS", "PSR", "oblique")
CASES = (*NIFTI_CASES, "DICOM")


def glioma_labels() -> tuple[np.ndarray, np.ndarray]:
    """``(labels, affine)`` of glioma_001 as shipped (RAS)."""
    img = read_image(CASE)
    return img.labels.astype(np.float32), img.geometry.affine.copy()


def stored_as(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with axis codes ``codes`` (e.g. ``"LAS"``), nibabel's recipe."""
    t = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes)))
    return np.ascontiguousarray(apply_orientation(array, t)), affine @ inv_ornt_aff(t, array.shape)


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.deg2rad(z_deg), np.deg2rad(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def oblique(array: np.ndarray, affine: np.ndarray, z_deg=20.0, x_deg=10.0) -> tuple[np.ndarray, np.ndarray]:
    """The anatomy resampled (nearest neighbour) onto a grid rotated about the volume centre."""
    from scipy.ndimage import affine_transform

    centre = affine[:3, :3] @ ((np.array(array.shape) - 1) / 2) + affine[:3, 3]
    rot = np.eye(4)
    rot[:3, :3] = rotation(z_deg, x_deg)
    rot[:3, 3] = centre - rot[:3, :3] @ centre
    new = rot @ affine
    m = np.linalg.inv(affine) @ new  # new index -> old index
    out = affine_transform(array, m[:3, :3], offset=m[:3, 3], order=0, cval=0.0)
    return out.astype(np.float32), new


def write_axial_dicom(folder: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """An axial DICOM series (LPS, one file per slice, rows P, columns L) of an axis-aligned
    RAS volume with a positive diagonal affine. Values are stored as they are (integers)."""
    assert np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3])) and np.all(np.diag(affine)[:3] > 0)
    folder.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = np.diag(affine)[:3]
    nx, ny, nz = array.shape
    x0 = -(affine[0, 3] + sx * (nx - 1))  # LPS x of column 0 (the patient's rightmost voxel)
    y0 = -(affine[1, 3] + sy * (ny - 1))  # LPS y of row 0 (the most anterior voxel)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    today = _dt.date.today().strftime("%Y%m%d")
    for k in range(nz):
        pixels = np.ascontiguousarray(array[::-1, ::-1, k].T).astype(np.uint16)  # [row, col]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID, ds.StudyDate = "Phantom^Glioma", "glioma_001", today
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(x0), float(y0), float(affine[2, 3] + sz * k)]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels.tobytes()
        pydicom.dcmwrite(str(folder / f"slice{k:03d}.dcm"), ds, enforce_file_format=True)
    return folder


def write_cases(folder: Path) -> dict[str, Path]:
    """Every case of :data:`CASES` written under ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, affine = glioma_labels()
    out = {}
    for name in NIFTI_CASES:
        if name == "oblique":
            arr, aff = oblique(labels, affine)
        else:
            arr, aff = stored_as(labels, affine, name)
        path = folder / f"anatomy_{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, aff), str(path))
        out[name] = path
    out["DICOM"] = write_axial_dicom(folder / "anatomy_dicom", labels, affine)
    return out


def world_centroid(points_world: np.ndarray) -> np.ndarray:
    return np.asarray(points_world, dtype=np.float64).mean(0)
