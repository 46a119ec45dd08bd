"""Geometry: properties, napari scale/translate and grid comparison, with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medadv.core.io import LPS_TO_RAS, Geometry


def _rot_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = direction * np.asarray(spacing, float)
    a[:3, 3] = origin
    return a


# name, affine, shape, spacing, origin, axis_aligned, napari scale, napari translate
CASES = [
    ("identity", np.eye(4), (4, 5, 6), (1, 1, 1), (0, 0, 0), True, (1, 1, 1), (0, 0, 0)),
    (
        "anisotropic",
        _affine(np.eye(3), (2, 0.5, 3), (10, -20, 5)),
        (4, 5, 6),
        (2, 0.5, 3),
        (10, -20, 5),
        True,
        (2, 0.5, 3),
        (10, -20, 5),
    ),
    (
        # voxel axis 0 runs along -x: napari frame coordinate = -x, so translate = -origin_x
        "flipped x (radiological NIfTI)",
        _affine(np.diag([-1.0, 1, 1]), (2, 2, 2), (32, -40, -16)),
        (33, 41, 25),
        (2, 2, 2),
        (32, -40, -16),
        True,
        (2, 2, 2),
        (-32, -40, -16),
    ),
    (
        # DICOM axial series (slice, row, column) in RAS: axes permuted and flipped
        "dicom axial (k, r, c)",
        LPS_TO_RAS
        @ _affine(np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0.0]]), (5, 0.5, 0.5), (-100, -120, -50)),
        (10, 64, 64),
        (5, 0.5, 0.5),
        (100, 120, -50),
        True,
        (5, 0.5, 0.5),
        (-50, -120, -100),
    ),
    (
        "oblique 30 deg",
        _affine(_rot_z(30), (1, 2, 3), (0, 0, 0)),
        (3, 3, 3),
        (1, 2, 3),
        (0, 0, 0),
        False,
        (1, 2, 3),
        (0, 0, 0),
    ),
    (
        "2-D radiograph",
        np.diag([0.2, 0.15, 1.0, 1.0]),
        (100, 80),
        (0.2, 0.15),
        (0, 0),
        True,
        (0.2, 0.15),
        (0, 0),
    ),
]


@pytest.mark.parametrize(
    "affine, shape, spacing, origin, aligned, scale, translate",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_geometry_properties(affine, shape, spacing, origin, aligned, scale, translate):
    g = Geometry(affine, shape)
    assert g.ndim == len(shape)
    np.testing.assert_allclose(g.spacing, spacing, atol=1e-12)
    np.testing.assert_allclose(g.origin, origin, atol=1e-12)
    assert g.direction.shape == (g.ndim, g.ndim)
    assert g.is_axis_aligned() is aligned
    s, t = g.napari_scale_translate()
    np.testing.assert_allclose(s, scale, atol=1e-12)
    np.testing.assert_allclose(t, translate, atol=1e-9)


def test_napari_frame_is_the_rotated_world():
    """For an oblique grid, scale/translate reproduce inv(direction) @ world exactly."""
    direction = _rot_z(30)
    affine = _affine(direction, (1, 2, 3), (5, -7, 11))
    g = Geometry(affine, (4, 4, 4))
    scale, translate = g.napari_scale_translate()
    idx = np.array([1.0, 2.0, 3.0])
    world = affine[:3, :3] @ idx + affine[:3, 3]
    np.testing.assert_allclose(direction.T @ world, np.asarray(translate) + np.asarray(scale) * idx)


def test_from_spacing_and_same_grid():
    g = Geometry.from_spacing((2.0, 1.0, 1.0), origin=(1, 2, 3), shape=(4, 5, 6))
    np.testing.assert_array_equal(np.diag(g.affine), [2, 1, 1, 1])
    assert g.same_grid(g.copy())
    moved = g.copy()
    moved.affine[0, 3] += 5e-4
    assert g.same_grid(moved)  # within 1e-3 mm
    moved.affine[0, 3] += 0.1
    assert not g.same_grid(moved)
    assert "affine differs" in g.describe_difference(moved)
    assert not g.same_grid(
        Geometry.from_spacing((2.0, 1.0, 1.0), origin=(1, 2, 3), shape=(4, 5, 7))
    )


@pytest.mark.parametrize(
    "affine, shape, match",
    [
        (np.eye(3), None, "4x4"),
        (np.full((4, 4), np.nan), None, "NaN"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), None, "zero-length"),
        (np.eye(4), (4,), "2 or 3"),
    ],
)
def test_geometry_ill_opts(affine, shape, match):
    with pytest.raises(ValueError, match=match):
        Geometry(affine, shape)
