"""Orientation dock: axial / coronal / sagittal in one click, radiological or neurological
convention, and patient-direction letters (R L A P S I) at the canvas edges.

Thin over :mod:`napari_medadv.core.orientation`, which decides the dims order, the camera
orientation and the letters; this module only applies them to the viewer and keeps the
letters in step with the view (dims order, 2-D/3-D, camera flips, layers added/removed).
The letters are four napari canvas text overlays (napari >= 0.6); they are shown for 2-D
views of volumes (whose world is the RAS+ patient frame) and hidden for 3-D views and for
2-D images (radiographs have no patient frame).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QButtonGroup, QCheckBox, QHBoxLayout, QPushButton, QRadioButton, QVBoxLayout, QWidget

from napari_medadv.core.orientation import (
    AXIS_LABELS,
    PLANES,
    convention_of,
    plane_of,
    screen_letters,
    view_settings,
)

from .compat import camera
from .docking import tab_on_first_show

if TYPE_CHECKING:
    import napari

#: canvas overlay key -> (edge, canvas position)
EDGES = {"medadv_orientation_top": ("top", "top_center"),
         "medadv_orientation_bottom": ("bottom", "bottom_center"),
         "medadv_orientation_left": ("left", "middle_left"),
         "medadv_orientation_right": ("right", "middle_right")}


def has_patient_frame(viewer: napari.Viewer) -> bool:
    """True when the viewer shows a volume read by this plugin (world = RAS+ patient frame)."""
    for lyr in viewer.layers:
        image = lyr.metadata.get("medadv_image")
        if image is not None and getattr(image.geometry, "ndim", 0) == 3:
            return True
    return False


def current_letters(viewer: napari.Viewer) -> dict[str, str] | None:
    """Letters at the top/bottom/left/right edge of the current view, or None when there are
    none to show (3-D view, no patient frame, or a world with other than 3 dimensions)."""
    if viewer.dims.ndisplay != 2 or viewer.dims.ndim != 3 or not has_patient_frame(viewer):
        return None
    return screen_letters(viewer.dims.displayed, camera(viewer).orientation2d)


def set_view(viewer: napari.Viewer, plane: str, convention: str = "radiological") -> None:
    """Show the ``plane`` ("axial", "coronal", "sagittal") in ``convention`` (see
    :func:`napari_medadv.core.orientation.view_settings`) without moving the slice point."""
    if viewer.dims.ndim != 3:
        return
    order, orientation = view_settings(plane, convention)
    point = tuple(viewer.dims.point)
    viewer.dims.order = order
    viewer.dims.axis_labels = AXIS_LABELS
    camera(viewer).orientation = orientation
    viewer.dims.point = point
    viewer.reset_view()


class OrientationMarkers:
    """Keeps four canvas text overlays showing the patient direction at each edge."""

    def __init__(self, viewer: napari.Viewer, font_size: float = 16) -> None:
        self.viewer = viewer
        self.overlays = {}
        self.enabled = True  # the dock's "letters" check box
        canvas = getattr(viewer, "canvas", None)
        holder = getattr(canvas, "overlays", None)
        if holder is None:  # napari < 0.6: no extra canvas overlays to add
            return
        from napari.components.overlays import TextOverlay

        for key, (_, position) in EDGES.items():
            if key not in holder:
                holder[key] = TextOverlay(position=position, font_size=font_size, color=(1.0, 0.85, 0.2, 1.0),
                                          visible=False, gridded=True)  # grid mode: letters in every cell
            self.overlays[key] = holder[key]
        self._add_callbacks()
        self.update()

    def _add_callbacks(self) -> None:
        v = self.viewer
        v.dims.events.order.connect(self.update)
        v.dims.events.ndisplay.connect(self.update)
        v.dims.events.ndim.connect(self.update)
        camera(v).events.orientation.connect(self.update)
        v.layers.events.inserted.connect(self.update)
        v.layers.events.removed.connect(self.update)

    def disconnect(self) -> None:
        v = self.viewer
        for emitter in (v.dims.events.order, v.dims.events.ndisplay, v.dims.events.ndim,
                        camera(v).events.orientation, v.layers.events.inserted, v.layers.events.removed):
            emitter.disconnect(self.update)
        for ov in self.overlays.values():
            ov.visible = False

    @property
    def visible(self) -> bool:
        return any(ov.visible for ov in self.overlays.values())

    def texts(self) -> dict[str, str]:
        """Shown letters by edge (empty when hidden)."""
        return {EDGES[k][0]: ov.text for k, ov in self.overlays.items() if ov.visible}

    def update(self, *_) -> None:
        letters = current_letters(self.viewer) if self.enabled else None
        for key, ov in self.overlays.items():
            if letters is None:
                ov.visible = False
            else:
                ov.text = letters[EDGES[key][0]]
                ov.visible = True


class OrientationWidget(QWidget):
    """Axial / Coronal / Sagittal buttons, a Radiological / Neurological choice and the
    orientation letters on the canvas (on by default)."""

    def __init__(self, viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        tab_on_first_show(self, viewer)
        self.viewer = viewer
        self.markers = OrientationMarkers(viewer)
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.buttons = {}
        for plane in PLANES:
            b = QPushButton(plane.capitalize())
            b.setToolTip(f"{plane} view ({'radiological or neurological' if plane != 'sagittal' else 'anterior left'})")
            row.addWidget(b)
            self.buttons[plane] = b
        lay.addLayout(row)
        row2 = QHBoxLayout()
        self.radiological = QRadioButton("Radiological (L on right)")
        self.neurological = QRadioButton("Neurological (L on left)")
        self.radiological.setChecked(True)
        self._group = QButtonGroup(self)
        self._group.addButton(self.radiological)
        self._group.addButton(self.neurological)
        row2.addWidget(self.radiological)
        row2.addWidget(self.neurological)
        lay.addLayout(row2)
        self.show_letters = QCheckBox("Orientation letters on the canvas")
        self.show_letters.setChecked(True)
        lay.addWidget(self.show_letters)
        self._add_callbacks()

    def _add_callbacks(self) -> None:
        for plane, b in self.buttons.items():
            b.clicked.connect(lambda _=False, p=plane: self.set_view(p))
        self.radiological.toggled.connect(self._convention_changed)
        self.show_letters.toggled.connect(self._letters_toggled)

    @property
    def convention(self) -> str:
        return "radiological" if self.radiological.isChecked() else "neurological"

    def set_convention(self, convention: str) -> None:
        (self.radiological if convention == "radiological" else self.neurological).setChecked(True)

    def set_view(self, plane: str) -> None:
        set_view(self.viewer, plane, self.convention)

    def _convention_changed(self, *_) -> None:
        """Re-apply the current plane (if it is a standard one) in the chosen convention."""
        v = self.viewer
        if v.dims.ndim != 3:
            return
        plane = plane_of(v.dims.order)
        if plane is not None and convention_of(v.dims.displayed, camera(v).orientation2d) != self.convention:
            set_view(v, plane, self.convention)

    def _letters_toggled(self, on: bool) -> None:
        self.markers.enabled = bool(on)
        self.markers.update()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.markers.disconnect()
        super().closeEvent(event)
