"""The garbage-collector freeze: once per process, undone when a frozen layer or model may die."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_medadv._qt import gc_freeze

SLOW = 60_000  # ms: a gc.collect() over a viewer's objects is slow on a loaded 2-core CI machine


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(gc_freeze, "_state", {"armed": 0, "frozen": False, "model_frozen": False})
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_frozen_after_set_up_and_a_removed_layer_is_freed(qtbot, fresh_state):
    import napari

    from napari_medadv._qt.session import Session

    viewer = napari.Viewer(show=False)
    try:
        layer = viewer.add_image(np.zeros((8, 8), np.float32), name="original")
        ref = weakref.ref(layer)
        Session.of(viewer)
        qtbot.waitUntil(gc_freeze.is_frozen, timeout=SLOW)
        assert gc.get_freeze_count() > 0
        del layer
        viewer.layers.remove("original")  # a frozen layer may now die: the freeze is undone
        assert not gc_freeze.is_frozen() and gc.get_freeze_count() == 0
        # freed by the cycle collector (Qt may first need a turn to delete the layer's controls)
        qtbot.waitUntil(lambda: gc.collect() >= 0 and ref() is None, timeout=SLOW)
        Session.of(viewer)  # the same viewer's session: not armed again
        qtbot.wait(50)
        assert not gc_freeze.is_frozen()
    finally:
        viewer.close()


def test_replacing_a_model_loaded_before_the_freeze_unfreezes(qtbot, fresh_state, unet2d):
    import napari

    from napari_medadv._qt.session import Session

    viewer = napari.Viewer(show=False)
    try:
        session = Session.of(viewer)
        session.set_model(unet2d)
        qtbot.waitUntil(gc_freeze.is_frozen, timeout=SLOW)
        session.set_model(None)
        assert not gc_freeze.is_frozen()
    finally:
        viewer.close()


def test_a_closed_viewer_does_not_undo_the_next_viewers_freeze(qtbot, fresh_state):
    import napari

    from napari_medadv._qt.session import Session

    first = napari.Viewer(show=False)
    first.add_image(np.zeros((8, 8), np.float32))
    Session.of(first)
    qtbot.waitUntil(gc_freeze.is_frozen, timeout=SLOW)
    window = first.window._qt_window
    first.close()  # its layers are removed: unfrozen
    assert not gc_freeze.is_frozen()
    second = napari.Viewer(show=False)
    try:
        second.add_image(np.zeros((8, 8), np.float32), name="kept")
        Session.of(second)
        qtbot.waitUntil(gc_freeze.is_frozen, timeout=SLOW)
        try:  # the first viewer's window deleted late, from the event loop, after this freeze
            window.destroyed.emit()
        except RuntimeError:  # already deleted (and its signal delivered before the freeze)
            pass
        assert gc_freeze.is_frozen()  # its late callbacks did not undo the second viewer's freeze
        second.layers.remove("kept")
        assert not gc_freeze.is_frozen()
    finally:
        second.close()
