"""DGDE's live controls (issue 18): with live on, the query-budget slider continues the kept search
(or shows a solution it already found, with no search), the layers always equal a cold run with
the sliders' settings, the pixel markers and the L0 / probability plot follow."""

from __future__ import annotations

import numpy as np
import pytest

from test_docks import WAIT, docks  # noqa: F401  (the docks fixture)

pytestmark = pytest.mark.gui

PARAMS = {"population": 8, "init_tries": 4}


@pytest.fixture(scope="module")
def cxr_flippable():
    from napari_medadv.core.data.paths import sample_data_dir
    from napari_medadv.core.io import read_image

    return read_image(sample_data_dir() / "cxr" / "heldout" / "case_02.png")  # DGDE flips it in ~100 queries


def _settle(qtbot, aw):
    qtbot.waitUntil(lambda: aw.live_search.last_latency is not None and not aw.running, timeout=4 * WAIT)  # a loaded CI machine


def _move_budget(qtbot, aw, value):
    aw.live_search.last_latency = None
    aw.method_panel._fields["max_queries"].set_value(value)
    _settle(qtbot, aw)


def test_budget_slider_continues_the_search_and_equals_cold_runs(docks, qtbot, cxr_flippable, cxr_model):
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv.core.pipeline import run_attack

    viewer, aw, plots = docks["viewer"], docks["attack"], docks["plots"]
    for data, kw, kind in layer_data_for_image(cxr_flippable, name="cxr"):
        getattr(viewer, f"add_{kind}")(data, **kw)
    aw.session.set_model(cxr_model)
    aw.seed.setValue(5)
    aw.set_attack("dgde", max_queries=40, **PARAMS)
    assert aw.live.isEnabled() and "max_queries" in aw.method_panel.sliders
    aw.live.setChecked(True)
    _settle(qtbot, aw)

    def shown_equals_cold(budget):
        cold = run_attack(cxr_flippable, cxr_model, "dgde", params={**PARAMS, "max_queries": budget}, seed=5)
        shown = aw.session.shown.outcome
        np.testing.assert_array_equal(shown.adversarial, cold.adversarial)
        assert shown.result.extra["l0"] == cold.result.extra["l0"]
        changed = int((shown.adversarial != cxr_flippable.array).any(0).sum())
        assert len(viewer.layers["cxr perturbed pixels"].data) == changed
        return cold

    shown_equals_cold(40)
    run = aw.live_search.run
    q40 = run.search.state.queries
    _move_budget(qtbot, aw, 100)  # more budget: the same search goes on
    assert aw.live_search.run is run and run.search.state.queries > q40 and aw.live_search.last_searched
    cold = shown_equals_cold(100)
    assert cold.result.success == [True]
    assert [r["l0"] for r in plots.history] == cold.result.extra["l0_history"][0]  # the L0 curve
    q100 = run.search.state.queries
    _move_budget(qtbot, aw, 30)  # less: a solution the search already found, no search
    assert run.search.state.queries == q100 and not aw.live_search.last_searched
    shown_equals_cold(30)
    aw.seed.setValue(6)  # another seed: a new search at the next move
    _move_budget(qtbot, aw, 20)
    assert aw.live_search.run is not run
