"""Where an image's voxels are: one affine per image, in RAS+ millimetres.

Convention (the same for every reader and writer):

* ``affine`` is 4×4 and maps a voxel index ``(i0, i1, i2, 1)`` — the spatial axes in the
  order of ``ImageData.array[c]`` — to a world position in millimetres.
* The world frame of volumes is **RAS+** (x → Right, y → Anterior, z → Superior), the
  NIfTI/nibabel convention. DICOM positions are LPS+ and are converted with
  ``diag(-1, -1, 1, 1) @ affine_lps`` (see :data:`LPS_TO_RAS`).
* 2-D images (radiographs, PNG, a single DICOM slice) have no patient frame: their world is
  the *image plane* in millimetres, axis 0 going down the rows and axis 1 along the columns
  (``affine = diag(row_spacing, column_spacing, 1, 1)``). Only ``affine[:2, :2]`` and
  ``affine[:2, 3]`` mean anything there.

Data are never resampled or reoriented: the affine says how the stored voxels sit. How
volumes are shown in napari (whose world is this RAS+ frame) is
:class:`napari_medadv.core.orientation.DisplayFrame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Converts a DICOM (LPS+) affine to RAS+: ``LPS_TO_RAS @ affine_lps``. It is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(eq=False)
class Geometry:
    """Voxel grid of an image: a 4×4 index→world affine (RAS+ mm) and the spatial shape.

    ``shape`` is the spatial shape (no channel axis). It may be left ``None`` when a
    :class:`~napari_medadv.core.io.types.ImageData` is built around the geometry, which fills
    it in from the array; then ``ndim`` is taken as 3 until it is known.

    Example
    -------
    >>> g = Geometry.from_spacing((2.0, 1.0, 1.0), shape=(10, 20, 30))
    >>> g.spacing
    (2.0, 1.0, 1.0)
    """

    affine: np.ndarray
    shape: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Geometry.affine must be 4x4, got shape {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise ValueError("Geometry.affine contains NaN or Inf")
        self.affine = affine
        if self.shape is not None:
            shape = tuple(int(n) for n in self.shape)
            if len(shape) not in (2, 3) or min(shape) < 1:
                raise ValueError(f"Geometry.shape must be 2 or 3 positive sizes, got {shape}")
            self.shape = shape
        if np.any(self._columns_norm() == 0):
            raise ValueError("Geometry.affine has a zero-length voxel axis")

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def from_spacing(
        cls,
        spacing: Sequence[float],
        origin: Sequence[float] | None = None,
        shape: Sequence[int] | None = None,
    ) -> Geometry:
        """Axis-aligned grid: voxel axis ``k`` runs along world axis ``k``."""
        spacing = [float(s) for s in spacing]
        if len(spacing) not in (2, 3) or min(spacing) <= 0:
            raise ValueError(f"spacing must be 2 or 3 positive numbers, got {spacing}")
        if shape is not None and len(shape) != len(spacing):
            raise ValueError(f"shape {tuple(shape)} and spacing {spacing} differ in length")
        origin = [0.0] * len(spacing) if origin is None else [float(o) for o in origin]
        if len(origin) != len(spacing):
            raise ValueError(f"origin {origin} and spacing {spacing} differ in length")
        affine = np.eye(4)
        for k, (s, o) in enumerate(zip(spacing, origin, strict=True)):
            affine[k, k] = s
            affine[k, 3] = o
        return cls(affine, None if shape is None else tuple(shape))

    # -- properties ----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return 3 if self.shape is None else len(self.shape)

    def _columns_norm(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (length of the affine's columns)."""
        return tuple(float(s) for s in self._columns_norm()[: self.ndim])

    @property
    def origin(self) -> tuple[float, ...]:
        """World position (mm) of voxel index 0; ``ndim`` components."""
        return tuple(float(o) for o in self.affine[: self.ndim, 3])

    @property
    def direction(self) -> np.ndarray:
        """Unit direction of each array axis as columns: 3×3 for volumes, 2×2 for 2-D."""
        n = self.ndim
        return self.affine[:n, :n] / self._columns_norm()[:n]

    def _direction3(self) -> np.ndarray:
        """3×ndim unit columns (a 2-D NIfTI may still point its axes into 3-D)."""
        n = self.ndim
        return self.affine[:3, :n] / self._columns_norm()[:n]

    # -- helpers -------------------------------------------------------------------------
    def is_axis_aligned(self, atol: float = 1e-4) -> bool:
        """True when every array axis runs along one world axis (a signed permutation):
        no obliquity and no shear. Flips and axis swaps are allowed."""
        d = self._direction3()
        big = np.abs(d) > 1 - atol
        small = np.abs(d) < atol
        if not np.all(big | small):
            return False
        rows = np.argmax(big, axis=0)
        return bool(np.all(big.sum(axis=0) == 1) and len(set(rows.tolist())) == d.shape[1])

    def napari_scale_translate(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(scale, translate)`` for napari layers, one value per spatial array axis.

        Used for 2-D images (their image plane). Volumes are shown in the RAS+ patient frame
        through :class:`napari_medadv.core.orientation.DisplayFrame` instead.

        napari draws each array axis along its own world axis, so it cannot show rotations
        with ``scale``/``translate`` alone. Here napari's world is the image's *own* frame:
        the world rotated so that the voxel axes become the coordinate axes
        (``coords = inv(direction) @ world``). Then ``scale`` is the spacing (always > 0) and
        ``translate`` the origin expressed in that frame. Physical distances and aspect
        ratios are exact; layers whose geometries share ``direction`` line up exactly
        (for axis-aligned images that means the same axis order and flips). For oblique
        images, a layer ``affine`` is the only way to show scanner coordinates.
        """
        d3 = self._direction3()
        translate = np.linalg.pinv(d3) @ self.affine[:3, 3]
        return self.spacing, tuple(float(t) for t in translate)

    def same_grid(self, other: Geometry, atol: float = 1e-3) -> bool:
        """Same spatial shape (where both are known) and affines equal within ``atol`` mm."""
        if self.shape is not None and other.shape is not None and self.shape != other.shape:
            return False
        if self.ndim != other.ndim:
            return False
        return bool(np.allclose(self.affine, other.affine, rtol=0.0, atol=atol))

    def describe_difference(self, other: Geometry) -> str:
        """Short human-readable reason why ``same_grid`` is False (for error messages)."""
        if self.shape is not None and other.shape is not None and self.shape != other.shape:
            return f"shape {other.shape} differs from {self.shape}"
        diff = float(np.max(np.abs(self.affine - other.affine)))
        return (
            f"affine differs by up to {diff:.4g} mm "
            f"(spacing {_fmt(other.spacing)} vs {_fmt(self.spacing)}, "
            f"origin {_fmt(other.origin)} vs {_fmt(self.origin)})"
        )

    def copy(self) -> Geometry:
        return Geometry(self.affine.copy(), self.shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.shape == other.shape and np.array_equal(self.affine, other.affine)

    def __repr__(self) -> str:
        spacing, origin = _fmt(self.spacing), _fmt(self.origin)
        return f"Geometry(shape={self.shape}, spacing={spacing}, origin={origin})"


def onto_grid(array: np.ndarray, affine: np.ndarray, grid: Geometry) -> np.ndarray | None:
    """``array`` (stored with ``affine``) re-indexed onto ``grid`` when the two differ only by
    flips and permutations of the voxel axes (the same voxels stored in another orientation,
    e.g. a label map saved LAS over a RAS image); None when they are truly different grids.
    Only indices move (nibabel's ``apply_orientation``): no interpolation."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    array = np.asarray(array)
    if array.ndim != 3 or grid.ndim != 3:
        return None
    t = ornt_transform(io_orientation(affine), io_orientation(grid.affine))
    out = apply_orientation(array, t)
    moved = Geometry(np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(t, array.shape), shape=out.shape)
    return np.ascontiguousarray(out) if grid.same_grid(moved) else None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
