"""A progress bar that is drawn with the window's next paint instead of at once.

``QProgressBar.setValue`` repaints the bar synchronously whenever the drawn bar or its text
changes. In a napari window every repaint recomposes the whole window through OpenGL (the canvas is
a ``QOpenGLWidget``): 10-30 ms on the Qt thread under software OpenGL, plus the renderer's own
threads, on the cores an attack is computing on. The Attack dock moves its bar at every step, each
time just before a frame's layer updates start their own paint: one paint instead of two.
"""

from __future__ import annotations

from qtpy.QtWidgets import QProgressBar


class ProgressBar(QProgressBar):
    """:class:`QProgressBar` whose :meth:`setValue` schedules the repaint (``update``) rather than
    doing it (``repaint``); the value, ``valueChanged`` and the text are as QProgressBar's."""

    def setValue(self, value: int) -> None:  # noqa: N802 (Qt's name)
        enabled = self.updatesEnabled()
        self.setUpdatesEnabled(False)  # QProgressBar's own repaint() then draws nothing
        try:
            super().setValue(value)
        finally:
            self.setUpdatesEnabled(enabled)
        if enabled:
            self.update()
