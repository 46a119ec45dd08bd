"""``read_image`` / ``read_labels`` / ``write_image`` / ``write_labels``: format dispatch.

Every bad input raises :class:`~napari_medadv.core.errors.InputFileError` naming the file.
Every write goes to a hidden temporary name in the target folder and is renamed at the end,
and never replaces (or writes inside a folder of) the image's own source files.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from ._files import (
    DICOM_SUFFIXES,
    JPEG_SUFFIXES,
    NIFTI_SUFFIXES,
    PNG_SUFFIXES,
    TIFF_SUFFIXES,
    refuse_overwriting_sources,
    require_exists,
    suffix_of,
)
from .dicom import (
    find_dicom_files,
    is_dicom_file,
    read_dicom_file,
    read_dicom_series,
    write_dicom_file,
    write_dicom_series,
)
from .geometry import Geometry, onto_grid
from .nifti import (
    as_label_array,
    find_brats_files,
    read_brats,
    read_nifti,
    read_nifti_labels,
    write_nifti,
    write_nifti_labels,
)
from .raster import read_raster, read_raster_labels, write_png, write_raster_labels, write_tiff
from .types import ImageData

DEFAULT_DESCRIPTION = "adversarially perturbed image (napari-medadv)"
READABLE = (
    "NIfTI (.nii, .nii.gz), DICOM (file or series folder), BraTS case folder, PNG, JPEG, TIFF"
)
WRITABLE = "NIfTI (.nii, .nii.gz), PNG, TIFF, DICOM (.dcm, or a folder for a series)"


def _path(path: str | PathLike) -> Path:
    return Path(path).expanduser()


# -- reading ------------------------------------------------------------------------------
def read_image(path: str | PathLike, *, series_uid: str | None = None) -> ImageData:
    """Read an image file or folder; see :class:`ImageData` for the layout.

    Files are recognised by suffix (``.nii``/``.nii.gz``, ``.png``, ``.jpg``/``.jpeg``,
    ``.tif``/``.tiff``, ``.dcm``/``.dicom``/``.ima``) or, for other names, by the DICOM
    magic bytes. A folder is read as a BraTS case (``*_t1``, ``*_t1ce``, ``*_t2``,
    ``*_flair`` [, ``*_seg``], or the 2023 names ``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``,
    ``-seg``) or else as a DICOM series; ``series_uid`` picks one series from a folder
    that holds several. Subfolders are not searched.
    """
    path = _path(path)
    require_exists(path)
    if path.is_dir():
        return _read_folder(path, series_uid)
    if path.stat().st_size == 0:
        raise InputFileError(path, "file is empty")
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in PNG_SUFFIXES:
        return read_raster(path, "png")
    if suffix in JPEG_SUFFIXES:
        return read_raster(path, "jpeg")
    if suffix in TIFF_SUFFIXES:
        return read_raster(path, "tiff")
    if is_dicom_file(path):
        return read_dicom_file(path)
    raise InputFileError(
        path, f"unsupported format {suffix or '(no suffix)'}; readable: {READABLE}"
    )


def _read_folder(folder: Path, series_uid: str | None) -> ImageData:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputFileError(folder, "folder is empty")
    brats = find_brats_files(folder)
    if brats is not None:
        return read_brats(folder, brats)
    dicoms = find_dicom_files(folder)
    if dicoms:
        return read_dicom_series(folder, dicoms, series_uid)
    raise InputFileError(
        folder,
        "no BraTS case (files ending _t1, _t1ce, _t2, _flair) and no DICOM files in this "
        "folder (subfolders are not searched)",
    )


def read_labels(path: str | PathLike, like: ImageData) -> np.ndarray:
    """Read an integer label map (``int32``) that must lie on ``like``'s grid.

    NIfTI label maps must match ``like``'s spatial shape and affine (within 1e-3 mm), up to
    the orientation they are stored in: a map whose voxels are ``like``'s in another axis
    order or with flipped axes (say LAS over a RAS image) is re-indexed onto ``like``'s grid
    (:func:`~napari_medadv.core.io.geometry.onto_grid`); any other grid is refused.
    PNG/TIFF label images carry no geometry, so only the shape is checked.
    """
    path = _path(path)
    require_exists(path)
    if path.is_dir():
        raise InputFileError(path, "is a folder; expected a label map file")
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        labels, affine = read_nifti_labels(path)
        geometry = Geometry(affine, shape=labels.shape)
        moved = None if like.geometry.same_grid(geometry) else onto_grid(labels, affine, like.geometry)
        if moved is not None:  # same voxels, stored in another orientation
            labels, geometry = moved, like.geometry
    elif suffix in PNG_SUFFIXES + TIFF_SUFFIXES:
        labels, geometry = as_label_array(read_raster_labels(path), path), None
    elif suffix in JPEG_SUFFIXES:
        raise InputFileError(path, "JPEG is lossy and cannot hold a label map; use PNG or NIfTI")
    else:
        raise InputFileError(
            path, f"unsupported label map format {suffix or '(no suffix)'}; use NIfTI, PNG or TIFF"
        )
    if labels.shape != like.spatial_shape:
        raise InputFileError(
            path,
            f"label map shape {labels.shape} does not match the image's {like.spatial_shape} "
            f"({like.source.name})",
        )
    if geometry is not None and not like.geometry.same_grid(geometry):
        raise InputFileError(
            path,
            f"label map is not on the grid of {like.source.name}: "
            + like.geometry.describe_difference(geometry),
        )
    return labels


# -- writing ------------------------------------------------------------------------------
def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _image_array(array, like: ImageData, path: Path) -> np.ndarray:
    array = _to_numpy(array)
    if array.shape == like.spatial_shape and like.n_channels == 1:
        array = array[None]
    if array.shape != like.array.shape:
        raise InputFileError(
            path, f"array shape {array.shape} does not match the source image {like.array.shape}"
        )
    if array.dtype.kind not in "uif":
        raise InputFileError(path, f"cannot write an array of type {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InputFileError(path, "the image to write contains NaN/Inf values")
    return array.astype(np.float32, copy=False)


def _output_format(path: Path, like: ImageData) -> str:
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in PNG_SUFFIXES:
        return "png"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in JPEG_SUFFIXES:
        raise InputFileError(
            path, "JPEG is lossy and would destroy the perturbation; use PNG or TIFF"
        )
    if not suffix and like.kind == "dicom-series":
        return "dicom-series"
    raise InputFileError(
        path, f"unsupported output format {suffix or '(no suffix)'}; writable: {WRITABLE}"
    )


def write_image(
    array,
    path: str | PathLike,
    *,
    like: ImageData,
    description: str = DEFAULT_DESCRIPTION,
    derived: bool = True,
) -> Path:
    """Write ``array`` (shape of ``like.array``, or ``like.spatial_shape`` for 1 channel)
    in the format given by ``path``'s suffix, with ``like``'s geometry and metadata.

    * ``.nii``/``.nii.gz``: float32, ``like``'s affine and header (copy), ``descrip`` =
      description, 4-D when there are several channels.
    * ``.png``: 8- or 16-bit, levels as stored in the source (2-D, 1 channel).
    * ``.tif``/``.tiff``: like PNG, or float32 if the source has no integer levels.
    * ``.dcm`` (2-D DICOM source) or a folder path without suffix (DICOM series source):
      derived DICOM, see :mod:`napari_medadv.core.io.dicom`. A series folder must be new
      or empty.

    ``derived=True`` marks an image whose pixels differ from the source (an attack result).
    ``derived=False`` is for re-writing unchanged pixels (a format conversion) and is
    refused when the pixels differ: a perturbed image must never pass for the original.
    A written DICOM always gets new UIDs. Returns the written path.
    """
    path = _path(path)
    data = _image_array(array, like, path)
    refuse_overwriting_sources(path, like.source_files())
    if not derived:
        tol = 1e-5 * max(1.0, float(np.max(np.abs(like.array), initial=0.0)))
        if not np.allclose(data, like.array, rtol=0.0, atol=tol):
            raise InputFileError(
                path,
                "derived=False but the pixels differ from the source; write a changed image "
                "with derived=True",
            )
    fmt = _output_format(path, like)
    if fmt == "nifti":
        return write_nifti(data, path, like, description)
    if fmt == "png":
        return write_png(data, path, like)
    if fmt == "tiff":
        return write_tiff(data, path, like)
    if fmt == "dicom":
        return write_dicom_file(data, path, like, description, derived)
    return write_dicom_series(data, path, like, description, derived)


def write_labels(labels, path: str | PathLike, *, like: ImageData) -> Path:
    """Write an integer label map on ``like``'s grid: NIfTI (uint8/int16, intent 'label',
    ``like``'s affine and header) or, for 2-D images, PNG/TIFF (uint8/uint16)."""
    path = _path(path)
    labels = _to_numpy(labels)
    if labels.shape != like.spatial_shape:
        raise InputFileError(
            path, f"label map shape {labels.shape} does not match the image's {like.spatial_shape}"
        )
    if labels.dtype.kind not in "uifb":
        raise InputFileError(path, f"cannot write labels of type {labels.dtype}")
    labels = as_label_array(labels, path)
    refuse_overwriting_sources(path, like.source_files())
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        if labels.max(initial=0) > np.iinfo(np.int16).max:
            raise InputFileError(path, "label values exceed the int16 range")
        return write_nifti_labels(labels, path, like)
    if suffix in PNG_SUFFIXES:
        return write_raster_labels(labels, path, "PNG")
    if suffix in TIFF_SUFFIXES:
        return write_raster_labels(labels, path, "TIFF")
    raise InputFileError(
        path, f"unsupported label output format {suffix or '(no suffix)'}; use NIfTI, PNG or TIFF"
    )
