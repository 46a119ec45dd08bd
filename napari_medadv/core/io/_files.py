"""Path checks, error wrapping and atomic writes shared by the readers and writers."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputFileError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def stem_of(path: Path) -> str:
    suffix = suffix_of(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn any library exception raised while reading ``path`` into an ``InputFileError``.

    Our own ``InputFileError`` passes through unchanged; the original exception stays
    attached as ``__cause__`` for debugging.
    """
    try:
        yield
    except InputFileError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - library boundary: nibabel/pydicom/imageio
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(path, f"cannot read {what} (truncated or corrupt?): {detail}") from exc


#: deflate cannot compress better than about 1032:1, so a gzip file can never hold more than this
#: many times its own size (a header declaring more is corrupt or hostile)
MAX_GZIP_RATIO = 1100


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else psutil), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other systems, when psutil is there (it is not a dependency)
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - optional helper
        return None


def _gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{int(n)} bytes"


def require_plausible_size(path: Path, shape, file_itemsize: int, *, data_offset: int = 0,
                           compressed: bool = False, copies: float = 2.0) -> None:
    """Refuse, before reading any voxel, data whose declared size cannot be in the file or in memory.

    ``shape``/``file_itemsize``: what the header declares; ``copies``: how many float32 copies of
    the voxels reading makes at the peak (file dtype + float32). A header declaring 30000³ voxels
    in a 1 KB file is refused in microseconds instead of failing with MemoryError (or swapping).
    """
    n = 1
    for s in shape:
        n *= int(s)
    declared = n * int(file_itemsize)
    size = path.stat().st_size if path.is_file() else None
    if size is not None:
        if compressed and declared > MAX_GZIP_RATIO * size:
            raise InputFileError(path, f"the header declares {'×'.join(map(str, shape))} voxels ({_gib(declared)}), "
                                       f"which a {_gib(size)} compressed file cannot hold: corrupt or not an image")
        if not compressed and declared + data_offset > size:
            raise InputFileError(path, f"the header declares {'×'.join(map(str, shape))} voxels ({_gib(declared)}) "
                                       f"but the file has only {_gib(max(size - data_offset, 0))} of data: truncated or corrupt")
    need = n * 4 * copies
    avail = available_memory()
    if avail is not None and need > avail:
        raise InputFileError(path, f"{'×'.join(map(str, shape))} voxels need about {_gib(need)} of memory to "
                                   f"read; {_gib(avail)} is available")


def require_exists(path: Path) -> None:
    if not path.exists():
        raise InputFileError(path, "no such file or folder")


def require_finite(array: np.ndarray, path: Path, what: str = "voxels") -> None:
    finite = np.isfinite(array)
    if not finite.all():
        n_bad = int(finite.size - np.count_nonzero(finite))
        raise InputFileError(path, f"contains {n_bad} NaN/Inf {what}; refusing to use it")


# -- output safety ------------------------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_overwriting_sources(out: Path, sources: list[Path]) -> None:
    """Refuse an output that is, or lies inside, something the image was read from.

    ``sources`` holds the files read and, for folder sources (BraTS case, DICOM series), the
    folder itself: an output inside such a folder would change what the folder means the
    next time it is read (a second series, a duplicate modality).
    """
    out_resolved = out.resolve()
    for src in sources:
        if _same(out, src):
            raise InputFileError(out, f"refusing to overwrite the input {src}")
        if src.is_dir():
            src_resolved = src.resolve()
            if src_resolved in out_resolved.parents:
                raise InputFileError(
                    out,
                    f"refusing to write inside the input folder {src}: the output would mix "
                    "with the source files; choose another folder",
                )
            if out_resolved in src_resolved.parents or out_resolved == src_resolved:
                raise InputFileError(
                    out, f"refusing to replace a folder that holds the input {src}"
                )


def _temp_sibling(path: Path, kind: str) -> Path:
    """A hidden name next to ``path`` that keeps its suffix (libraries pick formats by it)."""
    suffix = suffix_of(path)
    token = secrets.token_hex(4)
    return path.with_name(f".{stem_of(path)}.{token}.{kind}{suffix}")


def _prepare_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(path, f"cannot create the output folder: {exc}") from exc


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` on success.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    if path.is_dir():
        raise InputFileError(path, "is a folder; expected a file name to write")
    _prepare_parent(path)
    tmp = _temp_sibling(path, "partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise InputFileError(path, f"cannot write: {exc}") from exc
        raise


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; rename it to ``path`` on success.

    ``path`` must not exist or be an empty folder: existing files are never deleted.
    """
    if path.exists():
        if not path.is_dir():
            raise InputFileError(
                path, "exists and is not a folder; a series is written as a folder"
            )
        if any(path.iterdir()):
            raise InputFileError(path, "output folder exists and is not empty; choose a new folder")
    _prepare_parent(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            path.rmdir()  # empty (checked above); os.replace cannot replace folders everywhere
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise InputFileError(path, f"cannot write: {exc}") from exc
        raise
