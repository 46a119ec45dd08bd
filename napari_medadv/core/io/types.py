"""The one in-memory image type every reader returns and every writer takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .geometry import Geometry

#: Values of :attr:`ImageData.kind`.
KINDS = ("nifti", "brats", "dicom-series", "dicom", "png", "jpeg", "tiff")


@dataclass
class ImageData:
    """An image as read from disk.

    Attributes
    ----------
    array
        ``float32``, channels first: ``(C, *spatial)``. Volumes keep the file's voxel order
        (NIfTI: nibabel's ``(i, j, k)``; DICOM series: ``(slice, row, column)``, slices
        sorted along the slice normal); 2-D images are ``(C, rows, columns)``.
        Values are physical where the file says how (NIfTI scaling, DICOM rescale →
        e.g. Hounsfield units), else the stored values (PNG 0…255 / 0…65535).
    geometry
        Index→world affine, RAS+ mm for volumes (see :mod:`.geometry`).
    channel_names
        One name per channel, e.g. ``["t1", "t1ce", "t2", "flair"]`` or ``["image"]``.
    source
        The file or folder that was read.
    kind
        One of :data:`KINDS`.
    labels
        Integer (``int32``) label map on the same spatial grid (BraTS ``_seg``), else None.
    meta
        What writers need (nibabel header, source DICOM datasets without pixel data, bit
        depth, stored range, window, photometric interpretation) plus notes for the user
        (``meta["notes"]``: list of strings).
    """

    array: np.ndarray
    geometry: Geometry
    channel_names: list[str]
    source: Path
    kind: str
    labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim not in (3, 4):
            raise ValueError(
                f"ImageData.array must be (C, H, W) or (C, Z, Y, X), got shape {self.array.shape}"
            )
        spatial = tuple(self.array.shape[1:])
        if self.geometry.shape is None:
            self.geometry = dataclasses.replace(self.geometry, shape=spatial)
        elif tuple(self.geometry.shape) != spatial:
            raise ValueError(
                f"geometry shape {self.geometry.shape} does not match array spatial shape {spatial}"
            )
        if len(self.channel_names) != self.array.shape[0]:
            raise ValueError(
                f"{len(self.channel_names)} channel names for {self.array.shape[0]} channels"
            )
        if self.labels is not None and tuple(self.labels.shape) != spatial:
            raise ValueError(f"labels shape {self.labels.shape} does not match image {spatial}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        self.source = Path(self.source)

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.array.ndim - 1

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    def source_files(self) -> list[Path]:
        """Every file this image was read from (several for BraTS cases and DICOM series)."""
        files = self.meta.get("source_files")
        return [Path(f) for f in files] if files else [self.source]
