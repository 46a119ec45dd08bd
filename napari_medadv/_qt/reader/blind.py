"""The blinded view of a reader study: only the trial's images on the canvas, nothing that names
them, and the viewer put back exactly as it was afterwards.

While :class:`BlindView` is active:

* every layer that was there is hidden and unselected; the trial images are new layers named
  ``"A"`` (and ``"B"``, on the right in pair mode) with empty metadata, the case's geometry,
  colormap and contrast limits;
* pair mode uses napari's grid (one cell per image, 1 × 2); which layer napari draws in the
  left cell is asked from the grid itself, so "left" is what the reader sees on the left;
* the layer list, the layer controls, every other dock, the status bar (layer name and value
  under the cursor) and the canvas tooltip are hidden.

:meth:`BlindView.exit` removes the trial layers and restores the visibility of every layer,
the selection, grid, camera, dims, docks, status bar and tooltip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compat import camera as _camera
from ..compat import grid as _grid

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QWidget

LEFT, RIGHT = "A", "B"


@dataclass
class _Saved:
    visible: dict  # layer -> visible
    selected: set
    active: Any
    grid: dict
    camera: dict
    dims: dict
    docks: dict  # dock widget -> was hidden
    status_bar: bool
    tooltip: bool


def dock_windows(viewer: napari.Viewer) -> dict:
    """name -> the QDockWidget of every dock added to the viewer's window."""
    win = viewer.window
    if hasattr(win, "dock_widgets"):  # napari >= 0.6: the inner widgets; the dock window is the parent
        out = {}
        for name, w in win.dock_widgets.items():
            qt = getattr(w, "native", w)
            out[name] = qt.parent()
        return out
    return dict(win._dock_widgets)  # napari < 0.6


def _grid_column(viewer: napari.Viewer, layer) -> int:
    layers = list(viewer.layers)
    try:
        return _grid(viewer).position(layers.index(layer), layers)[1]
    except TypeError:  # napari < 0.6: position(index, n_layers)
        return _grid(viewer).position(layers.index(layer), len(layers))[1]


class BlindView:
    """Hide everything identifying and show trial images; ``keep``: the widget that stays
    visible (the reader-study dock, whose dock window is not hidden)."""

    def __init__(self, viewer: napari.Viewer, keep: QWidget | None = None):
        self.viewer = viewer
        self.keep = keep
        self._saved: _Saved | None = None
        self.layers: list = []  # the trial layers now on the canvas, left first

    @property
    def active(self) -> bool:
        return self._saved is not None

    # ------------------------------------------------------------------ chrome

    def _docks(self) -> list:
        """Every dock window of the viewer but the one holding ``keep``."""
        win = self.viewer.window
        qv = win._qt_viewer
        docks = [qv.dockLayerList, qv.dockLayerControls, *dock_windows(self.viewer).values()]
        out = []
        for d in docks:
            if d is None or d in out:
                continue
            if self.keep is not None and (d is self.keep or d.isAncestorOf(self.keep)):
                continue
            out.append(d)
        return out

    def _status_bar(self):
        return self.viewer.window._qt_window.statusBar()

    def enter(self) -> None:
        """Save the viewer's state and hide every layer and every identifying widget."""
        if self.active:
            return
        v = self.viewer
        docks = self._docks()
        cam = _camera(v)
        self._saved = _Saved(
            visible={lyr: lyr.visible for lyr in v.layers}, selected=set(v.layers.selection),
            active=v.layers.selection.active,
            grid={k: getattr(_grid(v), k) for k in ("enabled", "stride", "shape", "spacing")},
            camera={"center": tuple(cam.center), "zoom": float(cam.zoom), "angles": tuple(cam.angles)},
            dims={"ndisplay": v.dims.ndisplay, "order": tuple(v.dims.order), "step": tuple(v.dims.current_step)},
            docks={d: d.isHidden() for d in docks}, status_bar=self._status_bar().isHidden(),
            tooltip=bool(v.tooltip.visible))
        with v.layers.batched_update():
            for lyr in v.layers:
                lyr.visible = False
        v.layers.selection.clear()
        for d in docks:
            d.hide()
        self._status_bar().hide()
        v.tooltip.visible = False

    def show(self, images: list[np.ndarray], layer_kwargs: dict, *, reset_view: bool = False) -> list:
        """Replace the trial layers by ``images`` (one: single mode; two: left, right) drawn
        with ``layer_kwargs`` (geometry, contrast limits, colormap); returns them, left first."""
        if not self.active:
            raise RuntimeError("BlindView.show before enter")
        v = self.viewer
        self._remove_layers()
        grid = _grid(v)
        new = [v.add_image(img, name=name, metadata={}, **layer_kwargs)
               for img, name in zip(images, (LEFT, RIGHT))]
        v.layers.selection.clear()
        if len(new) == 2:
            grid.stride, grid.shape, grid.spacing = 1, (1, 2), 0.02
            grid.enabled = True
            if _grid_column(v, new[0]) != 0:  # the grid put A on the right: swap what they hold
                new[0].data, new[1].data = new[1].data, new[0].data
                new[0].name = "-"  # free the name "A" for the layer in the left cell
                new[1].name, new[0].name = LEFT, RIGHT
                new.reverse()
        else:
            grid.enabled = False
        self.layers = new
        if reset_view:
            v.reset_view()
        return new

    def _remove_layers(self) -> None:
        for lyr in self.layers:
            if lyr in self.viewer.layers:
                self.viewer.layers.remove(lyr)
        self.layers = []

    def exit(self) -> None:
        """Remove the trial layers and restore the viewer as :meth:`enter` found it."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        v = self.viewer
        self._remove_layers()
        g = saved.grid
        grid = _grid(v)
        grid.enabled = False
        grid.stride, grid.shape, grid.spacing = g["stride"], g["shape"], g["spacing"]
        grid.enabled = g["enabled"]
        with v.layers.batched_update():
            for lyr, vis in saved.visible.items():
                if lyr in v.layers:
                    lyr.visible = vis
        v.dims.ndisplay = saved.dims["ndisplay"]
        v.dims.order = saved.dims["order"]
        if len(saved.dims["step"]) == v.dims.ndim:
            v.dims.current_step = saved.dims["step"]
        cam = _camera(v)
        cam.center, cam.zoom, cam.angles = saved.camera["center"], saved.camera["zoom"], saved.camera["angles"]
        v.layers.selection.clear()
        v.layers.selection.update({lyr for lyr in saved.selected if lyr in v.layers})
        if saved.active is not None and saved.active in v.layers:
            v.layers.selection.active = saved.active
        for d, hidden in saved.docks.items():
            d.setHidden(hidden)
        self._status_bar().setHidden(saved.status_bar)
        v.tooltip.visible = saved.tooltip
