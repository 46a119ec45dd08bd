"""Our docks opened one by one, as napari's Plugins menu opens them, on a laptop-size window:
they share one tab stack, the window keeps its height and the canvas keeps its room."""

from __future__ import annotations


def _add_as_the_menu_does(viewer, widget, name, qtbot):
    viewer.window.add_dock_widget(widget, name=name)  # what napari's Plugins menu calls
    qtbot.wait(50)


def test_docks_opened_one_by_one_share_tabs_and_leave_the_canvas_room(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.docking import dock_of
    from napari_medadv._qt.model_widget import ModelWidget
    from napari_medadv._qt.plots_widget import PlotsWidget
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = make_napari_viewer(show=True)
    qwin = viewer.window._qt_window
    qwin.resize(1360, 768)
    qtbot.wait(50)
    widgets = []
    for cls, name in ((ModelWidget, "Model"), (AttackWidget, "Attack"), (ReadoutsWidget, "Readouts"),
                      (PlotsWidget, "Plots")):
        w = cls(viewer)
        widgets.append(w)
        _add_as_the_menu_does(viewer, w, name, qtbot)
    docks = [dock_of(w) for w in widgets]
    assert all(isinstance(d, QDockWidget) for d in docks)
    qtbot.waitUntil(lambda: qwin.height() <= 768, timeout=2000)
    assert set(qwin.tabifiedDockWidgets(docks[0])) == set(docks[1:])  # one stack of four tabs
    assert not widgets[-1].visibleRegion().isEmpty() and widgets[0].visibleRegion().isEmpty()  # newest in front
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 400 and canvas.height() >= 500


def test_the_attack_form_scrolls_instead_of_widening_the_dock(make_napari_viewer, qtbot):
    from napari_medadv._qt.attack import AttackWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1360, 768)
    aw = AttackWidget(viewer)
    _add_as_the_menu_does(viewer, aw, "Attack", qtbot)
    assert aw.minimumSizeHint().width() < 600  # was 902 px (one long check box label)
    assert viewer.window._qt_viewer.canvas.native.width() >= 400
    assert aw.scroll.widget() is aw.form and aw.scroll.minimumWidth() >= aw.form.minimumSizeHint().width()


def test_the_demo_keeps_its_own_arrangement(make_napari_viewer, qtbot):
    """setup_demo places its docks (Model | Readouts | Plots tabbed over the Attack dock): they are
    not re-tabbed when shown."""
    from napari_medadv._qt.demo import setup_demo
    from napari_medadv._qt.docking import dock_of

    viewer = make_napari_viewer(show=True)
    widgets = setup_demo(viewer, device="cpu", sample="cxr", live=False)
    qtbot.wait(100)
    qwin = viewer.window._qt_window
    attack, model = dock_of(widgets["Attack"]), dock_of(widgets["Model"])
    assert attack not in qwin.tabifiedDockWidgets(model)
    assert attack.isVisible() and model.isVisible()
    qtbot.waitUntil(lambda: widgets["Attack"].session.model is not None, timeout=60_000)  # its load is done


def test_the_demo_fits_the_screen_its_tall_forms_scroll(make_napari_viewer, qtbot):
    """The Model and Plots forms (388 and 445 px at least) scroll inside their docks, as the Attack
    form does, so the demo's right column fits a laptop screen; setup_demo keeps the window on it."""
    from napari_medadv._qt.demo import setup_demo
    from napari_medadv._qt.docking import dock_of

    viewer = make_napari_viewer(show=True)
    qwin = viewer.window._qt_window
    widgets = setup_demo(viewer, device="cpu", sample="glioma", live=False)
    qtbot.waitUntil(lambda: widgets["Attack"].session.model is not None, timeout=60_000)
    qtbot.wait(100)
    avail = qwin.screen().availableGeometry()
    assert qwin.frameGeometry().height() <= avail.height() and qwin.frameGeometry().top() >= avail.top()
    assert qwin.minimumSizeHint().height() <= avail.height()
    for name in ("Model", "Plots", "Attack"):
        w = widgets[name]
        assert w.scroll.widget() is w.form and w.scroll.minimumWidth() >= w.form.minimumSizeHint().width()
    for name in ("Model", "Plots"):
        assert dock_of(widgets[name]).minimumSizeHint().height() < 150, name
        assert widgets[name].form.minimumSizeHint().height() > 300  # what it would have asked for


def test_closing_the_viewer_while_live_eps_prepares_raises_nothing(make_napari_viewer, qtbot, monkeypatch):
    """The live-ε preparation outlives the closed viewer (the lane finishes its step); its
    callbacks then find the dock's widgets deleted and must not raise into the event loop
    (pytest-qt fails the test on any exception caught there)."""
    import threading

    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.attack import live as live_mod

    release = threading.Event()

    def held(*args):  # a preparation that fails once released, as a bad input would
        while not release.wait(0.01):
            yield 0, 1, None
        raise ValueError("held preparation released")

    monkeypatch.setattr(live_mod, "prepare_live_job", held)
    monkeypatch.setattr("napari_medadv._qt.attack.live.report_error", lambda *a, **k: None)
    viewer = make_napari_viewer()
    from napari_medadv._sample_data import chest_radiograph_path
    from napari_medadv.core.models import load_model

    viewer.open(str(chest_radiograph_path()), plugin="napari-medadv")
    aw = AttackWidget(viewer)
    viewer.window.add_dock_widget(aw, name="Attack")
    from napari_medadv._qt.lane import LANE

    aw.session.set_model(LANE.call(load_model, "demo:cxr", device="cpu"))  # where the docks load models
    aw.live.setChecked(True)
    qtbot.waitUntil(lambda: aw.live_eps._job is not None and aw.live_eps._job.running, timeout=10_000)
    job = aw.live_eps._job
    with qtbot.waitSignal(aw.destroyed, timeout=10_000):
        viewer.close()  # deletes the docks
    release.set()
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
