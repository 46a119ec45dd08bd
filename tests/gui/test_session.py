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
