"""A running iterative attack on screen (issue 18): frames arrive in order, each frame's image and
segmentation belong together, the final layers equal the plain run with the same seed, and a
cancelled run puts the layers back as they were."""

from __future__ import annotations

import numpy as np
import pytest

from test_docks import WAIT, _open, _wait_job, docks  # noqa: F401  (the docks fixture)

pytestmark = pytest.mark.gui

CHANNELS = ("t1", "t1ce", "t2", "flair")


def _layers(viewer):
    adv = np.stack([np.asarray(viewer.layers[f"case {c} adversarial"].data) for c in CHANNELS])
    return adv, np.asarray(viewer.layers["case segmentation (adversarial)"].data)


def _frames_land(monkeypatch):
    """The dock's attack waits after each frame until it is on screen (the pacer asks for the next),
    so frames show on any machine, however fast the attack."""
    from napari_medadv._qt.attack import widget

    real = widget.attack_job

    def job(*args, **kwargs):
        pacer = args[9] if len(args) > 9 else kwargs.get("pacer")
        gen = real(*args, **kwargs)
        try:
            item = next(gen)
            while True:
                yield item
                if pacer is not None and item[2][1] is not None:
                    pacer.want.wait(30)
                item = next(gen)
        except StopIteration as done:
            return done.value

    monkeypatch.setattr(widget, "attack_job", job)


def test_frames_arrive_in_order_and_the_last_layers_equal_the_plain_run(docks, qtbot, glioma_small, unet2d,
                                                                         monkeypatch):
    from napari_medadv.core.pipeline import run_attack

    _frames_land(monkeypatch)
    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("ifgsm", eps=0.05, steps=40)
    aw.seed.setValue(3)
    frames = []

    def on_frame(shown):
        o = shown.outcome
        # on screen when the frame is announced: the visible layers hold the frame (hidden ones
        # catch up when shown, as in live ε)
        np.testing.assert_array_equal(viewer.layers["case flair adversarial"].data, o.adversarial[3])
        np.testing.assert_array_equal(viewer.layers["case segmentation (adversarial)"].data, o.seg_adv)
        frames.append((o.result.extra["iterate"], o.adversarial.copy(), o.seg_adv.copy(), rw.title.text()))

    aw.session.frame.connect(on_frame)
    _wait_job(qtbot, aw.run(), aw)
    aw.session.frame.disconnect(on_frame)
    assert frames, "no step was shown while the attack ran"
    iterates = [f[0] for f in frames]
    assert iterates == sorted(iterates) and len(set(iterates)) == len(iterates) and iterates[-1] < 40
    for it, adv, seg, title in frames:
        out = unet2d.forward(unet2d.to_batch(adv))  # the frame's segmentation is its own image's
        np.testing.assert_array_equal(unet2d.to_label_map(out)[0], seg)
        assert f"iterate {it} of 40" in title
    plain = run_attack(glioma_small, unet2d, "ifgsm", params={"eps": 0.05, "steps": 40, "track_metrics": True},
                       labels=glioma_small.labels, seed=3)
    adv, seg = _layers(viewer)
    np.testing.assert_allclose(adv, plain.adversarial, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(seg, plain.seg_adv)
    assert aw.session.shown.outcome.result.extra.get("iterate") is None  # the final result, not a frame
    assert "running" not in rw.title.text()


def test_a_cancelled_run_puts_the_shown_frames_back(docks, qtbot, glioma_small, unet2d):
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("fgsm", eps=0.02)
    _wait_job(qtbot, aw.run(), aw)
    before_adv, before_seg = _layers(viewer)
    names = [lyr.name for lyr in viewer.layers]
    meta = viewer.layers["case flair adversarial"].metadata["medadv"]
    shown = aw.session.shown
    aw.set_attack("pgd", eps=0.05, steps=500)
    job = aw.run()
    qtbot.waitUntil(lambda: aw.anytime.shown >= 1, timeout=WAIT)
    assert not np.array_equal(_layers(viewer)[0], before_adv)  # a frame is on screen
    aw.cancel()
    _wait_job(qtbot, job, aw)
    adv, seg = _layers(viewer)
    np.testing.assert_array_equal(adv, before_adv)
    np.testing.assert_array_equal(seg, before_seg)
    assert [lyr.name for lyr in viewer.layers] == names
    assert viewer.layers["case flair adversarial"].metadata["medadv"] == meta
    assert aw.session.shown is shown
    assert "cancelled" in aw.status.text()


def test_dgde_generations_are_shown_with_their_pixels(docks, qtbot, cxr_small, cxr_model, monkeypatch):
    viewer, aw, rw = docks["viewer"], docks["attack"], docks["readouts"]
    for data, kw, kind in __import__("napari_medadv._qt.layers", fromlist=["x"]).layer_data_for_image(cxr_small,
                                                                                                      name="cxr"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    aw.session.set_model(cxr_model)
    _frames_land(monkeypatch)
    aw.set_attack("dgde", max_queries=1500, population=8, init_tries=4)
    frames = []

    def on_frame(shown):
        o = shown.outcome
        assert o.result.extra["unit"] == "queries"
        changed = int((o.adversarial != cxr_small.array).any(0).sum())
        pts = viewer.layers["cxr perturbed pixels"] if "cxr perturbed pixels" in viewer.layers else None
        frames.append((changed, 0 if pts is None else len(pts.data), rw.title.text()))

    aw.session.frame.connect(on_frame)
    _wait_job(qtbot, aw.run(), aw)
    aw.session.frame.disconnect(on_frame)
    assert frames, "no generation was shown while DGDE ran"
    for changed, markers, title in frames:
        assert markers == changed  # one marker per perturbed pixel of the shown candidate
        assert "running: queries" in title
