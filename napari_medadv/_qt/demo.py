"""``medadv demo``: napari with the glioma sample case, the 3-D demo UNet and the docks open,
FGSM live ε switched on — ready to drag ε."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-medadv"
DEMO_EPS = 0.03


def axial_view(viewer: napari.Viewer, layer, convention: str = "radiological") -> None:
    """Axial view (radiological by default: anterior up, patient's left on screen right) of
    any volume, whatever its stored orientation — napari's world is the RAS+ patient frame
    (see :mod:`napari_medadv.core.orientation`) — centred on the labelled tumour (for a Labels
    layer: on each axis, the slice with the most labelled voxels; else the volume's centre)."""
    if layer.ndim != 3:
        return
    from .orientation import set_view  # deferred, as the docks in setup_demo (Qt)

    data = np.asarray(layer.data)
    if layer.__class__.__name__ == "Labels" and data.any():
        other = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
        idx = [int(np.argmax((data != 0).sum(axis=other[d]))) for d in range(3)]
    else:
        idx = [n // 2 for n in data.shape]
    viewer.dims.point = tuple(float(w) for w in layer.data_to_world(idx))
    set_view(viewer, "axial", convention)


#: ``--warm``: the iterative attack selected with live ε, whose ε cache fills in the background
WARM_ATTACK = ("ifgsm", {"steps": 5})


def setup_demo(viewer: napari.Viewer, *, device: str = "auto", sample: str = "glioma",
               eps: float = DEMO_EPS, live: bool = True, warm: bool = False) -> dict:
    """Open the sample, add the four docks, load the matching demo model and, once it is loaded,
    select FGSM at ``eps`` with live ε on. Returns the dock widgets by name.

    ``warm``: select i-FGSM (5 steps) instead; its first live result starts filling the ε cache
    (:data:`~.attack.live_iter.FILL_GRID`) in the background, so later slider moves over those
    values show a finished result without a model call (the status line counts the cache)."""
    viewer.open_sample(PLUGIN, sample)
    # deferred: the `napari-medadv` script and `medadv demo` import this module before napari
    # starts; the docks import Qt, napari and torch (`napari-medadv --help` stays instant)
    from .attack import AttackWidget
    from .docking import placed
    from .model_widget import ModelWidget
    from .orientation import OrientationWidget
    from .plots_widget import PlotsWidget
    from .readouts_widget import ReadoutsWidget

    from qtpy.QtCore import QTimer

    widgets, docks = {}, {}

    qwin = viewer.window._qt_window
    for name, cls in (("Orientation", OrientationWidget), ("Model", ModelWidget), ("Attack", AttackWidget),
                      ("Readouts", ReadoutsWidget), ("Plots", PlotsWidget)):
        if name == "Orientation" and not sample.startswith("glioma"):
            continue  # a radiograph has no patient frame: no planes, no letters
        w = placed(cls(viewer))  # arranged below, not tabbed on show
        if name == "Attack":
            # below the orientation dock and the tabs (their minimum heights add up on the right):
            # the form scrolls in 38 % of the screen, so the window is never taller than the screen
            # (30 % below 900 px: on a 768-px laptop or projector the readouts keep a few rows)
            screen = qwin.screen() if hasattr(qwin, "screen") else None
            avail = screen.availableGeometry().height() if screen else 1080
            w.fit_form(max_height=int((0.38 if avail >= 900 else 0.30) * avail))
        docks[name] = viewer.window.add_dock_widget(w, name=f"{name} (napari-medadv)", area="right",
                                                    add_vertical_stretch=False)
        widgets[name] = w
    # right: Model | Readouts | Plots as tabs over the Attack dock (the model is picked once)
    qwin.tabifyDockWidget(docks["Model"], docks["Readouts"])
    qwin.tabifyDockWidget(docks["Readouts"], docks["Plots"])
    docks["Model"].raise_()

    QTimer.singleShot(0, lambda: _settle(viewer, docks))
    labels = [lyr for lyr in viewer.layers if lyr.__class__.__name__ == "Labels"]
    if labels:
        axial_view(viewer, labels[0])
        labels[0].contour = 1  # ground truth as an outline over the (adversarial) prediction
    attack = widgets["Attack"]
    spec = "demo:unet3d" if sample.startswith("glioma") else "demo:cxr"

    def ready(model):
        if warm:
            attack.set_attack(WARM_ATTACK[0], eps=eps, **WARM_ATTACK[1])
        else:
            attack.set_attack("fgsm", eps=eps)
        if live:
            attack.live.setChecked(True)
        attack.session.model_changed.disconnect(ready)

    def first_result(shown):
        attack.session.result_changed.disconnect(first_result)
        docks["Readouts"].raise_()
        for lyr in labels:  # ground-truth outline on top of the (adversarial) prediction
            viewer.layers.move(viewer.layers.index(lyr), len(viewer.layers))
        viewer.layers.selection.active = viewer.layers[-1]
        viewer.reset_view()

    attack.session.model_changed.connect(ready)
    attack.session.result_changed.connect(first_result)
    widgets["Model"].load(spec, device=device)
    return widgets


def _settle(viewer: napari.Viewer, docks: dict) -> None:
    """Once the docks are laid out: the window back on the screen, the orientation buttons at their
    height and the rest of the right column shared by the tabs and the Attack form."""
    from qtpy.QtCore import Qt

    qwin = viewer.window._qt_window
    keep_on_screen(qwin)  # the docks' preferred heights (the plots' figure) grew the window
    column = [docks[n] for n in ("Orientation", "Model", "Attack") if n in docks]
    fixed = docks["Orientation"].minimumSizeHint().height() if "Orientation" in docks else 0
    rest = max(0, sum(d.height() for d in column) - fixed)
    qwin.resizeDocks(column, ([fixed] if fixed else []) + [int(0.45 * rest), int(0.55 * rest)], Qt.Vertical)
    viewer.reset_view()  # the docks took their width: fit the image into the canvas left over


def keep_on_screen(qwin) -> None:
    """No taller than the screen's free height (the docks scroll inside themselves, so the window's
    minimum fits a 768-px screen), and inside it."""
    screen = qwin.screen() if hasattr(qwin, "screen") else None
    if screen is None or qwin.isMaximized() or qwin.isFullScreen():
        return
    geo = screen.availableGeometry()
    if qwin.frameGeometry().height() > geo.height():
        chrome = qwin.frameGeometry().height() - qwin.height()  # title bar and frame, if any
        qwin.resize(qwin.width(), max(qwin.minimumSizeHint().height(), geo.height() - chrome))
    top = min(max(qwin.frameGeometry().y(), geo.y()), geo.y() + max(0, geo.height() - qwin.frameGeometry().height()))
    qwin.move(qwin.frameGeometry().x(), top)


def fit_window_to_screen(viewer, fraction: float = 0.92) -> None:
    """Size the window to most of the screen: the four docks need ~430 px beside the image, and
    napari's default window left the canvas a narrow strip on a laptop screen."""
    qwin = viewer.window._qt_window
    screen = qwin.screen() if hasattr(qwin, "screen") else None
    if screen is None:
        return
    geo = screen.availableGeometry()
    w, h = int(geo.width() * fraction), int(geo.height() * fraction)
    qwin.resize(max(w, qwin.width()), max(h, qwin.height()))
    qwin.move(geo.x() + (geo.width() - qwin.width()) // 2, geo.y() + (geo.height() - qwin.height()) // 2)


def launch_demo(device: str = "auto", sample: str = "glioma", warm: bool = False) -> int:
    import napari

    viewer = napari.Viewer(title="napari-medadv demo — drag ε in the Attack dock")
    fit_window_to_screen(viewer)
    setup_demo(viewer, device=device, sample=sample, warm=warm)
    napari.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``napari-medadv`` console script: the napari demo (same as ``medadv demo``)."""
    import argparse

    p = argparse.ArgumentParser(prog="napari-medadv", description="napari with the napari-medadv demo, ready to drag ε")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--sample", choices=["glioma", "glioma-1mm", "cxr"], default="glioma")
    p.add_argument("--warm", action="store_true", help="live i-FGSM, its ε cache filled in the background")
    args = p.parse_args(argv)
    return launch_demo(device=args.device, sample=args.sample, warm=args.warm)


def entry() -> int:
    """The ``napari-medadv`` console script: :func:`main`, with the memory allocator set up for
    large tensors first, while this is the only thread (see :mod:`napari_medadv.core.allocator`;
    ``MEDADV_ALLOCATOR=system`` keeps glibc's defaults)."""
    from napari_medadv.core.allocator import reuse_freed_memory

    reuse_freed_memory()
    return main()
