"""Viewer attributes that moved in napari 0.9 (grid, camera, text overlay), for napari >= 0.5.

napari 0.9 deprecates ``viewer.grid``, ``viewer.camera`` and ``viewer.text_overlay`` in favour
of ``viewer.canvas.grid``, ``viewer.scene.camera`` and ``viewer.canvas.overlays.text``; the
project declares ``napari>=0.5``, so both spellings are needed.
"""

from __future__ import annotations


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
