"""The docks driven through their methods: every attack, layers, readouts, live ε, cancel, export."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from napari_medadv.core import metrics as M
from napari_medadv.core.brats import BRATS_REGIONS

pytestmark = pytest.mark.gui

WAIT = 60_000


def _open(viewer, image):
    from napari_medadv._qt.layers import layer_data_for_image

    for data, kw, kind in layer_data_for_image(image, name="case"):
        getattr(viewer, f"add_{kind}")(data, **kw)


@pytest.fixture
def docks(make_napari_viewer, qtbot):
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.model_widget import ModelWidget
    from napari_medadv._qt.plots_widget import PlotsWidget
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = make_napari_viewer()
    ws = {"viewer": viewer}
    for name, cls in (("model", ModelWidget), ("attack", AttackWidget), ("readouts", ReadoutsWidget),
                      ("plots", PlotsWidget)):
        ws[name] = cls(viewer)
        viewer.window.add_dock_widget(ws[name], name=name)
    yield ws
    ws["attack"].cancel()
    ws["plots"].cancel()
    qtbot.waitUntil(lambda: not ws["attack"].running, timeout=WAIT)


def _wait_job(qtbot, job, widget=None):
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    if widget is not None:  # the result goes onto the layers one per event-loop turn
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT)


SEG_RUNS = [
    ("fgsm", {"eps": 0.05}),
    ("ifgsm", {"eps": 0.05, "steps": 2}),
    ("tifgsm", {"eps": 0.05, "steps": 2}),
    ("pgd", {"eps": 0.05, "steps": 2}),
    ("noise", {"eps": 0.05}),
    ("dgde", {"amplitude": 0.2, "max_queries": 40, "population": 4, "init_tries": 2}),
]


@pytest.mark.parametrize(("attack", "params"), SEG_RUNS, ids=[a for a, _ in SEG_RUNS])
def test_segmentation_attack_through_the_docks(docks, qtbot, glioma_small, unet2d, attack, params):
    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack(attack, **params)
    assert aw.image_combo.currentData() == "case flair"
    assert aw.labels_combo.currentData() == "case labels"  # the case's ground truth, pre-selected
    _wait_job(qtbot, aw.run(), aw)
    shown = aw.session.shown
    assert shown is not None and shown.outcome.attack == attack
    o = shown.outcome
    scale = viewer.layers["case flair"].scale
    for ch in ("t1", "t1ce", "t2", "flair"):
        for what in ("adversarial", "perturbation"):
            lyr = viewer.layers[f"case {ch} {what}"]
            assert lyr.data.shape == glioma_small.spatial_shape
            np.testing.assert_allclose(lyr.scale, scale)
            np.testing.assert_allclose(lyr.translate, viewer.layers["case flair"].translate)
            assert lyr.metadata["medadv"]["derived"] is True
    adv = np.stack([viewer.layers[f"case {c} adversarial"].data for c in ("t1", "t1ce", "t2", "flair")])
    delta = adv - glioma_small.array
    bound = params["eps"] if "eps" in params else params["amplitude"]  # DGDE: its optional amplitude cap
    eps_native = bound * np.ptp(glioma_small.array.reshape(4, -1), axis=1)
    assert np.all(np.abs(delta).reshape(4, -1).max(1) <= eps_native * (1 + 1e-5) + 1e-6)
    assert viewer.layers["case flair adversarial"].contrast_limits == viewer.layers["case flair"].contrast_limits
    seg_c = viewer.layers["case segmentation (clean)"].data
    seg_a = viewer.layers["case segmentation (adversarial)"].data
    diff = viewer.layers["case diff"].data
    assert seg_c.shape == seg_a.shape == diff.shape == glioma_small.spatial_shape
    assert set(np.unique(diff)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(diff != 0, seg_c != seg_a)
    # the diff map came from the worker (prepare_display), by its definition
    want = np.zeros(seg_c.shape, np.uint8)
    want[(seg_c == 0) & (seg_a != 0)] = 1
    want[(seg_c != 0) & (seg_a == 0)] = 2
    want[(seg_c != 0) & (seg_a != 0) & (seg_c != seg_a)] = 3
    np.testing.assert_array_equal(diff, want)
    assert aw.session.shown.outcome.display["diff"] is not None
    # readouts equal the core metrics recomputed on the layer arrays
    regions = M.dice_regions(seg_a, glioma_small.labels)
    row = {r[0]: r for r in rw.rows}
    for k, v in regions.items():
        assert float(row[f"Dice {k}"][2]) == pytest.approx(v, abs=5e-5)
        # recorded: exact voxel counts in float64 (scoring.measured_metrics), MONAI's sums in float32
        assert o.metrics["dice"]["ground_truth_vs_adversarial"]["regions"][k] == pytest.approx(v, rel=1e-6)
        members = list(BRATS_REGIONS[k])
        p_, r_ = np.isin(seg_a, members), np.isin(glioma_small.labels, members)
        exact = 1.0 if not (p_.sum() + r_.sum()) else 2.0 * np.logical_and(p_, r_).sum() / (p_.sum() + r_.sum())
        assert o.metrics["dice"]["ground_truth_vs_adversarial"]["regions"][k] == pytest.approx(exact, abs=1e-12)
    assert float(row["Dice foreground"][3]) == pytest.approx(M.foreground_dice(seg_a, seg_c), abs=5e-5)
    l0 = M.perturbation_norms(glioma_small.array, adv)["l0"]
    assert int(row["L0 (changed voxels)"][1]) == l0
    csv = rw.copy_csv()
    assert csv.splitlines()[0] == "Dice / metric,GT·clean,GT·adv,clean·adv"
    if attack == "dgde":
        pts = viewer.layers["case perturbed pixels"]
        assert len(pts.data) == l0
    else:
        assert "case perturbed pixels" not in viewer.layers


CXR_RUNS = [
    ("fgsm", {"eps": 0.02}),
    ("pgd", {"eps": 0.02, "steps": 2}),
    ("dgde", {"max_queries": 60, "population": 4, "init_tries": 2}),
    ("pgd-risk", {"eps": 0.02, "steps": 2}),
]


@pytest.mark.parametrize(("attack", "params"), CXR_RUNS, ids=[a for a, _ in CXR_RUNS])
def test_classifier_attack_readouts(docks, qtbot, cxr_small, cxr_model, attack, params, tmp_path):
    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, cxr_small)
    aw.session.set_model(cxr_model)
    if attack == "pgd-risk":
        path = tmp_path / "inv.npy"
        np.save(path, np.array([[0.0, 1.0], [1.0, 0.0]]))
        params = {**params, "cooccurrence": str(path)}
    aw.set_attack(attack, **params)
    _wait_job(qtbot, aw.run(), aw)
    o = aw.session.shown.outcome
    assert viewer.layers["case adversarial"].data.shape == (256, 256)
    assert "case segmentation (clean)" not in viewer.layers
    if attack == "dgde":  # the Plots dock shows DGDE's Fig. 4 (probability) next to its L0
        pw = docks["plots"]
        qtbot.waitUntil(lambda: any("probability" in r for r in pw.history), timeout=WAIT)
        assert pw.ax_iter2 is not None and pw.ax_iter2.lines
    probs = o.metrics["probabilities"]
    rows = {r[0].split(" ")[0]: r for r in rw.rows}
    for name, p in probs.items():
        r = rows[f"P({name})"]
        assert float(r[1]) == pytest.approx(p["clean"], abs=5e-5)
        assert float(r[2]) == pytest.approx(p["adversarial"], abs=5e-5)
        assert float(r[3]) == pytest.approx(p["change"], abs=5e-5)


def _registry_entries_without_eps():
    from napari_medadv.core.attacks import ATTACKS

    # the MR artifacts (DGDE, an L0 attack, has no ε either: it runs in the attack tests above)
    return [n for n, s in ATTACKS.items() if s.kind == "artifact" and not any(p.name == "eps" for p in s.params)]


@pytest.mark.parametrize("name", _registry_entries_without_eps()[:2])
def test_registry_entries_without_eps_run_through_the_dock(docks, qtbot, glioma_small, unet2d, name):
    """MR artifacts (a `severity`, no ε) come from the same registry and run with no GUI edit."""
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack(name)
    assert "eps" not in aw.params() and not aw.eps_slider.isEnabled()
    _wait_job(qtbot, aw.run(), aw)
    assert aw.session.shown is not None and aw.session.shown.outcome.attack == name
    # an artifact is not adversarial: its layers carry its name (beside an attack's, not over them)
    assert viewer.layers[f"case flair {name}"].data.shape == glioma_small.spatial_shape
    assert f"case segmentation ({name})" in viewer.layers and "case flair adversarial" not in viewer.layers
    assert viewer.layers[f"case flair {name}"].metadata["medadv"]["role"] == "artifact"


def test_attack_dock_builds_parameters_from_the_registry(docks):
    """A new registry entry (e.g. an MR artifact with a `severity`) appears with no GUI edit."""
    from napari_medadv.core.attacks import ATTACKS, Param
    from napari_medadv.core.attacks.noise import RandomNoise
    from napari_medadv._qt.attack import AttackWidget

    class Ghosting(RandomNoise):
        name = "test-ghosting"
        label = "Ghosting (test)"
        params = RandomNoise.params + (Param("severity", int, 2, "artifact severity", 1, 5),
                                       Param("axis", str, "y", "phase-encoding axis", choices=("x", "y")),
                                       Param("strength", float, None, "optional strength", 0.0, 1.0))

    ATTACKS.register(Ghosting)
    try:
        aw = AttackWidget(docks["viewer"])
        aw.set_attack("test-ghosting", severity=4, axis="x")
        p = aw.params()
        assert p["severity"] == 4 and p["axis"] == "x" and "strength" not in p  # None: left to the attack
        aw.set_attack("test-ghosting", strength=0.25)
        assert aw.params()["strength"] == pytest.approx(0.25)
        aw.close()
    finally:
        del ATTACKS["test-ghosting"]


def test_live_eps_updates_after_a_slider_move(docks, qtbot, glioma_small, unet2d):
    from napari_medadv.core.live import LiveEps

    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.02)
    aw.live.setChecked(True)
    qtbot.waitUntil(lambda: aw.session.shown is not None and bool(aw.session.shown.outcome.metrics)
                    and not aw.running, timeout=WAIT)
    assert aw.session.shown.live
    first = viewer.layers["case flair adversarial"].data.copy()
    for v in (30, 40, 60, 80):  # 3 %, 4 %, 6 %, 8 %: latest value wins
        aw.eps_slider.setValue(v)
    qtbot.waitUntil(lambda: aw.session.shown.outcome.result.eps == pytest.approx(0.08) and not aw.running,
                    timeout=WAIT)
    assert aw._live_images.n_started <= 1 + 4  # never more jobs than moves (no stale queue)
    now = viewer.layers["case flair adversarial"].data
    assert not np.array_equal(first, now)
    ref_adv, ref_out = LiveEps(glioma_small, unet2d, labels=glioma_small.labels).at(0.08)
    np.testing.assert_allclose(now, ref_adv[3], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(viewer.layers["case segmentation (adversarial)"].data,
                                  unet2d.to_label_map(ref_out)[0])
    qtbot.waitUntil(lambda: {r[0]: r[1] for r in rw.rows}.get("ε (% of range)") == "8.00", timeout=WAIT)


def test_hidden_result_layers_catch_up_when_shown(docks, qtbot, glioma_small, unet2d):
    """Live ε updates only the layers on screen; a hidden result layer keeps its data until it is
    shown (or the slider rests), then shows the latest ε."""
    from napari_medadv.core.live import LiveEps

    viewer, aw = docks["viewer"], docks["attack"]
    aw.live_eps.flush.setInterval(600_000)  # no catch-up on rest during the test
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.02)
    aw.live.setChecked(True)
    qtbot.waitUntil(lambda: aw.session.shown is not None and not aw.running, timeout=WAIT)
    hidden = viewer.layers["case t2 adversarial"]
    assert not hidden.visible
    stale = np.array(hidden.data, copy=True)
    aw.eps_slider.setValue(90)  # 9 %
    qtbot.waitUntil(lambda: aw.session.shown.outcome.result.eps == pytest.approx(0.09) and not aw.running,
                    timeout=WAIT)
    np.testing.assert_array_equal(hidden.data, stale)  # not touched while hidden
    hidden.visible = True
    ref_adv, _ = LiveEps(glioma_small, unet2d, labels=glioma_small.labels).at(0.09)
    np.testing.assert_allclose(hidden.data, ref_adv[2], rtol=0, atol=1e-5)


def test_result_layers_keep_the_selection_and_hidden_ones_start_hidden(docks, qtbot, glioma_small, unet2d,
                                                                        monkeypatch):
    """A first run adds its result layers without taking the user's selection; the layers that
    start hidden are made hidden (never drawn before shown), and a volume's perturbation layer is
    a lazy difference that equals adversarial - clean where napari reads it."""
    from napari.layers import Image

    from napari_medadv._qt.results import LazyDifference

    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    picked = viewer.layers["case flair"]
    viewer.layers.selection.active = picked
    made_visible = {}
    real_init = Image.__init__

    def spy(self, data, *args, **kwargs):
        real_init(self, data, *args, **kwargs)
        made_visible[kwargs.get("name")] = kwargs.get("visible", True)

    monkeypatch.setattr(Image, "__init__", spy)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.05)
    _wait_job(qtbot, aw.run(), aw)
    assert viewer.layers.selection.active is picked and list(viewer.layers.selection) == [picked]
    assert made_visible["case flair adversarial"] is True
    assert made_visible["case t1 adversarial"] is False and made_visible["case flair perturbation"] is False
    pert = viewer.layers["case flair perturbation"]
    assert isinstance(pert.data, LazyDifference)
    c = glioma_small.channel_names.index("flair")
    adv = aw.session.shown.outcome.adversarial[c]
    np.testing.assert_array_equal(np.asarray(pert.data), adv - glioma_small.array[c])


def test_live_readouts_come_first_and_ssim_follows(docks, qtbot, glioma_small, unet2d, monkeypatch):
    """SSIM shows as pending until its own worker fills it; the numbers then equal the core's."""
    import threading

    from napari_medadv.core.live import LiveEps
    from napari_medadv.core.scoring import outcome_metrics

    gate = threading.Event()
    real = LiveEps.add_ssim_steps

    def slow_ssim(self, o):
        # The live dock runs SSIM as lane steps: hold it back by yielding (never by blocking the
        # one lane thread) until the test has seen the pending state.
        deadline = time.monotonic() + 30
        while not gate.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
            yield
        return (yield from real(self, o))

    monkeypatch.setattr(LiveEps, "add_ssim_steps", slow_ssim)
    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.03)
    aw.live.setChecked(True)
    rows = lambda: {r[0]: r[1] for r in rw.rows}  # noqa: E731
    qtbot.waitUntil(lambda: rows().get("SSIM (mean of channels)") == "pending …", timeout=WAIT)
    assert rows()["PSNR dB (all channels)"] not in ("", None)
    gate.set()
    qtbot.waitUntil(lambda: rows().get("SSIM (mean of channels)", "pending …") != "pending …" and not aw.running,
                    timeout=WAIT)
    o = aw.session.shown.outcome
    ref = outcome_metrics(o)
    assert o.metrics["image_quality"]["ssim"] == pytest.approx(ref["image_quality"]["ssim"], rel=1e-6)
    assert o.metrics["image_quality"]["psnr"] == pytest.approx(ref["image_quality"]["psnr"], rel=1e-4)
    for k, block in ref["dice"].items():
        assert o.metrics["dice"][k]["foreground"] == pytest.approx(block["foreground"], rel=1e-6)
        assert o.metrics["dice"][k]["per_label"] == pytest.approx(block["per_label"], rel=1e-6)
    assert rows()["SSIM (mean of channels)"] == f"{ref['image_quality']['ssim']:.4f}"


def test_the_stacked_source_is_reused_until_a_layer_changes(docks, qtbot, glioma_small, unet2d):
    """Run and live ε build a Source from the contrast layers: the stacked copy is reused while the
    layers hold the same arrays, rebuilt when one is replaced, and attacks never write into it."""
    from napari_medadv._qt.layers import source_from_layer

    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    flair = viewer.layers["case flair"]
    a = source_from_layer(viewer, flair).image.array
    assert source_from_layer(viewer, viewer.layers["case t1"]).image.array is a
    before = a.copy()
    aw.session.set_model(unet2d)
    aw.set_attack("ifgsm", eps=0.05, steps=2)
    _wait_job(qtbot, aw.run(), aw)
    np.testing.assert_array_equal(a, before)
    viewer.layers["case t2"].data = viewer.layers["case t2"].data * 2
    b = source_from_layer(viewer, flair).image.array
    assert b is not a
    np.testing.assert_allclose(b[2], 2 * before[2])


def test_cancel_leaves_consistent_layers(docks, qtbot, glioma_small, unet2d):
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("ifgsm", eps=0.05, steps=500)
    n_before = len(viewer.layers)
    job = aw.run()
    qtbot.waitUntil(lambda: aw.progress.value() >= 1, timeout=WAIT)
    aw.cancel()
    _wait_job(qtbot, job)
    assert len(viewer.layers) == n_before  # nothing half-written
    assert aw.session.shown is None
    assert aw.run_btn.isEnabled() and not aw.cancel_btn.isEnabled()
    assert "cancelled" in aw.status.text()
    np.testing.assert_array_equal(viewer.layers["case flair"].data, glioma_small.array[3])  # input untouched


def test_result_lands_on_the_image_it_was_started_on(docks, qtbot, glioma_small, cxr_small, unet2d):
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    viewer.add_image(cxr_small.array[0], name="other")
    aw.session.set_model(unet2d)
    aw.image_combo.setCurrentIndex(aw.image_combo.findData("case t2"))
    aw.set_attack("ifgsm", eps=0.05, steps=3)
    job = aw.run()
    aw.image_combo.setCurrentIndex(aw.image_combo.findData("other"))  # user looks elsewhere meanwhile
    viewer.layers.selection.active = viewer.layers["other"]
    _wait_job(qtbot, job, aw)
    assert "case t2 adversarial" in viewer.layers and "other adversarial" not in viewer.layers


def _capture_errors(monkeypatch) -> list[str]:
    import napari.utils.notifications as nt

    import napari_medadv._qt.workers as wk

    messages: list[str] = []
    monkeypatch.setattr(wk, "show_error", messages.append)
    monkeypatch.setattr(nt, "show_error", messages.append)
    return messages


def test_errors_become_notifications(docks, qtbot, cxr_small, unet2d, monkeypatch):
    messages = _capture_errors(monkeypatch)
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, cxr_small)
    assert aw.run() is None and "model" in messages[-1]  # no model yet
    aw.session.set_model(unet2d)  # a 4-channel 3-D model on a 2-D radiograph
    assert aw.run() is None
    assert "channel" in messages[-1] or "3-D" in messages[-1]
    assert len(viewer.layers) == 1


def test_model_dock_loads_in_a_worker_and_refuses_untrusted_code(docks, qtbot, tmp_path, monkeypatch):
    messages = _capture_errors(monkeypatch)
    mw = docks["model"]
    _wait_job(qtbot, mw.load("demo:cxr", device="cpu"))
    assert mw.session.model is not None and mw.session.model.spec == "demo:cxr"
    assert "classification" in mw.info.text() and "CPU" in mw.info.text()
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not torchscript")
    _wait_job(qtbot, mw.load(f"torchscript:{fake}", trust=False))
    assert "trust" in messages[-1]
    assert mw.session.model.spec == "demo:cxr"  # the previous model stays


def test_region_restricts_the_perturbation(docks, qtbot, glioma_small, unet2d):
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    roi = np.zeros(glioma_small.spatial_shape, dtype=np.int32)
    roi[8:20, 8:20, :] = 1
    viewer.add_labels(roi, name="roi", scale=viewer.layers["case flair"].scale,
                      translate=viewer.layers["case flair"].translate)
    aw.session.set_model(unet2d)
    aw.set_attack("noise", eps=0.05)
    aw.roi_combo.setCurrentIndex(aw.roi_combo.findData("roi"))
    _wait_job(qtbot, aw.run(), aw)
    delta = np.asarray(viewer.layers["case flair perturbation"].data)  # a lazy difference
    assert np.all(delta[roi == 0] == 0) and np.any(delta[roi == 1] != 0)


def test_transfer_evaluation_on_model_b(docks, qtbot, glioma_small, unet2d):
    from napari_medadv.core.pipeline import transfer_outcome

    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.session.set_transfer_model(unet2d)
    aw.set_attack("fgsm", eps=0.05)
    _wait_job(qtbot, aw.run(), aw)
    shown = aw.session.shown
    assert shown.transfer is not None
    ref = transfer_outcome(shown.outcome, unet2d)
    rows = {r[0]: r for r in rw.rows}
    assert float(rows["B: Dice WT"][2]) == pytest.approx(
        ref.metrics["dice"]["ground_truth_vs_adversarial"]["regions"]["WT"], abs=5e-5)


def test_save_attack_writes_the_cli_folder_and_a_screenshot(docks, qtbot, glioma_small, unet2d, tmp_path):
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.04)
    _wait_job(qtbot, aw.run(), aw)
    out = tmp_path / "saved"
    _wait_job(qtbot, aw.save_attack(str(out)))
    qtbot.waitUntil(lambda: (out / "screenshot.png").exists(), timeout=WAIT)
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "record.json", "perturbation.nii.gz", "screenshot.png"} <= names
    assert any(n.startswith("adversarial") for n in names)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eps"] == pytest.approx(0.04)
    assert metrics["dice"] == json.loads(json.dumps(aw.session.shown.outcome.metrics["dice"]))


def test_plots_sweep_history_and_gif(docks, qtbot, glioma_small, unet2d, tmp_path):
    import imageio.v3 as iio

    viewer, aw, pw = docks["viewer"], docks["attack"], docks["plots"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    pw.n_points.setValue(4)
    pw.max_eps.setValue(6.0)
    _wait_job(qtbot, pw.run_sweep())
    assert [r["eps"] for r in pw.sweep_rows] == pytest.approx([0.0, 0.02, 0.04, 0.06])
    assert set(pw.sweep_rows[0]["dice"]) == {"WT", "TC", "ET"}
    assert pw.ax_sweep.lines  # drawn
    aw.set_attack("ifgsm", eps=0.05, steps=3)
    _wait_job(qtbot, aw.run(), aw)
    qtbot.waitUntil(lambda: len(pw.history) >= 3, timeout=WAIT)
    assert all("psnr" in r and "dice" in r for r in pw.history[:3])
    gif = tmp_path / "sweep.gif"
    _wait_job(qtbot, pw.export_gif(str(gif)))
    qtbot.waitUntil(gif.exists, timeout=WAIT)
    assert pw.last_gif_frames == 4  # one per ε (identical frames may be merged inside the GIF)
    frames = iio.imread(gif, index=None)
    assert frames.ndim == 4 and frames.shape[0] >= 1 and frames.shape[-1] in (3, 4)


def test_gpu_out_of_memory_offers_the_cpu(docks, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_medadv._qt.workers import report_error

    class OutOfMemoryError(RuntimeError):
        pass

    sent, calls = [], []
    monkeypatch.setattr(notification_manager, "dispatch", sent.append)
    report_error(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "i-FGSM", lambda: calls.append(1))
    assert sent and "CPU" in sent[0].message
    label, action = sent[0].actions[0]
    assert label == "Use the CPU"
    action(None)
    assert calls == [1]


def test_use_cpu_keeps_a_cpu_model_and_updates_the_model_dock(docks, unet2d):
    aw, mw = docks["attack"], docks["model"]
    aw.session.set_model(unet2d)
    aw.use_cpu()
    assert aw.session.model.device.type == "cpu" and mw.picker.device.currentText() == "cpu"


def test_targeted_pgd_with_a_painted_target_mask(docks, qtbot, glioma_small, unet2d):
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    target = np.zeros(glioma_small.spatial_shape, dtype=np.int32)
    target[4:28, 4:28, :] = 2  # "make this square edema"
    viewer.add_labels(target, name="target", scale=viewer.layers["case flair"].scale,
                      translate=viewer.layers["case flair"].translate)
    aw.session.set_model(unet2d)
    aw.set_attack("pgd", eps=0.08, steps=3)
    idx = aw.target_combo.findData("mask:target")
    assert idx >= 0 and aw.target_combo.isEnabled()
    aw.target_combo.setCurrentIndex(idx)
    _wait_job(qtbot, aw.run(), aw)
    o = aw.session.shown.outcome
    box = target == 2
    assert (o.seg_adv[box] == 2).sum() > (o.seg_clean[box] == 2).sum()  # pushed towards the target


def test_a_closed_attack_dock_ignores_later_results(make_napari_viewer, qtbot):
    """Closing the Attack dock disconnects it from the session: a result shown afterwards (by
    another dock) must not reach its deleted widgets."""
    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.session import Session

    viewer = make_napari_viewer()
    aw = AttackWidget(viewer)
    session = Session.of(viewer)
    aw.close()
    with qtbot.waitSignal(aw.destroyed, timeout=WAIT):
        aw.deleteLater()
    session.result_changed.emit(None)  # would call setEnabled on the deleted Save button


def test_readouts_breaks_at_eps_rows(docks, qtbot, glioma_small, unet2d):
    from napari_medadv.core.breaking import breaking_eps

    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.02)
    _wait_job(qtbot, aw.run(), aw)
    assert rw.breaking_btn.isEnabled()
    _wait_job(qtbot, rw.compute_breaking())
    rows = {r[0]: r[-1] for r in rw.rows}
    ref = breaking_eps(glioma_small, unet2d, "fgsm", labels=glioma_small.labels, seed=0)
    for key, eps in ref.breaking_eps.items():
        label = next(k for k in rows if k.startswith(f"breaks at ε · {key}"))
        assert rows[label] == (f"> {100 * ref.eps_max:g} %" if eps is None else f"{100 * eps:.2f} %")
    assert any(k.startswith("Dice-vs-ε AUC · WT") for k in rows)
    aw.set_attack("fgsm", eps=0.03)  # another result of the same attack keeps the rows (ε is what is searched)
    _wait_job(qtbot, aw.run(), aw)
    assert any(r[0].startswith("breaks at ε") for r in rw.rows)


def test_repeated_runs_do_not_keep_their_frames(docks, qtbot, glioma_small, unet2d, monkeypatch):
    """napari's window keeps every worker it started, with the slots connected to it: a run's
    frames (300 MB each at BraTS size) must not stay reachable through them. Before, every
    i-FGSM run left one frame outcome behind."""
    import gc

    from napari_medadv.core.anytime import FramePacer
    from napari_medadv.core.outcome import AttackOutcome

    # each step's frame once the previous one is on screen (held, not timed: frames do reach it)
    monkeypatch.setattr(FramePacer, "due", lambda self: self.want.wait(WAIT / 1000))

    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("ifgsm", eps=0.03, steps=3)

    def alive():
        gc.collect()
        return sum(isinstance(o, AttackOutcome) for o in gc.get_objects())

    counts = []
    for _ in range(4):
        _wait_job(qtbot, aw.run(), aw)
        assert aw.anytime is not None and aw.anytime.shown >= 1  # frames were shown
        counts.append(alive())
    assert counts[3] <= counts[1]


def test_a_closed_viewer_and_its_results_are_freed(make_napari_viewer, qtbot, glioma_small, unet2d):
    """A viewer closed after an i-FGSM run is collected, with its session and its results: its
    finished workers (which napari's window keeps) no longer reach the dock, nor the torch lane the
    result (1.8 GB per BraTS-size viewer opened and closed in one session, before)."""
    import gc
    import time
    import weakref

    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.session import Session

    viewer = make_napari_viewer()  # the fixture keeps its viewers in a WeakSet: it does not hold this one
    _open(viewer, glioma_small)
    aw = AttackWidget(viewer)
    viewer.window.add_dock_widget(aw, name="Attack")
    aw.session.set_model(unet2d)
    aw.set_attack("ifgsm", eps=0.03, steps=3)
    _wait_job(qtbot, aw.run(), aw)
    refs = [weakref.ref(viewer), weakref.ref(Session.of(viewer)), weakref.ref(aw.session.shown.outcome)]
    with qtbot.waitSignal(aw.destroyed, timeout=WAIT):
        viewer.close()
    del viewer, aw
    deadline = time.monotonic() + 20
    while any(r() is not None for r in refs) and time.monotonic() < deadline:
        qtbot.wait(20)  # deferred deletions and the lane's turn
        gc.collect()
    assert [r() is None for r in refs] == [True, True, True]
