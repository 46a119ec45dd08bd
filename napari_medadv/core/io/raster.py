"""PNG / JPEG / TIFF radiographs (imageio).

Reading gives one gray channel with the *stored* values (0…255 or 0…65535; colour images
as ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, alpha ignored) and spacing 1 mm.
``meta["bit_depth"]``, ``meta["stored_range"]`` and ``meta["stored_step"]`` say how array
values map back to integers: ``level = round((value - stored_range[0]) / stored_step)``.
The DICOM reader fills the same keys, so a DICOM radiograph can be exported to PNG.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ..errors import InputFileError
from ._files import atomic_file, reading, require_finite
from .geometry import Geometry
from .types import ImageData

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LUMA = np.array([0.299, 0.587, 0.114])


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR chunk."""
    with reading(path, "PNG header"), open(path, "rb") as fh:
        head = fh.read(29)
    if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputFileError(path, "not a PNG file (bad signature or header)")
    bit_depth, colour_type = struct.unpack(">BB", head[24:26])
    return bit_depth, colour_type


def _to_gray(data: np.ndarray, path: Path, notes: list[str]) -> tuple[np.ndarray, str]:
    if data.ndim == 2:
        return data, "gray"
    if data.ndim == 3 and data.shape[-1] in (1, 2, 3, 4):
        channels = data.shape[-1]
        if channels in (2, 4):
            opaque = np.iinfo(data.dtype).max if data.dtype.kind in "ui" else 1.0
            if np.any(data[..., -1] != opaque):
                notes.append(f"{path.name}: alpha channel ignored (transparency dropped)")
        if channels <= 2:
            return data[..., 0], "gray"
        gray = data[..., :3].astype(np.float64) @ _LUMA
        notes.append(f"{path.name}: colour converted to gray (BT.601 luma)")
        return gray, "rgb" if channels == 3 else "rgba"
    if data.ndim == 3:
        raise InputFileError(
            path,
            f"multi-page image ({data.shape[0]} pages) is not supported; expected one 2-D image",
        )
    raise InputFileError(path, f"expected a 2-D image, got an array of shape {data.shape}")


def read_raster(path: Path, kind: str) -> ImageData:
    """Read a PNG (8/16-bit), JPEG or TIFF as a 1-channel 2-D image."""
    notes: list[str] = []
    if kind == "png":
        bit_depth, colour_type = _png_header(path)
        if bit_depth == 16 and colour_type in (2, 6):
            raise InputFileError(
                path, "16-bit colour PNG cannot be read without losing bits; save it as 16-bit gray"
            )
    with reading(path, f"{kind.upper()} image"):
        data = np.asarray(iio.imread(path))
    if data.dtype == bool:
        data = data.astype(np.uint8) * 255
        notes.append(f"{path.name}: 1-bit image mapped to 0/255")
    gray, colour = _to_gray(data, path, notes)
    if data.dtype.kind in "ui":
        info = np.iinfo(data.dtype)
        stored_range: tuple[float, float] | None = (float(info.min), float(info.max))
        bit_depth = info.bits
    elif data.dtype.kind == "f":
        stored_range, bit_depth = None, data.dtype.itemsize * 8
    else:
        raise InputFileError(path, f"unsupported pixel type {data.dtype}")
    array = gray.astype(np.float32)[None]
    require_finite(array, path, "pixels")
    meta = {
        "bit_depth": bit_depth,
        "file_dtype": str(data.dtype),
        "stored_range": stored_range,
        "stored_step": 1.0,
        "colour": colour,
        "source_files": [path],
        "notes": notes,
    }
    geometry = Geometry.from_spacing((1.0, 1.0), shape=array.shape[1:])
    return ImageData(array, geometry, ["image"], path, kind, meta=meta)


def read_raster_labels(path: Path) -> np.ndarray:
    """A 2-D integer label image (PNG/TIFF), values unchanged."""
    with reading(path, "label image"):
        data = np.asarray(iio.imread(path))
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise InputFileError(
            path, f"label image must be one gray 2-D image, got shape {data.shape}"
        )
    if data.dtype == bool:
        data = data.astype(np.uint8)
    return data


# -- writers -------------------------------------------------------------------------------
def _levels(array: np.ndarray, like: ImageData, path: Path, fmt: str) -> np.ndarray:
    """Array values → stored integer levels of the source (uint8 or uint16)."""
    stored_range = like.meta.get("stored_range")
    if stored_range is None:
        raise InputFileError(
            path,
            f"{fmt} output needs a source with integer stored values (PNG, JPEG, TIFF or "
            f"DICOM); {like.source.name} has none: write NIfTI or TIFF instead",
        )
    lo, hi = stored_range
    step = float(like.meta.get("stored_step", 1.0))
    n_levels = int(round((hi - lo) / step))
    if n_levels > 65535:
        raise InputFileError(
            path, f"the source's stored range ({n_levels + 1} levels) exceeds 16 bits"
        )
    dtype = np.uint8 if n_levels <= 255 else np.uint16
    levels = np.rint((array.astype(np.float64) - lo) / step)
    clipped = int(np.count_nonzero((levels < 0) | (levels > n_levels)))
    if clipped:
        warnings.warn(
            f"{path}: {clipped} value(s) outside the source's stored range were clipped",
            stacklevel=4,
        )
    return np.clip(levels, 0, n_levels).astype(dtype)


def _require_2d_single(array: np.ndarray, path: Path, fmt: str) -> np.ndarray:
    if array.ndim != 3 or array.shape[0] != 1:
        raise InputFileError(
            path, f"{fmt} holds one 2-D gray image; got channels×spatial shape {array.shape}"
        )
    return array[0]


def write_png(array: np.ndarray, path: Path, like: ImageData) -> Path:
    """8-bit or 16-bit gray PNG, levels as in the source (see module docstring)."""
    image = _levels(_require_2d_single(array, path, "PNG"), like, path, "PNG")
    with atomic_file(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return path


def write_tiff(array: np.ndarray, path: Path, like: ImageData) -> Path:
    """Gray TIFF: the source's integer levels when it has them, else float32 values."""
    image = _require_2d_single(array, path, "TIFF")
    if like.meta.get("stored_range") is not None:
        image = _levels(image, like, path, "TIFF")
    else:
        image = image.astype(np.float32)
    with atomic_file(path) as tmp:
        iio.imwrite(tmp, image, extension=".tif")
    return path


def write_raster_labels(labels: np.ndarray, path: Path, fmt: str) -> Path:
    if labels.ndim != 2:
        raise InputFileError(path, f"{fmt} label output must be 2-D, got shape {labels.shape}")
    top = int(labels.max(initial=0))
    if top > 65535:
        raise InputFileError(path, f"label value {top} does not fit a 16-bit {fmt}")
    image = labels.astype(np.uint8 if top <= 255 else np.uint16)
    with atomic_file(path) as tmp:
        iio.imwrite(tmp, image, extension=".png" if fmt == "PNG" else ".tif")
    return path
