"""The docks talk through the Session (choices, device), never to each other (issue 11)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_docks_share_choices_and_device_through_the_session(make_napari_viewer, glioma_small, unet2d):
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._qt.model_widget import ModelWidget
    from napari_medadv._qt.plots_widget import PlotsWidget
    from napari_medadv._qt.session import Session

    viewer = make_napari_viewer()
    mw, aw, pw = ModelWidget(viewer), AttackWidget(viewer), PlotsWidget(viewer)
    for data, kw, kind in layer_data_for_image(glioma_small, name="case"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    session = Session.of(viewer)
    assert not hasattr(session, "widgets")
    # the Attack dock's picks are published as layer names; the other docks read them there
    assert session.choices.image == aw.image_combo.currentData() == "case flair"
    assert session.choices.labels == "case labels" and session.choices.roi == "auto"
    aw.image_combo.setCurrentIndex(aw.image_combo.findData("case t2"))
    assert session.choices.image == "case t2"
    assert mw._image_layer().name == "case t2"
    session.set_model(unet2d)
    src, labels, roi = pw._prepare(with_outcomes=False)
    assert src.case == "case" and labels is not None and roi == "auto"
    # a device change made anywhere reaches the Model dock through the session
    seen = []
    session.device_changed.connect(seen.append)
    mw.picker.device.setCurrentText("auto")
    session.move_models("cpu")
    assert seen == ["cpu"] and mw.picker.device.currentText() == "cpu"
    for w in (mw, aw, pw):
        w.close()


def test_moving_the_models_runs_on_the_torch_lane_then_announces(make_napari_viewer, qtbot):
    """A device move (the GPU out-of-memory remedy) is one lane task — never beside a live frame
    using the model, never on the Qt thread — and the device change is announced after it."""
    import threading

    from napari_medadv._qt.lane import LANE
    from napari_medadv._qt.session import Session
    from napari_medadv.core.models import load_model

    session = Session.of(make_napari_viewer())
    model = load_model("demo:cxr", device="cpu")  # its own copy: it ends on the meta device
    session.set_model(model)
    where, seen, after = [], [], []
    real = model.module.to

    def to(*args, **kwargs):
        where.append(LANE.on_lane() and threading.current_thread() is not threading.main_thread())
        return real(*args, **kwargs)

    model.module.to = to
    session.device_changed.connect(seen.append)
    session.move_models("meta", then=lambda: after.append(model.device.type))
    assert seen == []  # not announced before the move ran
    qtbot.waitUntil(lambda: bool(seen), timeout=60_000)
    assert where == [True] and model.device.type == "meta"
    assert seen == ["meta"] and after == ["meta"] and session.model is model
