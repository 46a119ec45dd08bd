"""Builders shared by the I/O tests: small DICOM series and BraTS folders in ``tmp_path``,
and lookup of files shipped with installed packages. Nothing is downloaded."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NIBABEL_DATA = Path(data_path)


def pydicom_file(name: str) -> Path:
    """A file shipped with pydicom (or pydicom-data); None-safe for the skip in callers."""
    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(found)


def build_series(
    folder: Path,
    *,
    source: str = "CT_small.dcm",
    n: int = 5,
    spacing: float = 2.5,
    iop: tuple[float, ...] | None = None,
    tilt: tuple[float, float, float] = (0.0, 0.0, 0.0),
    positions: list[float] | None = None,
    series_uid: str | None = None,
    seed: int = 0,
) -> dict:
    """Write ``n`` copies of a pydicom test slice as one series with shuffled file names and
    InstanceNumbers. Slice ``k`` (in position order) has ``k * 7`` added to its stored values
    so tests can tell slices apart. Returns what the test needs to check the result."""
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file(source, download=False))
    base = src.pixel_array.astype(np.int64)
    if iop is not None:
        src.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    iop_arr = np.array([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop_arr[:3], iop_arr[3:])
    ipp0 = np.array([float(v) for v in src.ImagePositionPatient])
    uid = series_uid or generate_uid()
    along = positions if positions is not None else [k * spacing for k in range(n)]
    rng = random.Random(seed)
    names = [f"{rng.getrandbits(40):010x}.dcm" for _ in along]  # unrelated to the order
    instance_numbers = list(range(1, len(along) + 1))
    rng.shuffle(instance_numbers)
    ipps = []
    for k, (d, name) in enumerate(zip(along, names, strict=True)):
        ds = copy.deepcopy(src)
        ipp = ipp0 + d * normal + k * np.asarray(tilt)
        ipps.append(ipp)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.InstanceNumber = instance_numbers[k]
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pixels = (base + 7 * k).astype(src.pixel_array.dtype)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
    return {
        "folder": folder,
        "files": [folder / name for name in names],
        "ipps": np.array(ipps),
        "iop": iop_arr,
        "pixel_spacing": np.array([float(v) for v in src.PixelSpacing]),
        "base": base,
        "series_uid": uid,
        "slope": float(src.get("RescaleSlope", 1)),
        "intercept": float(src.get("RescaleIntercept", 0)),
    }


def write_brats(
    folder: Path,
    *,
    names=("t1", "t1ce", "t2", "flair", "seg"),
    sep="_",
    seg_values=(0, 1, 2, 4),
    shape=(6, 7, 5),
    affine=None,
) -> dict:
    """A tiny BraTS-style case: channel c holds ``c * 100 + ramp``; seg cycles through
    ``seg_values``."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
    affine = affine.copy()
    affine[:3, 3] = (10.0, 20.0, -5.0)
    ramp = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    volumes, seg = {}, None
    for c, name in enumerate(names):
        path = folder / f"case001{sep}{name}.nii.gz"
        if name == "seg":
            seg = np.resize(np.array(seg_values, dtype=np.int16), shape).astype(np.int16)
            nib.save(nib.Nifti1Image(seg, affine), path)
        else:
            volumes[name] = (ramp + 100 * c).astype(np.float32)
            nib.save(nib.Nifti1Image(volumes[name], affine), path)
    return {"folder": folder, "volumes": volumes, "seg": seg, "affine": affine}
