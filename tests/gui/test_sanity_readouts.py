"""Readouts dock, sanity checks row: a tiny model behind a rounding step (gradient masking) fails
the zero-gradient check in a worker; the rows say FAIL with the warning as tooltip, a napari
warning is shown, and the rows go when another model's result is shown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
import _tiny_models  # noqa: E402,F401  (registers the tiny: and masked: schemes)

pytestmark = pytest.mark.gui

WAIT = 240_000  # generous: the shared test machine is often heavily loaded


@pytest.fixture
def docks(make_napari_viewer, qtbot):
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = make_napari_viewer()
    aw, rw = AttackWidget(viewer), ReadoutsWidget(viewer)
    for name, w in (("attack", aw), ("readouts", rw)):
        viewer.window.add_dock_widget(w, name=name)
    yield viewer, aw, rw
    aw.cancel()
    rw.sanity.cancel()
    qtbot.waitUntil(lambda: not aw.running and not rw.sanity.busy, timeout=WAIT)


def _attack(viewer, aw, qtbot, image, model):
    from napari_medadv._qt.layers import layer_data_for_image

    if not viewer.layers:
        for data, kw, kind in layer_data_for_image(image, name="case"):
            getattr(viewer, f"add_{kind}")(data, **kw)
    aw.session.set_model(model)
    aw.set_attack("fgsm", eps=0.03)
    job = aw.run()
    qtbot.waitUntil(lambda: not job.running and not aw.running, timeout=WAIT)


def test_sanity_row_flags_a_masked_model(docks, qtbot, glioma_small, monkeypatch):
    from napari_medadv.core.models import load_model

    viewer, aw, rw = docks
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", shown.append)
    _attack(viewer, aw, qtbot, glioma_small, load_model("masked:round", device="cpu"))
    assert rw.sanity.button.isEnabled() and rw.sanity.table.isHidden()
    errors = []
    monkeypatch.setattr("napari_medadv._qt.workers.report_error", lambda exc, *a, **k: errors.append(exc))
    job = rw.sanity.run()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    assert not errors
    qtbot.waitUntil(lambda: rw.sanity.result is not None, timeout=WAIT)
    assert not rw.sanity.table.isHidden()  # the viewer is not shown in tests: isVisible() would be False
    t = rw.sanity.table
    rows = {t.item(i, 0).text(): (t.item(i, 1).text(), t.item(i, 0).toolTip()) for i in range(t.rowCount())}
    assert rows["zero_gradients"][0] == "FAIL" and "possible gradient masking" in rows["zero_gradients"][1]
    assert rows["stochastic_outputs"][0] == "pass"
    assert any("zero_gradients" in m and "masked:round" in m for m in shown)
    assert "zero_gradients,FAIL" in rw.csv_text()
    # another model's result: the checks no longer apply, the rows go
    _attack(viewer, aw, qtbot, glioma_small, load_model("tiny:0", device="cpu"))
    assert rw.sanity.table.isHidden() and rw.sanity.button.isEnabled()
