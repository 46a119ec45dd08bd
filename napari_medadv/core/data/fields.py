"""Smooth random fields and the smoothstep ramp the phantom generators draw tumour shapes,
lesion outlines and textures from."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def smooth_field(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation (float64)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 for t <= 0, 1 for t >= 1, C1-smooth in between (compact support, unlike a sigmoid)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
