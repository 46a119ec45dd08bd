"""Matched quality in the Attack dock: an MR artifact at the PSNR of the current attack (layers
beside the attack's, readouts of both), the side-by-side grid view, and Cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_medadv._qt.compat import grid

from napari_medadv.core import metrics as M
from napari_medadv.core.matching import DEFAULT_TOL, image_quality

pytestmark = pytest.mark.gui

WAIT = 60_000
CHANNELS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture
def dock(make_napari_viewer, qtbot, glioma_small, unet2d):
    """Attack + Readouts docks on the small glioma crop, with the 2-D demo UNet."""
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = make_napari_viewer()
    for data, kw, kind in layer_data_for_image(glioma_small, name="case"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    aw, rw = AttackWidget(viewer), ReadoutsWidget(viewer)
    viewer.window.add_dock_widget(aw, name="attack")
    viewer.window.add_dock_widget(rw, name="readouts")
    aw.session.set_model(unet2d)
    yield viewer, aw, rw
    aw.cancel()
    qtbot.waitUntil(lambda: not aw.running, timeout=WAIT)


@pytest.fixture
def docks(dock, qtbot):
    """:func:`dock` with an FGSM (ε = 3 %) result shown."""
    viewer, aw, rw = dock
    assert not aw.match_btn.isEnabled()  # no attack yet
    aw.set_attack("fgsm", eps=0.03)
    _wait(qtbot, aw.run(), aw)
    return dock


def _wait(qtbot, job, widget):
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT)  # layers go on one per event-loop turn


def _stack(viewer, what):
    return np.stack([viewer.layers[f"case {c} {what}"].data for c in CHANNELS])


def _warnings(monkeypatch) -> list[str]:
    import napari.utils.notifications as nt

    messages: list[str] = []
    monkeypatch.setattr(nt, "show_warning", messages.append)
    return messages


def test_artifact_entries_never_send_eps(dock):
    """MR artifacts take a severity, not ε: the dock must not pass one (MRArtifact rejects it)."""
    from napari_medadv._qt.matched import artifact_choices

    _, aw, _ = dock
    names = [n for _, n in artifact_choices()]
    assert names == ["motion", "ghosting", "spike", "biasfield", "gaussnoise", "blur"]
    for name in names:
        aw.set_attack(name, severity=0.3)
        assert aw.params() == {"severity": pytest.approx(0.3)}
        assert not aw.eps_slider.isEnabled()
        with pytest.raises(ValueError, match="eps"):
            aw.set_attack(name, eps=0.03)
    aw.set_attack("fgsm")
    assert "eps" in aw.params()


def test_match_psnr_of_current_attack(docks, qtbot, glioma_small, monkeypatch):
    viewer, aw, rw = docks
    warned = _warnings(monkeypatch)
    attack = aw.session.last_attack
    adv_before = _stack(viewer, "adversarial").copy()
    target = image_quality(glioma_small.array[None], adv_before[None], "psnr")
    assert target == pytest.approx(attack.outcome.metrics["image_quality"]["psnr"], abs=1e-9)  # = metrics.json
    assert aw.match_btn.isEnabled() and aw.match_btn.text() == "Match PSNR of current attack"
    assert not aw.side_btn.isEnabled()

    _wait(qtbot, aw.match("biasfield"), aw)
    matched = aw.session.matched
    assert matched is not None and matched.attack is attack and matched.match.reached and not warned
    # the artifact's layers sit beside the attack's (which are untouched)
    np.testing.assert_array_equal(_stack(viewer, "adversarial"), adv_before)
    art = _stack(viewer, "biasfield")
    for name in ("case flair perturbation (biasfield)", "case segmentation (biasfield)", "case diff (biasfield)",
                 "case segmentation (adversarial)", "case diff"):
        assert name in viewer.layers
    lyr = viewer.layers["case flair biasfield"]
    np.testing.assert_allclose(lyr.scale, viewer.layers["case flair"].scale)
    assert lyr.contrast_limits == viewer.layers["case flair"].contrast_limits
    assert lyr.visible and not viewer.layers["case flair adversarial"].visible  # the newest result on screen
    assert lyr.metadata["medadv"]["role"] == "artifact" and "eps" not in lyr.metadata["medadv"]
    # the PSNR of the artifact's layers, by the core metrics, is the attack's within the tolerance
    achieved = image_quality(glioma_small.array[None], art[None], "psnr")
    assert achieved == pytest.approx(matched.match.achieved, abs=1e-6)
    assert abs(achieved - target) <= DEFAULT_TOL["psnr"]
    assert matched.match.params["severity"] == pytest.approx(aw.session.shown.outcome.params["severity"])
    # readouts: the artifact's table, and both side by side with the matched PSNR and the flag
    rows = {r[0]: r for r in rw.rows}
    assert float(rows["severity (0-1)"][1]) == pytest.approx(matched.match.value, abs=5e-5)
    assert "ε (% of range)" not in rows and rw.header[2] == "GT·artifact"
    seg = viewer.layers["case segmentation (biasfield)"].data
    assert float(rows["Dice WT"][2]) == pytest.approx(M.dice_regions(seg, glioma_small.labels)["WT"], abs=5e-5)
    comp = {r[0]: r for r in rw.match_rows}
    assert rw.match_table.isVisibleTo(rw) and rw.match_header[1] == "FGSM ε 3.0 %"
    assert float(comp["PSNR dB (all channels)"][1]) == pytest.approx(target, abs=0.005)
    assert float(comp["PSNR dB (all channels)"][2]) == pytest.approx(achieved, abs=0.005)
    seg_a = viewer.layers["case segmentation (adversarial)"].data
    assert float(comp["Dice WT vs GT"][1]) == pytest.approx(
        M.dice_regions(seg_a, glioma_small.labels)["WT"], abs=5e-5)
    assert comp["reached (within tolerance)"][2].startswith("yes")
    assert "matched within" in aw.match_info.text()
    assert "FGSM ε 3.0 %" in rw.csv_text().splitlines()[len(rw.rows) + 2]
    assert aw.side_btn.isEnabled()

    # ghosting has a PSNR floor (~34 dB on this crop): the closest severity is shown, flagged
    _wait(qtbot, aw.match("ghosting"), aw)
    assert aw.session.matched.attack is attack  # matched to the attack, not to the previous artifact
    m = aw.session.matched.match
    assert not m.reached and m.value == pytest.approx(1.0) and m.achieved > m.target
    assert warned and "did not reach PSNR" in warned[-1]
    assert "NOT matched" in aw.match_info.text()
    assert {r[0]: r for r in rw.match_rows}["reached (within tolerance)"][2].startswith("NO")
    assert "case flair ghosting" in viewer.layers


def test_side_by_side_toggles_the_grid_and_restores(docks, qtbot):
    viewer, aw, _ = docks
    _wait(qtbot, aw.match("gaussnoise"), aw)
    grid(viewer).spacing = 0.1  # the user's own grid settings come back too
    before = [(lyr.name, lyr.visible) for lyr in viewer.layers]
    grid_before = (grid(viewer).enabled, grid(viewer).stride, grid(viewer).shape, grid(viewer).spacing)
    aw.side_btn.setChecked(True)
    assert grid(viewer).enabled and grid(viewer).shape == (1, 2)
    on = [lyr for lyr in viewer.layers if lyr.visible]
    captions = [lyr for lyr in on if lyr.metadata["medadv"]["role"] == "side-by-side caption"]
    assert len(captions) == 2 and all(c.name_overlay.visible for c in captions)
    assert "FGSM ε 3.0 %" in captions[0].name and "PSNR" in captions[0].name and "Dice WT" in captions[0].name
    assert captions[1].name.startswith("MR Gaussian noise severity")
    psnr = aw.session.matched.attack.outcome.metrics["image_quality"]["psnr"]
    assert f"PSNR {psnr:.1f} dB" in captions[0].name
    cell = {lyr.name: grid(viewer).position(viewer.layers.index(lyr), viewer.layers) for lyr in on}
    assert cell["case flair adversarial"] == cell["case segmentation (adversarial)"] == (0, 0)
    assert cell["case flair gaussnoise"] == cell["case segmentation (gaussnoise)"] == (0, 1)
    assert cell["case labels (outline 1)"] == (0, 0) and viewer.layers["case labels (outline 2)"].contour == 1
    assert viewer.layers["case flair gaussnoise"].contrast_limits == viewer.layers["case flair"].contrast_limits
    aw.side_btn.setChecked(False)
    assert [(lyr.name, lyr.visible) for lyr in viewer.layers] == before
    assert (grid(viewer).enabled, grid(viewer).stride, grid(viewer).shape, grid(viewer).spacing) == grid_before
    # on again, then a new attack run: the match no longer holds, the view switches itself off
    aw.side_btn.setChecked(True)
    _wait(qtbot, aw.run(), aw)
    assert aw.session.matched is None and not aw.side_btn.isChecked() and not aw.side_btn.isEnabled()
    assert not grid(viewer).enabled
    assert not any(lyr.metadata["medadv"]["role"].startswith("side-by-side") for lyr in viewer.layers)
    assert viewer.layers["case flair adversarial"].visible and not viewer.layers["case flair gaussnoise"].visible


def test_cancel_match_leaves_layers_consistent(docks, qtbot, monkeypatch):
    import napari_medadv.core.matching as matching

    viewer, aw, _ = docks
    real = matching.match_for_image
    evaluated = threading.Event()

    def held_after_first_evaluation(*args, callback, should_stop, **kwargs):
        def cb(*a):
            callback(*a)
            evaluated.set()
            for _ in range(3000):  # hold the search until Cancel is pressed (the test waits on it)
                if should_stop():
                    break
                threading.Event().wait(0.01)

        return real(*args, callback=cb, should_stop=should_stop, **kwargs)

    monkeypatch.setattr(matching, "match_for_image", held_after_first_evaluation)
    before = [(lyr.name, lyr.visible) for lyr in viewer.layers]
    shown = aw.session.shown
    job = aw.match("blur")
    qtbot.waitUntil(evaluated.is_set, timeout=WAIT)
    assert aw.cancel_btn.isEnabled() and not aw.run_btn.isEnabled() and not aw.match_btn.isEnabled()
    aw.cancel()
    _wait(qtbot, job, aw)
    assert [(lyr.name, lyr.visible) for lyr in viewer.layers] == before  # nothing half-written
    assert aw.session.matched is None and aw.session.shown is shown
    assert "cancelled" in aw.status.text()
    assert aw.run_btn.isEnabled() and aw.match_btn.isEnabled() and not aw.cancel_btn.isEnabled()
