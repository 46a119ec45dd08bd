"""Viewer attributes that moved in napari 0.9 (grid, camera, text overlay), for napari >= 0.5,
and adding a layer without selecting it.

napari 0.9 deprecates ``viewer.grid``, ``viewer.camera`` and ``viewer.text_overlay`` in favour
of ``viewer.canvas.grid``, ``viewer.scene.camera`` and ``viewer.canvas.overlays.text``; the
project declares ``napari>=0.5``, so both spellings are needed.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def keep_selection(viewer):
    """Layers added inside keep the current selection. napari's layer list selects each inserted
    layer (its ``_activate_on_insert`` flag, the only switch; private, so a napari without it just
    selects as before), which rebuilds the layer controls: about 20 ms per layer at BraTS size."""
    layers = viewer.layers
    before = getattr(layers, "_activate_on_insert", None)
    if before is None:
        yield
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = before


def grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def text_overlay(viewer):
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None) if canvas is not None else None
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return viewer.text_overlay
