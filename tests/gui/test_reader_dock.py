"""Reader study dock: during a trial nothing identifies the images (only layers "A"/"B" visible,
empty metadata, layer list / other docks / status bar hidden), window/level is the case's,
the keys answer and write the CSV, and the viewer comes back exactly as it was (end or Esc)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_medadv._qt.compat import grid
from napari_medadv._qt.reader.blind import dock_windows
from napari_medadv.core.reader import COLUMNS, ReaderLog, Stimulus, plan_trials

pytestmark = pytest.mark.gui

WAIT = 60_000


@pytest.fixture
def study(make_napari_viewer, cxr_small):
    """The chest radiograph (window/level changed by hand), a derived layer that names an attack,
    the Readouts dock and the Reader study dock."""
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._qt.reader import ReaderStudyWidget
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = make_napari_viewer()
    for data, kw, kind in layer_data_for_image(cxr_small, name="cxr"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    viewer.layers["cxr"].contrast_limits = (0.2, 0.7)  # the reader's window/level
    viewer.add_image(np.zeros((8, 8)), name="cxr adversarial (FGSM ε 2 %)", metadata={"medadv": {"derived": True}})
    viewer.add_labels(np.zeros((8, 8), dtype=np.uint8), name="cxr segmentation", visible=False)
    readouts = ReadoutsWidget(viewer)
    viewer.window.add_dock_widget(readouts, name="Readouts")
    dock = ReaderStudyWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Reader study")
    yield viewer, dock
    dock.abort()


def _snapshot(viewer):
    return {"layers": [(lyr.name, lyr.visible) for lyr in viewer.layers], "grid": grid(viewer).enabled,
            "selected": {lyr.name for lyr in viewer.layers.selection}, "step": tuple(viewer.dims.current_step),
            "docks": {name: d.isHidden() for name, d in dock_windows(viewer).items()},
            "list": viewer.window._qt_viewer.dockLayerList.isHidden(),
            "status": viewer.window._qt_window.statusBar().isHidden()}


def _synthetic(dock, mode, repeats=2):
    """Two sources at one PSNR with hand-made altered images (a bright square / noise)."""
    from napari_medadv._qt.reader.cases import layer_cases

    case = next(c for c in layer_cases(dock.viewer) if c.label == "cxr").load()
    x = case.image.array
    sq = x.copy()
    sq[..., 100:140, 100:140] += 0.3
    noisy = x + np.random.default_rng(0).normal(0, 0.05, x.shape).astype(np.float32)
    stimuli = {("cxr", "fgsm", 30.0): Stimulus("cxr", "fgsm", 30.0, 30.02, True, "eps", 0.02, sq),
               ("cxr", "motion", 30.0): Stimulus("cxr", "motion", 30.0, 29.95, True, "severity", 0.3, noisy)}
    plan = plan_trials(["cxr"], ["fgsm", "motion"], [30.0], repeats=repeats, mode=mode, seed=5)
    return {"cxr": case}, stimuli, plan


def test_pair_trials_are_blind_and_keyboard_driven(study, qtbot, tmp_path):
    viewer, dock = study
    before = _snapshot(viewer)
    assert before["docks"]["Readouts"] is False and before["list"] is False
    keymap = dict(viewer.keymap)
    cases, stimuli, plan = _synthetic(dock, "pair")
    path = tmp_path / "reader_study.csv"
    dock.begin(cases, stimuli, plan, ReaderLog(path))
    # the same keys work while the canvas has the focus (viewer key bindings), then are unbound
    bound = {str(k): f for k, f in viewer.keymap.items()}
    bound["Left"](viewer)
    assert dock._answer == "left"
    answers = []
    for k, trial in enumerate(plan):
        assert dock.trial == trial
        shown = [lyr for lyr in viewer.layers if lyr.visible]
        assert [lyr.name for lyr in shown] == ["A", "B"]  # nothing but the two trial images
        assert all(lyr.metadata == {} for lyr in shown)
        assert all(tuple(lyr.contrast_limits) == pytest.approx((0.2, 0.7)) for lyr in shown)
        assert not any(lyr in viewer.layers.selection for lyr in viewer.layers)
        assert grid(viewer).enabled
        layers = list(viewer.layers)
        cols = {lyr.name: grid(viewer).position(layers.index(lyr), layers)[1] for lyr in shown}
        assert cols == {"A": 0, "B": 1}  # A is drawn on the left
        altered = stimuli[trial.cell].image[0]
        left_is_altered = np.array_equal(viewer.layers["A"].data, altered)
        assert left_is_altered == (trial.shown_left == "altered")
        assert np.array_equal(viewer.layers["B" if left_is_altered else "A"].data, cases["cxr"].image.array[0])
        # every identifying widget hidden; the study dock is not
        assert viewer.window._qt_viewer.dockLayerList.isHidden()
        assert viewer.window._qt_viewer.dockLayerControls.isHidden()
        assert dock_windows(viewer)["Readouts"].isHidden()
        assert not dock_windows(viewer)["Reader study"].isHidden()
        assert viewer.window._qt_window.statusBar().isHidden()
        for text in (dock.panel.counter.text(), dock.panel.help.text(), dock.panel.choice.text()):
            assert not any(word in text for word in ("fgsm", "motion", "cxr", "30"))
        # keys: the wrong answer on odd trials; Enter before a confidence records nothing
        ans = Qt.Key_Left if (trial.shown_left == "altered") == (k % 2 == 0) else Qt.Key_Right
        qtbot.keyClick(dock.panel, ans)
        qtbot.keyClick(dock.panel, Qt.Key_Return)
        assert dock.trial == trial and len(dock.log.rows) == k
        qtbot.keyClick(dock.panel, (Qt.Key_1, Qt.Key_2, Qt.Key_3, Qt.Key_4, Qt.Key_5)[k % 5])
        qtbot.keyClick(dock.panel, Qt.Key_Return)
        answers.append(("left" if ans == Qt.Key_Left else "right", k % 2 == 0, k % 5 + 1))
    assert not dock.in_trial
    assert _snapshot(viewer) == before  # restored exactly
    assert dict(viewer.keymap) == keymap
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(plan)
    for row, trial, (ans, ok, conf) in zip(rows, plan, answers):
        assert (row["trial"], row["case"], row["source"]) == (str(trial.trial), "cxr", trial.source)
        assert (row["answer"], row["correct"], row["confidence"]) == (ans, str(int(ok)), str(conf))
        assert row["shown_left"] == trial.shown_left and float(row["seconds"]) >= 0
        assert float(row["psnr"]) == stimuli[trial.cell].psnr


def test_single_mode_and_escape_restore(study, qtbot, tmp_path):
    viewer, dock = study
    viewer.layers.selection.active = viewer.layers["cxr"]
    before = _snapshot(viewer)
    cases, stimuli, plan = _synthetic(dock, "single")
    dock.begin(cases, stimuli, plan, ReaderLog(tmp_path / "r.csv"))
    trial = dock.trial
    assert [lyr.name for lyr in viewer.layers if lyr.visible] == ["A"] and not grid(viewer).enabled
    shows_altered = np.array_equal(viewer.layers["A"].data, stimuli[trial.cell].image[0])
    assert shows_altered == (trial.shown_left == "altered")
    qtbot.keyClick(dock.panel, Qt.Key_Left)  # a pair-mode key: ignored in single mode
    assert dock._answer is None
    qtbot.keyClick(dock.panel, Qt.Key_A)
    qtbot.keyClick(dock.panel, Qt.Key_5)
    qtbot.keyClick(dock.panel, Qt.Key_Space)
    qtbot.keyClick(dock.panel, Qt.Key_Escape)
    assert not dock.in_trial and "A" not in viewer.layers
    assert _snapshot(viewer) == before
    assert viewer.layers.selection.active is viewer.layers["cxr"]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 1 and rows[0]["answer"] == "altered"
    assert rows[0]["correct"] == str(int(trial.shown_left == "altered"))


def test_start_makes_matched_images_then_blinds(study, qtbot, tmp_path, cxr_model):
    """Start with the Model dock's model: FGSM images at 34 dB from the matched-PSNR search in a
    worker, then the first trial; Esc restores."""
    viewer, dock = study
    dock.session.set_model(cxr_model)
    s = dock.setup
    s.check(s.sources, {"fgsm"})
    s.check(s.sources, {"motion"}, on=False)
    s.psnrs.setText("34")
    s.repeats.setValue(1)
    s.out.setText(str(tmp_path / "reader_study.csv"))
    assert [c.label for c in s.checked_cases()] == ["cxr"]
    job = dock.start()
    assert job is not None
    qtbot.waitUntil(lambda: dock.in_trial, timeout=WAIT)
    stim = dock.stimuli[("cxr", "fgsm", 34.0)]
    assert stim.reached and abs(stim.psnr - 34.0) <= 0.1
    assert [lyr.name for lyr in viewer.layers if lyr.visible] == ["A", "B"]
    dock.handle_key("abort")
    assert not dock.in_trial and "A" not in viewer.layers


def test_start_without_model_says_so(study, qtbot, unet2d, monkeypatch, tmp_path):
    viewer, dock = study
    assert dock.start() is None
    assert "Model dock" in dock.setup.status.text()
    # a model that does not fit the case (glioma UNet, radiograph): a notification, no trial
    import napari.utils.notifications as nt

    errors: list[str] = []
    monkeypatch.setattr(nt, "show_error", errors.append)
    monkeypatch.setattr("napari_medadv._qt.workers.show_error", errors.append)
    dock.session.set_model(unet2d)
    dock.setup.psnrs.setText("34")
    dock.setup.out.setText(str(tmp_path / "never.csv"))
    job = dock.start()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    assert not dock.in_trial and errors and "Reader study images failed" in errors[0]
    assert "could not be made" in dock.setup.status.text()
    assert not (tmp_path / "never.csv").exists()


def test_shipped_samples_as_cases():
    """The samples are offered as cases; one loads with the window/level it gets when opened."""
    from napari_medadv._qt.layers import display_limits
    from napari_medadv._qt.reader.cases import sample_cases

    choices = {c.label: c for c in sample_cases()}
    assert {"sample glioma_001", "sample glioma_004"} <= set(choices)
    case = choices["sample glioma_001"].load()
    assert case.name == "sample glioma_001" and case.image.channel_names[case.channel] == "flair"
    assert case.contrast_limits == display_limits(case.image.array[case.channel])
    kw = case.layer_kwargs()
    assert set(kw) >= {"scale", "contrast_limits", "colormap"} and "name" not in kw and "metadata" not in kw
