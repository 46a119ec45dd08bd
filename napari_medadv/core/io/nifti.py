"""NIfTI volumes and BraTS case folders (nibabel).

The array keeps nibabel's voxel order ``(i, j, k)`` and the affine is ``img.affine``
(sform if set, else qform), which is already RAS+. A 4-D file is read as channels: its 4th
axis becomes the channel axis.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ..brats import BRATS_2023_NAMES, BRATS_CHANNELS, BRATS_LABELS
from ..errors import InputFileError
from ._files import NIFTI_SUFFIXES, atomic_file, reading, require_finite, require_plausible_size, suffix_of
from .geometry import Geometry, onto_grid
from .types import ImageData

_BRATS_FILE = re.compile(
    r"^(?P<case>.+?)[_-](?P<mod>t1ce|t1n|t1c|t1|t2w|t2f|t2|flair|seg)\.nii(?:\.gz)?$",
    re.IGNORECASE,
)
NIFTI_INTENT_LABEL = 1002


def _load(path: Path) -> nib.Nifti1Image:
    with reading(path, "NIfTI header"):
        img = nib.load(str(path))
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputFileError(path, f"not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


def _voxels(img, path: Path) -> np.ndarray:
    _require_plausible(img, path)
    with reading(path, "NIfTI voxel data"):
        data = np.asarray(img.dataobj, dtype=np.float32)
    if data.dtype != np.float32:  # pragma: no cover - asarray honours dtype
        data = data.astype(np.float32)
    return data


def read_nifti(path: Path) -> ImageData:
    """Read a 2-D, 3-D or 4-D NIfTI file (4-D: the 4th axis is channels)."""
    img = _load(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) > 4:
        raise InputFileError(
            path, f"{len(shape)}-D NIfTI (shape {shape}) is not supported; expected 2-D, 3-D or 4-D"
        )
    if len(shape) < 2:
        raise InputFileError(path, f"{len(shape)}-D NIfTI (shape {shape}) is not an image")
    data = _voxels(img, path)
    require_finite(data, path)
    if data.ndim == 4:
        array = np.ascontiguousarray(np.moveaxis(data, -1, 0))
        names = [f"channel{c}" for c in range(array.shape[0])]
    else:
        array = data[None]
        names = ["image"]
    names = channel_names_for(path, names)
    geometry = Geometry(img.affine, shape=array.shape[1:])
    meta = {
        "nifti_header": img.header.copy(),
        "source_files": [path],
        "file_dtype": str(img.get_data_dtype()),
        "notes": [],
    }
    return ImageData(array, geometry, names, path, "nifti", meta=meta)


def _require_plausible(img, path: Path) -> None:
    """Check the header's declared voxel data against the file size and free memory before reading."""
    header = img.header
    try:
        offset = int(header.get_data_offset())
        itemsize = np.dtype(header.get_data_dtype()).itemsize
    except Exception:  # noqa: BLE001 - a header nibabel parsed but cannot describe: let reading fail
        return
    require_plausible_size(path, img.shape, itemsize, data_offset=offset,
                           compressed=suffix_of(path) == ".nii.gz")


#: single-contrast file names: BIDS suffixes (sub-01_T1w), BraTS (case_t1ce, case-t2f), plain words
_CONTRAST_IN_NAME = re.compile(
    r"(?:^|[_\-.])(t1ce|t1gd|t1c|t1n|t1w|t1|t2w|t2f|t2|flair)$", re.IGNORECASE)


def channel_names_for(path: Path, default: list[str]) -> list[str]:
    """Channel names of a NIfTI file: a JSON sidecar's ``channel_names`` (``scan.json`` beside
    ``scan.nii.gz``), else the contrast in a single-channel file's name (``sub-01_T1w``,
    ``case_flair``), else ``default``. A sidecar with the wrong count is an error naming it."""
    import json

    side = path.with_name(path.name[: -len(suffix_of(path))] + ".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(side, f"cannot read the image's JSON sidecar ({exc})") from None
        names = meta.get("channel_names") if isinstance(meta, dict) else None
        if names is not None:
            if not isinstance(names, list) or len(names) != len(default) or not all(isinstance(n, str) for n in names):
                raise InputFileError(side, f"channel_names must list {len(default)} name(s), one per channel "
                                           f"of {path.name}; got {names!r}")
            return list(names)
    if len(default) == 1:
        m = _CONTRAST_IN_NAME.search(path.name[: -len(suffix_of(path))])
        if m:
            return [m.group(1)]
    return default


def read_nifti_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer label map and its affine. A trailing length-1 4th axis is dropped."""
    img = _load(path)
    data = _voxels(img, path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputFileError(path, f"label map must be 2-D or 3-D, got shape {data.shape}")
    return as_label_array(data, path), img.affine


def as_label_array(data: np.ndarray, path: Path) -> np.ndarray:
    """Validate that ``data`` holds non-negative integers and return it as ``int32``."""
    require_finite(data, path)
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise InputFileError(path, "label map holds non-integer values")
    if data.size and data.min() < 0:
        raise InputFileError(path, f"label map holds negative values (min {data.min():g})")
    if data.size and data.max() > np.iinfo(np.int32).max:
        raise InputFileError(path, "label map values exceed the int32 range")
    return data.astype(np.int32)


# -- BraTS ---------------------------------------------------------------------------------
def find_brats_files(folder: Path) -> dict[str, Path] | None:
    """Map channel name (and ``"seg"``) → file for a BraTS case folder, or None if the folder
    does not look like one. Raises ``InputFileError`` for a folder that is almost one."""
    found: dict[str, list[Path]] = {}
    cases = set()
    for f in sorted(folder.iterdir()):
        m = _BRATS_FILE.match(f.name)
        if not m or not f.is_file():
            continue
        mod = m.group("mod").lower()
        found.setdefault(BRATS_2023_NAMES.get(mod, mod), []).append(f)
        cases.add(m.group("case"))
    if not any(ch in found for ch in BRATS_CHANNELS):
        return None
    missing = [ch for ch in BRATS_CHANNELS if ch not in found]
    if missing:
        raise InputFileError(
            folder,
            f"BraTS case folder lacks {', '.join(missing)} "
            "(expected files ending _t1, _t1ce, _t2, _flair [, _seg] .nii or .nii.gz)",
        )
    dup = {ch: fs for ch, fs in found.items() if len(fs) > 1}
    if dup or len(cases) > 1:
        listing = "; ".join(f"{ch}: {', '.join(f.name for f in fs)}" for ch, fs in found.items())
        raise InputFileError(
            folder, f"more than one BraTS case or duplicate modalities in the folder ({listing})"
        )
    return {ch: fs[0] for ch, fs in found.items()}


def read_brats(folder: Path, files: dict[str, Path]) -> ImageData:
    """Stack t1, t1ce, t2, flair into 4 channels; read ``_seg`` into ``labels``.

    Label convention: the classic {0, 1, 2, 4} (4 = enhancing tumour). BraTS 2023 files
    mark enhancing tumour 3; such a map (3 present, 4 absent) is converted 3 → 4 and the
    conversion is recorded in ``meta["label_remap"]`` and ``meta["notes"]``.
    """
    volumes = []
    first: Geometry | None = None
    header = None
    for ch in BRATS_CHANNELS:
        path = files[ch]
        img = _load(path)
        if len(img.shape) != 3:
            raise InputFileError(path, f"BraTS modality must be 3-D, got shape {img.shape}")
        geometry = Geometry(img.affine, shape=img.shape)
        if first is None:
            first, header = geometry, img.header.copy()
        elif not first.same_grid(geometry):
            raise InputFileError(
                path,
                f"does not share the grid of {files[BRATS_CHANNELS[0]].name}: "
                + first.describe_difference(geometry),
            )
        data = _voxels(img, path)
        require_finite(data, path)
        volumes.append(data)
    array = np.stack(volumes)
    meta: dict = {
        "nifti_header": header,
        "brats_files": dict(files),
        "source_files": [folder, *files.values()],
        "notes": [],
    }
    labels = None
    if "seg" in files:
        labels, remap = _read_brats_seg(files["seg"], first)
        if remap:
            meta["label_remap"] = remap
            meta["notes"].append(
                f"{files['seg'].name}: BraTS 2023 labels (ET = 3) converted to the classic "
                "convention (ET = 4)"
            )
    return ImageData(array, first, list(BRATS_CHANNELS), folder, "brats", labels=labels, meta=meta)


def _read_brats_seg(path: Path, grid: Geometry) -> tuple[np.ndarray, dict[int, int]]:
    labels, affine = read_nifti_labels(path)
    seg_grid = Geometry(affine, shape=labels.shape) if labels.ndim == 3 else None
    moved = None if seg_grid is None or grid.same_grid(seg_grid) else onto_grid(labels, affine, grid)
    if moved is not None:  # the same voxels stored in another orientation (e.g. LAS over RAS)
        labels, seg_grid = moved, grid
    if seg_grid is None or not grid.same_grid(seg_grid):
        why = grid.describe_difference(seg_grid) if seg_grid else f"shape {labels.shape}"
        raise InputFileError(path, f"segmentation does not match the image grid: {why}")
    values = set(np.unique(labels).tolist())
    remap: dict[int, int] = {}
    if 3 in values and 4 not in values:
        labels[labels == 3] = 4
        values = (values - {3}) | {4}
        remap = {3: 4}
    bad = sorted(values - set(BRATS_LABELS))
    if bad:
        raise InputFileError(
            path,
            f"unexpected BraTS label values {bad}; expected {{0, 1, 2, 4}} "
            "(or {0, 1, 2, 3} in the BraTS 2023 convention)",
        )
    return labels, remap


# -- writers -------------------------------------------------------------------------------
def _header_like(like: ImageData):
    header = like.meta.get("nifti_header")
    if header is None:
        return nib.Nifti1Header()
    # a copy, in native byte order (the source may be big endian)
    return header.as_byteswapped(nib.volumeutils.native_code)


def write_nifti(array: np.ndarray, path: Path, like: ImageData, description: str) -> Path:
    """Float32 NIfTI on ``like``'s affine and (a copy of) its header; 4-D if C > 1."""
    data = np.moveaxis(array, 0, -1) if array.shape[0] > 1 else array[0]
    header = _header_like(like)
    img = _make_image(data.astype(np.float32, copy=False), like, header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    _save(img, path)
    return path


def write_nifti_labels(labels: np.ndarray, path: Path, like: ImageData) -> Path:
    """uint8 (values ≤ 255) or int16 label map with NIfTI intent 'label'."""
    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.int16
    header = _header_like(like)
    img = _make_image(labels.astype(dtype), like, header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("label")
    img.header["descrip"] = b"label map (napari-medadv)"
    _save(img, path)
    return path


def _make_image(data: np.ndarray, like: ImageData, header) -> nib.spatialimages.SpatialImage:
    affine = like.geometry.affine
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(data, affine, header=header)
    # Keep the source's sform/qform codes (nibabel resets them to 'aligned' otherwise).
    if like.meta.get("nifti_header") is not None:
        src = like.meta["nifti_header"]
        img.set_sform(affine, int(src["sform_code"]))
        img.set_qform(affine, int(src["qform_code"]))
    return img


def _save(img, path: Path) -> None:
    if suffix_of(path) not in NIFTI_SUFFIXES:  # pragma: no cover - dispatch guarantees it
        raise InputFileError(path, "NIfTI output must end in .nii or .nii.gz")
    with atomic_file(path) as tmp:
        nib.save(img, str(tmp))
