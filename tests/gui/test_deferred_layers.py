"""Live frames record data for hidden result layers, applied when a layer is shown: only to that
very layer — another viewer's layer of the same name never receives it."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_deferred_data_reaches_only_its_own_viewers_layer(make_napari_viewer):
    from napari_medadv._qt.results import _DEFERRED, _set_layer, flush_deferred, forget_deferred

    va, vb = make_napari_viewer(), make_napari_viewer()
    for v in (va, vb):
        v.add_image(np.zeros((4, 5), np.float32), name="case t1 adversarial", visible=False)
    _set_layer(va, "case t1 adversarial", "image", lambda: np.ones((4, 5), np.float32), defer_hidden=True)
    assert not va.layers["case t1 adversarial"].data.any()  # hidden: recorded, not applied
    vb.layers["case t1 adversarial"].visible = True
    assert not vb.layers["case t1 adversarial"].data.any()  # viewer A's pending data stays A's
    va.layers["case t1 adversarial"].visible = True
    assert (va.layers["case t1 adversarial"].data == 1).all()
    assert flush_deferred(va) == 0  # nothing left to apply

    _set_layer(vb, "case t1 adversarial", "image", np.full((4, 5), 2, np.float32), defer_hidden=True)
    vb.layers["case t1 adversarial"].visible = False
    _set_layer(vb, "case t1 adversarial", "image", np.full((4, 5), 3, np.float32), defer_hidden=True)
    assert id(vb) in _DEFERRED
    forget_deferred(id(vb))  # the viewer closed: its pending arrays are let go
    assert id(vb) not in _DEFERRED
