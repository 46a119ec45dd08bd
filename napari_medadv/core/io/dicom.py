"""DICOM: series folders → volumes, single files → 2-D images, and derived-image writers.

Reading
-------
* Values are the Modality LUT output (``stored * RescaleSlope + RescaleIntercept``, e.g.
  Hounsfield units), per slice.
* ``MONOCHROME1`` (low values shown bright, common for CR/DX) is inverted so that bright
  means dense, as in ``MONOCHROME2``: ``value = lo + hi - rescaled``, where ``[lo, hi]`` is
  the rescaled range of the stored bits. The window (WindowCenter/Width) is converted the
  same way and kept in ``meta["window"]`` as ``(center, width)`` in array units.
* Series: slices sorted by ``ImagePositionPatient`` projected on the slice normal
  ``row_cosine × column_cosine`` (not by file name or InstanceNumber). Array axes are
  ``(slice, row, column)``; the affine columns are the slice step ``(IPP_last − IPP_first)
  / (n − 1)`` (so gantry tilt gives a sheared but exact affine), ``column_cosine ×
  PixelSpacing[0]`` and ``row_cosine × PixelSpacing[1]``; the translation is the first
  slice's IPP. It is built in DICOM LPS+ and converted to RAS+.

Writing
-------
A written DICOM never passes for its source: every file gets a new SOPInstanceUID and the
output a new SeriesInstanceUID; with ``derived=True`` (an attack result) also
``ImageType = DERIVED\\SECONDARY`` (the source's values from the third on kept, e.g. AXIAL),
``DerivationDescription``, ``SeriesDescription`` and ``ImageComments`` carrying the description,
a ``SourceImageSequence`` pointing at the source instance and a ``ReferencedSeriesSequence`` at
its series. The rest of the source header stays (Study, Frame of Reference, each slice's
ImagePositionPatient/ImageOrientationPatient), so the derived series overlays the original in
any viewer; label maps on that grid become DICOM SEG objects in :mod:`.dicom_seg`. Values go back through the inverse rescale (and inversion for
MONOCHROME1) into the source's stored integer type, so a viewer shows them like the source.
Output is always Explicit VR Little Endian (uncompressed).
"""

from __future__ import annotations

import copy
import datetime as _dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from ..errors import InputFileError
from ._files import DICOM_SUFFIXES, atomic_file, atomic_folder, reading, require_finite, suffix_of
from .geometry import LPS_TO_RAS, Geometry
from .types import ImageData

#: Tags whose values would be wrong for new pixel data.
_STALE_PIXEL_TAGS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
)


def is_dicom_file(path: Path) -> bool:
    """``DICM`` magic at byte 128, or a DICOM suffix (for files without the preamble)."""
    if suffix_of(path) in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# -- stored value <-> array value ----------------------------------------------------------
@dataclass(frozen=True)
class _Scaling:
    """Maps stored integers to array values and back for one image/slice."""

    slope: float
    intercept: float
    invert: bool
    stored_lo: int
    stored_hi: int
    dtype: np.dtype

    @classmethod
    def of(cls, ds: Dataset, path: Path) -> _Scaling:
        with reading(path, "DICOM rescale / pixel attributes"):
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            bits_alloc = int(ds.BitsAllocated)
            bits_stored = int(ds.get("BitsStored", bits_alloc))
            signed = int(ds.get("PixelRepresentation", 0)) == 1
        if bits_alloc not in (8, 16, 32):
            raise InputFileError(path, f"BitsAllocated {bits_alloc} is not supported")
        if signed:
            lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
        else:
            lo, hi = 0, 2**bits_stored - 1
        dtype = np.dtype(f"{'i' if signed else 'u'}{bits_alloc // 8}").newbyteorder("<")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        return cls(slope, intercept, photometric == "MONOCHROME1", lo, hi, dtype)

    @property
    def value_range(self) -> tuple[float, float]:
        a = self.stored_lo * self.slope + self.intercept
        b = self.stored_hi * self.slope + self.intercept
        return (min(a, b), max(a, b))

    def to_values(self, stored: np.ndarray) -> np.ndarray:
        values = stored.astype(np.float64) * self.slope + self.intercept
        if self.invert:
            lo, hi = self.value_range
            values = (lo + hi) - values
        return values.astype(np.float32)

    def window_to_values(self, center: float) -> float:
        if self.invert:
            lo, hi = self.value_range
            return (lo + hi) - center
        return center

    def to_stored(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Stored integers (source dtype, little endian) and how many were clipped."""
        v = values.astype(np.float64)
        if self.invert:
            lo, hi = self.value_range
            v = (lo + hi) - v
        stored = np.rint((v - self.intercept) / self.slope)
        clipped = int(np.count_nonzero((stored < self.stored_lo) | (stored > self.stored_hi)))
        stored = np.clip(stored, self.stored_lo, self.stored_hi)
        return stored.astype(self.dtype), clipped


# -- reading ------------------------------------------------------------------------------
def _dcmread(path: Path, *, header_only: bool = False) -> Dataset:
    with reading(path, "DICOM file"):
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)


def _require_decodable(ds: Dataset, path: Path) -> None:
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if tsyntax is None or not tsyntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise InputFileError(
            path,
            f"unsupported transfer syntax {tsyntax.name} ({tsyntax}): pydicom cannot decode it",
        ) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies)
        raise InputFileError(
            path,
            f"pixel data is compressed with {tsyntax.name} ({tsyntax}) and no decoder is "
            f"installed (any of: {options})",
        )


#: Segmentation Storage: a DICOM SEG is a label map over another series, not an image
_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _require_single_gray_image(ds: Dataset, path: Path) -> None:
    if ds.get("SOPClassUID") == _SEG_STORAGE:
        raise InputFileError(
            path,
            "is a DICOM SEG (a segmentation over the series it references), not an image; read "
            "it onto that series with napari_medadv.core.io.dicom_seg.read_dicom_seg",
        )
    if "PixelData" not in ds:
        kind = ds.get("SOPClassUID")
        kind = getattr(kind, "name", kind) or "unknown SOP class"
        raise InputFileError(path, f"holds no image pixel data ({kind})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputFileError(
            path, f"multi-frame DICOM ({frames} frames) is not supported; use single-frame files"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputFileError(
            path, f"colour DICOM ({photometric or 'no PhotometricInterpretation'}) is not supported"
        )
    if "ModalityLUTSequence" in ds:
        raise InputFileError(
            path, "a Modality LUT Sequence is not supported (only Rescale Slope/Intercept)"
        )


def _stored_pixels(ds: Dataset, path: Path) -> np.ndarray:
    _require_single_gray_image(ds, path)
    _require_decodable(ds, path)
    with reading(path, "DICOM pixel data"):
        pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise InputFileError(
            path, f"expected one 2-D frame, got pixel array of shape {pixels.shape}"
        )
    del ds.PixelData  # keep only the header in meta; the decoded cache goes with it
    return pixels


def _first_float(value) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)


def _window(ds: Dataset, scaling: _Scaling) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c, w = _first_float(center), _first_float(width)
    except (TypeError, ValueError, IndexError):
        return None
    if w <= 0:
        return None
    return (scaling.window_to_values(c), w)


def _positive_pair(value) -> tuple[float, float] | None:
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        return None
    return pair if min(pair) > 0 else None


def _spacing_2d(ds: Dataset) -> tuple[tuple[float, float], str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(ds.get(keyword))
        if pair is not None:
            return pair, keyword
    return (1.0, 1.0), "default"


def _common_meta(ds: Dataset, scaling: _Scaling) -> dict:
    return {
        "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
        "inverted": scaling.invert,
        "bit_depth": int(ds.get("BitsStored", ds.BitsAllocated)),
        "stored_range": scaling.value_range,
        "stored_step": abs(scaling.slope),
        "window": _window(ds, scaling),
        "modality": str(ds.get("Modality", "")),
        "notes": [],
    }


def read_dicom_file(path: Path) -> ImageData:
    """One single-frame grayscale DICOM as a 2-D image (rows, columns)."""
    ds = _dcmread(path)
    stored = _stored_pixels(ds, path)
    scaling = _Scaling.of(ds, path)
    array = scaling.to_values(stored)[None]
    require_finite(array, path, "pixels")
    spacing, spacing_source = _spacing_2d(ds)
    meta = _common_meta(ds, scaling)
    meta.update(datasets=[ds], source_files=[path], spacing_source=spacing_source)
    if spacing_source == "default":
        meta["notes"].append(f"{path.name}: no usable PixelSpacing/ImagerPixelSpacing; using 1 mm")
    if scaling.invert:
        meta["notes"].append(f"{path.name}: MONOCHROME1 inverted so that bright = dense")
    geometry = Geometry.from_spacing(spacing, shape=array.shape[1:])
    return ImageData(array, geometry, ["image"], path, "dicom", meta=meta)


def find_dicom_files(folder: Path) -> list[Path]:
    return [
        f
        for f in sorted(folder.iterdir())
        if f.is_file() and not f.name.startswith(".") and is_dicom_file(f)
    ]


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InputFileError(
            path, f"missing or malformed {keyword}; cannot place the slice in a volume"
        )
    return out


def _describe_series(uid: str, members: list[tuple[Path, Dataset]]) -> str:
    ds = members[0][1]
    desc = str(ds.get("SeriesDescription", "")).strip() or "no description"
    modality = ds.get("Modality", "?")
    return f"{uid or '<no SeriesInstanceUID>'} ({desc}, {modality}, {len(members)} files)"


def read_dicom_series(folder: Path, files: list[Path], series_uid: str | None = None) -> ImageData:
    """A folder of single-frame slices as a volume ``(1, slice, row, column)``."""
    headers: list[tuple[Path, Dataset]] = []
    for f in files:
        ds = _dcmread(f, header_only=True)
        if ds.get("SOPClassUID") == MediaStorageDirectoryStorage or "Rows" not in ds:
            continue  # DICOMDIR, structure sets, reports: not image slices
        headers.append((f, ds))
    if not headers:
        raise InputFileError(
            folder, "holds DICOM files but no images (DICOMDIR? subfolders are not searched)"
        )

    by_series: dict[str, list[tuple[Path, Dataset]]] = {}
    for f, ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            listing = "; ".join(_describe_series(u, m) for u, m in by_series.items())
            raise InputFileError(folder, f"no series {series_uid} here; found: {listing}")
        chosen = by_series[series_uid]
    elif len(by_series) > 1:
        listing = "; ".join(_describe_series(u, m) for u, m in by_series.items())
        raise InputFileError(
            folder,
            f"holds {len(by_series)} DICOM series; choose one by SeriesInstanceUID "
            f"(series_uid=...): {listing}",
        )
    else:
        ((series_uid, chosen),) = by_series.items()

    affine_lps, order, positions = _series_affine(folder, chosen)
    chosen = [chosen[i] for i in order]

    slices, datasets, scalings = [], [], []
    for f, _ in chosen:
        ds = _dcmread(f)
        stored = _stored_pixels(ds, f)
        if slices and stored.shape != slices[0].shape:
            raise InputFileError(f, f"slice size {stored.shape} differs from {slices[0].shape}")
        scaling = _Scaling.of(ds, f)
        slices.append(scaling.to_values(stored))
        datasets.append(ds)
        scalings.append(scaling)
    array = np.stack(slices)[None]
    require_finite(array, folder)

    meta = _common_meta(datasets[0], scalings[0])
    meta.update(
        datasets=datasets,
        series_uid=series_uid,
        series_files=[f for f, _ in chosen],
        slice_positions=positions,
        source_files=[folder, *(f for f, _ in chosen)],
    )
    if len(chosen) == 1:
        meta["notes"].append("single-slice series: slice spacing taken from the header")
    geometry = Geometry(LPS_TO_RAS @ affine_lps, shape=array.shape[1:])
    return ImageData(array, geometry, ["image"], folder, "dicom-series", meta=meta)


def _series_affine(
    folder: Path, members: list[tuple[Path, Dataset]]
) -> tuple[np.ndarray, list[int], list[float]]:
    """LPS affine for ``(slice, row, column)`` indices, the slice order and the positions."""
    f0, ds0 = members[0]
    iop = _floats(ds0, "ImageOrientationPatient", 6, f0)
    spacing = _floats(ds0, "PixelSpacing", 2, f0)
    if min(spacing) <= 0:
        raise InputFileError(f0, f"PixelSpacing {spacing.tolist()} is not positive")
    size = (int(ds0.Rows), int(ds0.Columns))
    ipps = []
    for f, ds in members:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
            raise InputFileError(
                f, f"ImageOrientationPatient differs from {f0.name}: not one volume"
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2, f), spacing, rtol=1e-4):
            raise InputFileError(f, f"PixelSpacing differs from {f0.name}: not one volume")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise InputFileError(f, f"image size differs from {f0.name}: not one volume")
        ipps.append(_floats(ds, "ImagePositionPatient", 3, f))
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise InputFileError(f0, f"ImageOrientationPatient {iop.tolist()} is not orthonormal")
    ipps = np.array(ipps)
    along = ipps @ normal
    order = np.argsort(along, kind="stable").tolist()
    ipps, along = ipps[order], along[order]
    n = len(order)
    if n > 1:
        gaps = np.diff(along)
        if np.min(gaps) < 1e-3:
            dup = [members[order[i + 1]][0].name for i in np.flatnonzero(gaps < 1e-3)]
            raise InputFileError(
                folder,
                f"{len(dup)} slice(s) share a position with another (e.g. {dup[0]}): several "
                "echoes, time points or acquisitions in one series are not supported",
            )
        step = (ipps[-1] - ipps[0]) / (n - 1)
        expected = ipps[0] + np.outer(np.arange(n), step)
        deviation = np.max(np.linalg.norm(ipps - expected, axis=1))
        if deviation > 0.01 * np.linalg.norm(step) + 1e-3:
            raise InputFileError(
                folder,
                f"slice spacing is not uniform (gaps {gaps.min():.4g} to {gaps.max():.4g} mm): "
                "missing slices? A volume needs evenly spaced slices",
            )
    else:
        thickness = 1.0
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                value = float(ds0.get(keyword) or 0)
            except (TypeError, ValueError):
                value = 0.0
            if value > 0:
                thickness = value
                break
        step = normal * thickness
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * spacing[0]
    affine[:3, 2] = row_cos * spacing[1]
    affine[:3, 3] = ipps[0]
    return affine, order, along.tolist()


# -- writing -------------------------------------------------------------------------------
#: what a derived image (or SEG) must be able to name of its source
_REFERENCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def require_referable(src: Dataset, source_path: Path) -> None:
    """Refuse a source that a derived image or DICOM SEG could not point back to."""
    missing = [kw for kw in _REFERENCE_UIDS if not str(src.get(kw, "")).strip()]
    if missing:
        raise InputFileError(
            source_path, f"has no {', '.join(missing)}: results derived from it cannot reference it"
        )


def _reference_source(ds: Dataset, src: Dataset, source_path: Path) -> None:
    """``SourceImageSequence`` (purpose: source image for image processing operation, DCM
    121322) and ``ReferencedSeriesSequence`` pointing at the source instance and its series."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    ref.PurposeOfReferenceCodeSequence = [purpose]
    ds.SourceImageSequence = [ref]
    instance = Dataset()
    instance.ReferencedSOPClassUID = src.SOPClassUID
    instance.ReferencedSOPInstanceUID = src.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ReferencedInstanceSequence = [instance]
    ds.ReferencedSeriesSequence = [series]


def _derive(
    src: Dataset,
    values: np.ndarray,
    *,
    series_uid: str,
    description: str,
    derived: bool,
    path: Path,
    source_path: Path,
) -> tuple[Dataset, int]:
    if derived:
        require_referable(src, source_path)
    scaling = _Scaling.of(src, path)
    stored, clipped = scaling.to_stored(values)
    ds = copy.deepcopy(src)
    if not description.isascii():
        ds.decode()  # every text value to str with the source's character set ...
        ds.SpecificCharacterSet = "ISO_IR 192"  # ... then written back as UTF-8
    for keyword in _STALE_PIXEL_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)

    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SeriesDescription = description[:64]
    if derived:
        # values 3+ (AXIAL, LOCALIZER ...) stay: the CT/MR IODs require value 3
        ds.ImageType = ["DERIVED", "SECONDARY", *list(src.get("ImageType") or [])[2:]]
        ds.DerivationDescription = description[:1024]
        ds.ImageComments = description
        _reference_source(ds, src, source_path)

    meta = Dataset()
    if hasattr(src, "file_meta"):
        meta.update(src.file_meta)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds.file_meta = pydicom.dataset.FileMetaDataset(meta)
    return ds, clipped


def _save(ds: Dataset, path: Path) -> None:
    # dcmwrite (unlike Dataset.save_as) also re-encodes datasets read as big endian
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True, implicit_vr=False, little_endian=True)


def _warn_clipped(clipped: int, path: Path) -> None:
    if clipped:
        warnings.warn(
            f"{path}: {clipped} value(s) fell outside the source's stored range and were clipped",
            stacklevel=4,
        )


def write_dicom_file(
    array: np.ndarray, path: Path, like: ImageData, description: str, derived: bool
) -> Path:
    """A derived single-frame DICOM from ``like``'s (2-D) source dataset."""
    if like.kind != "dicom" or array.shape[0] != 1:
        raise InputFileError(
            path, "a .dcm file can only be derived from a single-image DICOM source (1 channel)"
        )
    src = like.meta["datasets"][0]
    ds, clipped = _derive(
        src,
        array[0],
        series_uid=generate_uid(),
        description=description,
        derived=derived,
        path=path,
        source_path=like.source,
    )
    with atomic_file(path) as tmp:
        _save(ds, tmp)
    _warn_clipped(clipped, path)
    return path


def write_dicom_series(
    array: np.ndarray, folder: Path, like: ImageData, description: str, derived: bool
) -> Path:
    """One derived file per slice in a new folder (which must not exist or be empty)."""
    datasets = like.meta["datasets"]
    if like.kind != "dicom-series" or array.shape[0] != 1 or array.shape[1] != len(datasets):
        raise InputFileError(
            folder, "a DICOM series can only be derived from a DICOM series source"
        )
    series_uid = generate_uid()
    total_clipped = 0
    files = like.meta.get("series_files") or [like.source] * len(datasets)
    with atomic_folder(folder) as tmp:
        for k, src in enumerate(datasets):
            ds, clipped = _derive(
                src,
                array[0, k],
                series_uid=series_uid,
                description=description,
                derived=derived,
                path=folder,
                source_path=files[k],
            )
            total_clipped += clipped
            _save(ds, tmp / f"slice{k:04d}.dcm")
    _warn_clipped(total_clipped, folder)
    return folder
