"""What the docs' screenshot scripts share: let napari settle, drop the toasts, save the window."""

import time
from pathlib import Path

import imageio.v3 as iio
from napari._qt.dialogs.qt_notification import NapariQtNotification


def process(app, seconds: float) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def save_window(app, viewer, out: Path) -> Path:
    """Close napari's toasts (the PyQt5 deprecation toast is not part of the picture), let the
    window repaint, and write ``viewer.screenshot(canvas_only=False)`` as an RGB PNG."""
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    process(app, 1.0)
    iio.imwrite(out, viewer.screenshot(canvas_only=False)[..., :3])
    return out
