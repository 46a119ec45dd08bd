"""Live ε for iterative attacks (issue 18): a slider move runs the attack warm and shows it, a
cached ε comes back without a model call, the cache fills in the background with the results Run
gives and is cleared when anything it depends on changes."""

from __future__ import annotations

import numpy as np
import pytest

from test_docks import WAIT, _open, docks  # noqa: F401  (the docks fixture)

pytestmark = pytest.mark.gui


def _move(qtbot, aw, eps):
    aw.live_iter.last_latency = None
    aw.set_eps(eps)
    qtbot.waitUntil(lambda: aw.live_iter.last_latency is not None and not aw.running, timeout=WAIT)
    qtbot.waitUntil(lambda: aw.session.shown is not None and aw.session.shown.outcome.result.eps == pytest.approx(eps),
                    timeout=WAIT)
    return aw.session.shown.outcome


def test_live_eps_for_ifgsm_warm_starts_caches_and_fills(docks, qtbot, glioma_small, unet2d, monkeypatch):
    from napari_medadv._qt.attack import live_iter
    from napari_medadv.core.pipeline import run_attack

    monkeypatch.setattr(live_iter, "FILL_GRID", (0.01, 0.02))
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("ifgsm", eps=0.03, steps=3)
    assert aw.live.isEnabled()
    aw.live.setChecked(True)
    first = _move(qtbot, aw, 0.04)
    rng = np.ptp(glioma_small.array.reshape(4, -1), axis=1)
    delta = np.abs(first.adversarial - glioma_small.array).reshape(4, -1).max(1)
    assert np.all(delta <= 0.04 * rng * (1 + 1e-5) + 1e-6)
    second = _move(qtbot, aw, 0.05)  # previewed warm (the 4 % result scaled to 5 %), then settled cold
    assert not aw.live_iter.last_from_cache
    assert second.clean_output is first.clean_output  # the clean forward is kept: one forward less per move
    kept = aw.live_iter._starts.prepared  # and the whole clean side of the run (region, input, labels)
    assert kept is not None and kept.started.attack.eps == pytest.approx(0.04)
    cold5 = run_attack(glioma_small, unet2d, "ifgsm", params={**aw.params(), "eps": 0.05},
                       labels=glioma_small.labels, seed=aw.inputs.seed_value())
    np.testing.assert_array_equal(second.adversarial, cold5.adversarial)  # what Run gives, same seed
    delta = np.abs(second.adversarial - glioma_small.array).reshape(4, -1).max(1)
    assert np.all(delta <= 0.05 * rng * (1 + 1e-5) + 1e-6)
    assert viewer.layers["case flair adversarial"].data is not None
    again = _move(qtbot, aw, 0.04)  # cached: no model call, the same result object
    assert aw.live_iter.last_from_cache and again is first
    # the background fill computes the grid with cold runs: the results Run gives
    qtbot.waitUntil(lambda: set(aw.live_iter.cache.values()) >= {0.01, 0.02} and not aw.live_iter.busy,
                    timeout=WAIT)
    key = aw.live_iter.full_key()
    filled = aw.live_iter.cache.get(key, 0.02)
    cold = run_attack(glioma_small, unet2d, "ifgsm", params={**aw.params(), "eps": 0.02},
                      labels=glioma_small.labels, seed=aw.inputs.seed_value())
    np.testing.assert_array_equal(filled.adversarial, cold.adversarial)
    # any change of what results depend on clears the cache (here: the number of steps)
    aw.set_attack("ifgsm", steps=4)
    assert aw.live_iter.full_key() != key
    _move(qtbot, aw, 0.02)
    assert aw.live_iter.cache.key == aw.live_iter.full_key()
    assert not aw.live_iter.last_from_cache
    aw.live.setChecked(False)


def test_live_caches_follow_in_place_edits_and_the_target(docks, qtbot, glioma_small, unet2d, monkeypatch):
    """Painting the picked ground truth in place, or picking another target, is a change of what
    live results depend on: nothing cached is shown for it."""
    from napari_medadv._qt.attack import live_iter

    monkeypatch.setattr(live_iter, "FILL_GRID", ())
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack("tifgsm", eps=0.03, steps=2)
    aw.live.setChecked(True)
    _move(qtbot, aw, 0.04)
    li = aw.live_iter
    assert len(li.cache) == 1 and li._starts.prepared is not None
    key = li.full_key()
    gt = viewer.layers[aw.inputs.choices().labels]
    gt.paint((0, 5, 5), 1, refresh=True)  # an in-place edit, as the brush makes
    assert len(li.cache) == 0 and li._starts.prepared is None
    _move(qtbot, aw, 0.03)
    assert not li.last_from_cache and li.cache.values() == [0.03]
    idx = aw.target_combo.findData("value:2")
    assert idx >= 0 and idx != aw.target_combo.currentIndex()
    aw.target_combo.setCurrentIndex(idx)
    assert li.full_key() != key and li.cache.get(li.full_key(), 0.03) is None
    aw.live.setChecked(False)
