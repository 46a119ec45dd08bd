"""Exports for slides and records: viewer screenshots and the ε-sweep animation (GIF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari


def save_screenshot(viewer: napari.Viewer, path: str | Path, *, canvas_only: bool = False) -> Path:
    """PNG of the viewer (window with docks, or the canvas only), written atomically."""
    import imageio.v3 as iio

    path = Path(path)
    img = viewer.screenshot(canvas_only=canvas_only, flash=False)
    tmp = path.with_name(f".{path.name}.tmp.png")
    iio.imwrite(tmp, np.asarray(img))
    tmp.replace(path)
    return path


def write_gif(frames: list[np.ndarray], path: str | Path, *, seconds_per_frame: float = 0.5) -> Path:
    """Animated GIF (loops forever) from RGB(A) frames of equal size, written atomically."""
    import imageio.v3 as iio

    if not frames:
        raise ValueError("no frames to write")
    h = min(f.shape[0] for f in frames)
    w = min(f.shape[1] for f in frames)
    stack = np.stack([np.asarray(f)[:h, :w, :3] for f in frames]).astype(np.uint8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.gif")
    iio.imwrite(tmp, stack, extension=".gif", duration=int(seconds_per_frame * 1000), loop=0)
    tmp.replace(path)
    return path
