"""Display orientation: how stored voxels map to the viewer's world, and which patient
direction each screen edge faces. Qt-free and napari-free (the GUI only applies the numbers).

Convention
----------
The viewer's world frame **is the patient frame, RAS+ millimetres** (x → patient's Right,
y → Anterior, z → Superior), the frame of every :class:`~napari_medadv.core.io.Geometry` of a
volume (DICOM LPS positions are converted on reading). World axis ``k`` of a 3-D layer is
RAS axis ``k``: napari's world axis 0 is x, 1 is y, 2 is z. Every reader's volumes — NIfTI
in any qform/sform, flipped, permuted or oblique, BraTS folders and DICOM series — land in
this one frame, so the same anatomy stored differently coincides on screen.

2-D images (radiographs, a single DICOM slice, PNG/TIFF) have no patient frame: they stay in
their image plane (rows down, columns right, in mm) and carry no orientation letters.

How (why a layer affine *and* a transposed view)
------------------------------------------------
Arrays are never resampled or reoriented in the data model: readers keep the stored voxel
order and writers write it back with the input's own affine, so results overlay their source
in any other viewer. On screen, each volume layer gets napari's per-layer ``affine`` (the
file's rotation, flips, obliquity and shear; see :meth:`DisplayFrame.napari_kwargs`).
napari's 2-D slicing, however, cannot show a layer whose affine *permutes* axes (it slices
the wrong data axis and warns "Non-orthogonal slicing"), which is exactly what an axial
DICOM series (slice, row, column = S, P, L) or a sagittally stored NIfTI needs. So a layer's
data is the stored array with its axes **transposed** (a NumPy view, no copy, no flips, no
interpolation) so that display axis ``k`` is the stored axis closest to world axis ``k``;
the affine's columns are permuted to match. Flips stay in the affine (napari draws negative
scales fine) and an oblique acquisition keeps its rotation (shown rotated, not snapped).
:class:`DisplayFrame` converts arrays and voxel coordinates between the stored and the
display order; for most NIfTI files (RAS, LAS, LPS, …) the permutation is the identity and
the layer data *is* the stored array.

Screen orientation
------------------
:func:`view_settings` gives napari's ``dims.order`` and camera ``orientation`` for an
axial, coronal or sagittal view in the radiological (patient's left on screen right, viewed
from the feet / from the front) or neurological (left on left) convention; sagittal views
put anterior on screen left in both. :func:`screen_letters` names the patient direction at
each edge of a 2-D view from the displayed world axes and the camera's axis directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .io.geometry import Geometry

#: Patient direction of the positive / negative end of world axes 0, 1, 2 (RAS+).
POSITIVE = ("R", "A", "S")
NEGATIVE = ("L", "P", "I")
#: dims axis labels for the world axes (napari shows them on the sliders)
AXIS_LABELS = ("x (L→R)", "y (P→A)", "z (I→S)")
PLANES = ("axial", "coronal", "sagittal")
CONVENTIONS = ("radiological", "neurological")
OPPOSITE = dict(zip(POSITIVE + NEGATIVE, NEGATIVE + POSITIVE, strict=True))

# plane -> (slider axis, vertical axis, horizontal axis) in world (RAS) axes
_PLANE_AXES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}
# plane, convention -> napari camera orientation (depth, vertical, horizontal) for those axes
_ORIENTATIONS = {
    # axial: anterior up; radiological = seen from the feet (S away), R on screen left
    ("axial", "radiological"): ("away", "up", "left"),
    ("axial", "neurological"): ("towards", "up", "right"),
    # coronal: superior up; radiological = seen from the front (A towards), R on screen left
    ("coronal", "radiological"): ("towards", "up", "left"),
    ("coronal", "neurological"): ("away", "up", "right"),
    # sagittal: superior up, anterior on screen left (seen from the patient's left: R away)
    ("sagittal", "radiological"): ("away", "up", "left"),
    ("sagittal", "neurological"): ("away", "up", "left"),
}


@dataclass(frozen=True, eq=False)
class DisplayFrame:
    """How a stored array is shown: ``perm`` (display axis ``k`` = stored axis ``perm[k]``)
    and ``matrix`` ((n+1)×(n+1), display voxel index → world mm).

    Example
    -------
    >>> lps = Geometry(np.diag([-2.0, -2.0, 2.0, 1.0]), shape=(4, 5, 6))
    >>> f = DisplayFrame.of(lps)
    >>> f.perm, f.napari_kwargs()["scale"]
    ((0, 1, 2), (2.0, 2.0, 2.0))
    """

    perm: tuple[int, ...]
    matrix: np.ndarray
    patient: bool  # True: world is the RAS+ patient frame (volumes); False: an image plane

    @classmethod
    def of(cls, geometry: Geometry) -> DisplayFrame:
        """The display frame of a geometry (see the module docstring)."""
        if geometry.ndim == 2:
            scale, translate = geometry.napari_scale_translate()
            m = np.eye(3)
            m[[0, 1], [0, 1]] = scale
            m[:2, 2] = translate
            return cls((0, 1), m, False)
        perm = display_permutation(geometry.affine)
        m = geometry.affine[:, [*perm, 3]].copy()
        return cls(perm, m, True)

    @classmethod
    def identity(cls, matrix: np.ndarray, patient: bool = False) -> DisplayFrame:
        """A frame that shows the array as stored with the given index → world matrix."""
        matrix = np.asarray(matrix, dtype=np.float64)
        n = matrix.shape[0] - 1
        return cls(tuple(range(n)), matrix, patient)

    @property
    def ndim(self) -> int:
        return len(self.perm)

    @property
    def inverse(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.perm))

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(self.ndim))

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size (mm) along each *display* axis."""
        n = self.ndim
        return tuple(float(s) for s in np.linalg.norm(self.matrix[:n, :n], axis=0))

    def _axes(self, ndim: int, order: Sequence[int]) -> tuple[int, ...]:
        lead = ndim - self.ndim
        if lead < 0:
            raise ValueError(f"array has {ndim} axes; the frame has {self.ndim}")
        return (*range(lead), *(lead + p for p in order))

    def to_display(self, array):
        """The stored array (spatial axes last) as shown: a transposed view, never a copy."""
        if self.is_identity:
            return array
        return np.transpose(array, self._axes(np.ndim(array), self.perm))

    def to_stored(self, array):
        """Inverse of :meth:`to_display` (a view)."""
        if self.is_identity:
            return array
        return np.transpose(array, self._axes(np.ndim(array), self.inverse))

    def display_shape(self, stored_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(stored_shape[p]) for p in self.perm)

    def coords_to_display(self, coords: np.ndarray) -> np.ndarray:
        """(N, ndim) stored voxel indices → display voxel indices."""
        return np.asarray(coords)[:, list(self.perm)]

    def data_to_world(self, coords: np.ndarray) -> np.ndarray:
        """(N, ndim) display voxel indices → world mm (what napari's ``data_to_world`` gives)."""
        c = np.asarray(coords, dtype=np.float64)
        return c @ self.matrix[:-1, :-1].T + self.matrix[:-1, -1]

    def napari_kwargs(self) -> dict:
        """``scale``, ``translate`` and ``affine`` for a napari layer showing
        :meth:`to_display` of the array, so that napari's data → world transform is
        :attr:`matrix`. ``scale`` is the voxel size. A grid without flips or rotation gets
        ``translate`` = origin and the identity ``affine``; any other gets ``translate`` = 0
        and an ``affine`` of unit direction columns (rotation, flips and any shear, passed on
        as they are) plus the origin, so ``affine @ diag(scale)`` is :attr:`matrix`."""
        n = self.ndim
        spacing = np.asarray(self.spacing)
        scale = tuple(float(s) for s in spacing)
        if np.allclose(self.matrix[:n, :n], np.diag(spacing), rtol=0.0, atol=1e-9):
            return {"scale": scale, "translate": tuple(float(t) for t in self.matrix[:n, n]),
                    "affine": np.eye(n + 1)}
        affine = self.matrix.copy()
        affine[:n, :n] = affine[:n, :n] / spacing
        return {"scale": scale, "translate": (0.0,) * n, "affine": affine}


def as_affine4(matrix: np.ndarray) -> np.ndarray:
    """A 3×3 (2-D) or 4×4 index → world matrix as the 4×4 affine of a Geometry."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0] - 1
    if n == 3:
        return matrix
    out = np.eye(4)
    out[:n, :n] = matrix[:n, :n]
    out[:n, 3] = matrix[:n, n]
    return out


def display_permutation(affine: np.ndarray) -> tuple[int, ...]:
    """For each world axis, the stored axis closest to it (nibabel's ``io_orientation``,
    which resolves obliques by the largest direction cosines)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    perm = [0, 0, 0]
    for stored_axis, (world_axis, _) in enumerate(ornt):
        perm[int(world_axis)] = stored_axis
    return tuple(perm)


def axis_codes(affine: np.ndarray) -> str:
    """Orientation code of an affine's voxel axes, e.g. ``"RAS"``, ``"LPS"``, ``"PSR"``."""
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, dtype=np.float64)))


def view_settings(plane: str, convention: str = "radiological") -> tuple[tuple[int, int, int], tuple[str, str, str]]:
    """``(dims.order, camera.orientation)`` for a 3-D world in RAS axes (0 = x, 1 = y, 2 = z).

    >>> view_settings("axial")
    ((2, 1, 0), ('away', 'up', 'left'))
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return _PLANE_AXES[plane], _ORIENTATIONS[(plane, convention)]


def plane_of(order: Sequence[int]) -> str | None:
    """Which standard plane a ``dims.order`` shows in 2-D (by the slider axis), or None."""
    axis = int(order[-3]) if len(order) >= 3 else None
    return {2: "axial", 1: "coronal", 0: "sagittal"}.get(axis)


def convention_of(displayed: Sequence[int], orientation2d: Sequence[str]) -> str | None:
    """``"radiological"`` when the patient's left is on screen right, ``"neurological"``
    when it is on screen left, None when x (left-right) is not displayed horizontally."""
    letters = screen_letters(displayed, orientation2d)
    if letters.get("right") == "L":
        return "radiological"
    if letters.get("right") == "R":
        return "neurological"
    return None


def screen_letters(displayed: Sequence[int], orientation2d: Sequence[str]) -> dict[str, str]:
    """Patient direction at the top, bottom, left and right edge of a 2-D view.

    ``displayed``: the (vertical, horizontal) world axes on screen (napari's
    ``dims.displayed`` for a 3-D world, RAS axes); ``orientation2d``: napari's camera
    ``orientation2d``, ``("up"|"down", "left"|"right")`` — the screen direction in which each
    displayed axis *increases*.

    >>> screen_letters((1, 0), ("up", "left"))  # axial, radiological
    {'top': 'A', 'bottom': 'P', 'left': 'R', 'right': 'L'}
    """
    v, h = (int(a) for a in displayed)
    vdir, hdir = (str(getattr(d, "value", d)) for d in orientation2d)
    if not (0 <= v < 3 and 0 <= h < 3):
        raise ValueError(f"displayed axes must be world axes 0-2, got {tuple(displayed)}")
    top = POSITIVE[v] if vdir == "up" else NEGATIVE[v]
    right = POSITIVE[h] if hdir == "right" else NEGATIVE[h]
    return {"top": top, "bottom": OPPOSITE[top], "left": OPPOSITE[right], "right": right}
