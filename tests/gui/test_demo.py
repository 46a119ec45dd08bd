"""`medadv demo` (the napari window): sample case, demo model, docks, live ε — and its screenshot."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_demo_opens_ready_to_drag_eps_and_the_screenshot_is_not_blank(make_napari_viewer, qtbot, tmp_path):
    from napari_medadv._qt.demo import setup_demo
    from napari_medadv._qt.export import save_screenshot

    viewer = make_napari_viewer(show=True)
    widgets = setup_demo(viewer, device="cpu")
    attack = widgets["Attack"]
    qtbot.waitUntil(lambda: attack.session.shown is not None and bool(attack.session.shown.outcome.metrics)
                    and not attack.running, timeout=120_000)
    assert attack.session.model.spec == "demo:unet3d"
    assert attack.live.isChecked() and attack.attack_name() == "fgsm"
    assert attack.session.shown.live and attack.session.shown.outcome.result.eps == pytest.approx(0.03)
    for name in ("glioma_001 flair adversarial", "glioma_001 segmentation (adversarial)", "glioma_001 labels"):
        assert viewer.layers[name].visible
    assert widgets["Readouts"].rows
    shot = save_screenshot(viewer, tmp_path / "demo.png")
    import imageio.v3 as iio

    img = iio.imread(shot)
    assert img.shape[0] > 300 and img.shape[1] > 300
    canvas = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)
    assert canvas.std() > 10  # an image is drawn, not a flat background
    assert (np.abs(canvas[..., 0] - canvas[..., 1]) > 60).sum() > 50  # coloured segmentation on it
    attack.cancel()
    qtbot.waitUntil(lambda: not attack.running, timeout=60_000)


def test_cli_demo_without_headless_launches_the_napari_demo(monkeypatch):
    import napari_medadv._qt.demo as demo
    from napari_medadv import cli

    calls = []
    monkeypatch.setattr(demo, "launch_demo", lambda **kw: calls.append(kw) or 0)
    assert cli.main(["demo", "--device", "cpu"]) == 0
    assert calls == [{"device": "cpu", "sample": "glioma", "warm": False}]
    assert cli.main(["demo", "--device", "cpu", "--warm"]) == 0
    assert calls[-1]["warm"] is True


def test_napari_medadv_alias_entry_point(monkeypatch):
    import napari_medadv._qt.demo as demo

    calls = []
    monkeypatch.setattr(demo, "launch_demo", lambda **kw: calls.append(kw) or 0)
    assert demo.main(["--sample", "cxr", "--device", "cpu"]) == 0
    assert calls == [{"device": "cpu", "sample": "cxr", "warm": False}]


def test_warm_demo_fills_the_eps_cache_of_live_ifgsm(make_napari_viewer, qtbot, monkeypatch):
    from napari_medadv._qt.attack import live_iter
    from napari_medadv._qt.demo import setup_demo

    monkeypatch.setattr(live_iter, "FILL_GRID", (0.01, 0.02))
    viewer = make_napari_viewer()
    attack = setup_demo(viewer, device="cpu", warm=True)["Attack"]
    qtbot.waitUntil(lambda: attack.session.shown is not None and not attack.running, timeout=120_000)
    assert attack.attack_name() == "ifgsm" and attack.live.isChecked()
    cache = attack.live_iter.cache
    qtbot.waitUntil(lambda: set(cache.values()) >= {0.01, 0.02, 0.03}, timeout=120_000)
    assert cache.key == attack.live_iter.full_key()
    attack.cancel()
    qtbot.waitUntil(lambda: not attack.live_iter.busy, timeout=60_000)
