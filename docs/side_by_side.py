"""Regenerate docs/images/side_by_side.png: FGSM ε = 3 % vs an MR artifact at the same PSNR,
side by side, on the glioma sample with the 3-D demo UNet (CPU, about a minute).

    xvfb-run -a python docs/side_by_side.py [--artifact biasfield] [--out docs/images/side_by_side.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", default="biasfield")
    p.add_argument("--eps", type=float, default=0.03)
    p.add_argument("--out", default=str(HERE / "images" / "side_by_side.png"))
    p.add_argument("--size", default="1600x900", help="window size WxH")
    p.add_argument("--caption-size", type=float, default=16, help="canvas-only image: caption font size")
    p.add_argument("--canvas-scale", type=float, default=8.0, help="canvas-only image: screen pixels per voxel")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medadv._qt.demo import setup_demo
    from napari_medadv._qt.export import save_screenshot

    viewer = napari.Viewer(title="napari-medadv — adversarial vs MR artifact at matched PSNR")
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    widgets = setup_demo(viewer, device="cpu", live=False, eps=args.eps)
    aw = widgets["Attack"]
    app = QApplication.instance()

    def wait(cond, timeout=600.0):
        t0 = time.perf_counter()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the viewer did not get there in time")

    wait(lambda: aw.session.model is not None and aw.attack_name() == "fgsm")
    wait(lambda: aw.run() is not None or False, timeout=5)
    wait(lambda: not aw.running and aw.session.last_attack is not None)
    job = aw.match(args.artifact)
    wait(lambda: not aw.running and job is not None and not job.running)
    wait(lambda: aw.session.matched is not None)
    aw.side_by_side(True)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # start-up warnings are not part of the figure
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = save_screenshot(viewer, args.out)
    import imageio.v3 as iio

    for lyr in viewer.layers:  # the captions, larger for a slide-sized image
        if lyr.metadata.get("medadv", {}).get("role") == "side-by-side caption":
            lyr.name_overlay.font_size = args.caption_size

    canvas = Path(args.out).with_name(Path(args.out).stem + "_canvas.png")
    img = viewer.export_figure(scale_factor=args.canvas_scale)  # the grid at the data extent, no margins
    iio.imwrite(canvas, img)
    print(f"wrote {out} and {canvas}: {aw.session.matched.summary()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
