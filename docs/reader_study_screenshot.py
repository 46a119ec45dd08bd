"""Regenerate docs/images/reader_study.png: a pair trial of the Reader study dock on the glioma
phantom (FLAIR) with the 3-D demo UNet; FGSM and MR motion matched to 35 dB (CPU, under a minute).

    xvfb-run -a -s "-screen 0 1700x1100x24" python docs/reader_study_screenshot.py [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "images" / "reader_study.png"))
    p.add_argument("--size", default="1700x1100", help="window size WxH")
    args = p.parse_args(argv)

    import napari
    from _screenshot import process, save_window
    from qtpy.QtWidgets import QApplication

    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._qt.reader import ReaderStudyWidget
    from napari_medadv._qt.readouts_widget import ReadoutsWidget
    from napari_medadv.core.data.paths import sample_data_dir
    from napari_medadv.core.io import read_image
    from napari_medadv.core.models import load_model

    viewer = napari.Viewer(title="napari-medadv — blinded reader study")
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    for data, kw, kind in layer_data_for_image(read_image(sample_data_dir() / "glioma" / "glioma_001")):
        getattr(viewer, f"add_{kind}")(data, **kw)
    viewer.window.add_dock_widget(ReadoutsWidget(viewer), name="Readouts")  # hidden during the trial
    dock = ReaderStudyWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Reader study")
    dock.session.set_model(load_model("demo:unet3d", device="cpu"))
    s = dock.setup
    s.check(s.sources, {"fgsm", "motion"})
    s.psnrs.setText("35")
    s.repeats.setValue(2)
    s.out.setText(str(Path(tempfile.mkdtemp()) / "reader_study.csv"))
    app = QApplication.instance()
    if dock.start() is None:
        raise SystemExit(f"the study did not start: {s.status.text()}")
    t0 = time.perf_counter()
    while not dock.in_trial:
        process(app, 0.1)
        if time.perf_counter() - t0 > 600:
            raise SystemExit("the altered images were not ready in 10 minutes")
    dock.handle_key("left")
    dock.handle_key("4")
    process(app, 1.0)
    out = save_window(app, viewer, Path(args.out))
    print(f"wrote {out} (trial 1 of {len(dock.plan)}: {dock.trial.source} at {dock.trial.target_psnr} dB, "
          f"altered image on the {'left' if dock.trial.shown_left == 'altered' else 'right'})")
    dock.abort()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
