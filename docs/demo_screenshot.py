"""Regenerate docs/images/demo.png: the `medadv demo` window on a 1920 x 1080 screen.

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/demo_screenshot.py
"""

import time
from pathlib import Path

import imageio.v3 as iio
import napari
from napari._qt.dialogs.qt_notification import NapariQtNotification
from napari._qt.qt_event_loop import get_qapp

from napari_medadv._qt.demo import fit_window_to_screen, setup_demo


def main() -> None:
    app = get_qapp()
    viewer = napari.Viewer(title="napari-medadv demo — drag ε in the Attack dock")
    fit_window_to_screen(viewer)
    setup_demo(viewer, device="cpu")
    t0 = time.time()
    while time.time() - t0 < 25:  # model load, gradient sign, first live-ε frame and readouts
        app.processEvents()
        time.sleep(0.02)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # napari's PyQt5 deprecation toast is not part of the demo
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = Path(__file__).parent / "images" / "demo.png"
    iio.imwrite(out, viewer.screenshot(canvas_only=False)[..., :3])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
