"""Regenerate docs/images/demo.png: the `medadv demo` window on a 1920 x 1080 screen
(``--sample glioma-1mm``: docs/images/demo_1mm.png, the 1 mm case).

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/demo_screenshot.py [--sample glioma-1mm]
"""

import argparse

import time
from pathlib import Path

import napari
from _screenshot import process, save_window
from napari._qt.qt_event_loop import get_qapp

from napari_medadv._qt.demo import fit_window_to_screen, setup_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", default="glioma", choices=["glioma", "glioma-1mm", "cxr"])
    ap.add_argument("--wait", type=float, default=None, help="seconds to let the first frame arrive")
    args = ap.parse_args()
    app = get_qapp()
    viewer = napari.Viewer(title="napari-medadv demo — drag ε in the Attack dock")
    fit_window_to_screen(viewer)
    widgets = setup_demo(viewer, device="cpu", sample=args.sample)
    # model load, gradient sign, first live-ε frame and readouts (the 1 mm case: ~10x the voxels)
    wait = args.wait if args.wait is not None else (25 if args.sample != "glioma-1mm" else 90)
    t0 = time.time()
    while time.time() - t0 < wait:
        process(app, 1)
        shown = widgets["Attack"].session.shown
        if shown is not None and shown.outcome.metrics.get("image_quality", {}).get("ssim") is not None:
            process(app, 3)
            break
    name = {"glioma": "demo.png", "glioma-1mm": "demo_1mm.png", "cxr": "demo_cxr.png"}[args.sample]
    out = save_window(app, viewer, Path(__file__).parent / "images" / name)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
