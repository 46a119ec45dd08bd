"""Regenerate docs/images/demo.png: the `medadv demo` window on a 1920 x 1080 screen.

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/demo_screenshot.py
"""

from pathlib import Path

import napari
from _screenshot import process, save_window
from napari._qt.qt_event_loop import get_qapp

from napari_medadv._qt.demo import fit_window_to_screen, setup_demo


def main() -> None:
    app = get_qapp()
    viewer = napari.Viewer(title="napari-medadv demo — drag ε in the Attack dock")
    fit_window_to_screen(viewer)
    setup_demo(viewer, device="cpu")
    process(app, 25)  # model load, gradient sign, first live-ε frame and readouts
    out = save_window(app, viewer, Path(__file__).parent / "images" / "demo.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
