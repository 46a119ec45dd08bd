"""Model dock: the channel mapping is visible, refusable and settable; unexpected failures are one
notification line with a log file, and the viewer goes on (issue 10)."""

from __future__ import annotations

import dataclasses

import pytest

pytestmark = pytest.mark.gui

WAIT = 60_000


@pytest.fixture
def docks(make_napari_viewer, qtbot):
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.model_widget import ModelWidget
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = make_napari_viewer()
    ws = {"viewer": viewer}
    for name, cls in (("model", ModelWidget), ("attack", AttackWidget), ("readouts", ReadoutsWidget)):
        ws[name] = cls(viewer)
        viewer.window.add_dock_widget(ws[name], name=name)
    yield ws
    ws["attack"].cancel()
    qtbot.waitUntil(lambda: not ws["attack"].running, timeout=WAIT)


def _open(viewer, image):
    from napari_medadv._qt.layers import layer_data_for_image

    for data, kw, kind in layer_data_for_image(image, name="case"):
        getattr(viewer, f"add_{kind}")(data, **kw)


def _renamed(model, names):
    """The same network declaring other input names (as a bundle in another order would)."""
    info = dataclasses.replace(model.info, channel_names=list(names))
    return dataclasses.replace(model, info=info, channel_map=None)


def test_channel_mismatch_is_shown_and_the_mapping_field_fixes_it(docks, qtbot, glioma_small, unet2d, monkeypatch):
    import napari_medadv._qt.workers as workers

    errors = []
    monkeypatch.setattr(workers, "show_error", errors.append)
    viewer, mw, aw = docks["viewer"], docks["model"], docks["attack"]
    _open(viewer, glioma_small)
    model = _renamed(unet2d, ["T1c", "T1", "T2", "ADC"])
    mw.session.set_model(model)
    note = mw.update_channel_note()
    assert note.startswith("⚠") and "[T1c, T1, T2, ADC]" in note and "set 'channels' above" in note
    aw.set_attack("fgsm", eps=0.03)
    assert aw.run() is None  # refused before any work, with one notification naming the fix
    assert len(errors) == 1 and "ADC" in errors[0] and "'channels' in the Model dock" in errors[0]

    mw.channels.setText("t1ce, t1, t2, flair")
    mw.apply_channel_map()
    assert model.channel_map == ["t1ce", "t1", "t2", "flair"]
    assert "as given: T1c <- t1ce, T1 <- t1, T2 <- t2, ADC <- flair" in mw.channel_note.text()
    job = aw.run()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    qtbot.waitUntil(lambda: not aw.running, timeout=WAIT)
    o = aw.session.shown.outcome
    assert o.channel_mapping.order == (1, 0, 2, 3) and o.channel_mapping.how == "given"
    # layers stay in the image's own order and names
    assert all(f"case {c} adversarial" in viewer.layers for c in ("t1", "t1ce", "t2", "flair"))


def test_matching_names_are_reported_in_the_dock(docks, glioma_small, unet2d):
    viewer, mw = docks["viewer"], docks["model"]
    _open(viewer, glioma_small)
    mw.session.set_model(_renamed(unet2d, ["T1w", "T1Gd", "T2w", "T2-FLAIR"]))
    assert mw.update_channel_note() == ("channels matched by name: T1w <- t1, T1Gd <- t1ce, T2w <- t2, "
                                        "T2-FLAIR <- flair")


def test_unexpected_error_is_one_line_with_a_log(tmp_path, monkeypatch):
    import napari_medadv._qt.workers as workers

    shown = []
    monkeypatch.setattr(workers, "show_error", shown.append)
    monkeypatch.setenv("MEDADV_LOG_DIR", str(tmp_path))
    try:
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
    except RuntimeError as exc:
        workers.report_error(exc, "attack")
    assert len(shown) == 1 and "\n" not in shown[0]
    assert shown[0].startswith("attack failed: internal error: RuntimeError: CUDA error: an illegal memory access")
    log = shown[0].rsplit("(details: ", 1)[1].rstrip(")")
    assert log.startswith(str(tmp_path)) and "Traceback" in open(log).read()
