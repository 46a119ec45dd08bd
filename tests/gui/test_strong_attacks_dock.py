"""SegPGD, CosPGD and APGD in the Attack dock: their parameter forms come from the registry (APGD's
objective as a choice) and a run goes through the dock with no GUI edit."""

from __future__ import annotations

import pytest

from test_docks import _open, _wait_job, docks  # noqa: F401  (the shared dock fixture)


@pytest.mark.parametrize("name", ["segpgd", "cospgd", "apgd"])
def test_parameter_forms(docks, name):  # noqa: F811
    from napari_medadv.core.attacks import ATTACKS

    aw = docks["attack"]
    aw.set_attack(name, eps=0.03, steps=3)
    p = aw.params()
    assert p["eps"] == pytest.approx(0.03) and p["steps"] == 3
    expected = {q.name for q in ATTACKS[name].params if q.default is not None}
    assert expected <= set(p)
    if name == "apgd":
        assert p["objective"] == "ce" and p["rho"] == pytest.approx(0.75)
        aw.set_attack("apgd", objective="dlr")
        assert aw.params()["objective"] == "dlr"


@pytest.mark.parametrize("name", ["segpgd", "apgd"])
def test_strong_attack_runs_through_the_dock(docks, qtbot, glioma_small, unet2d, name):  # noqa: F811
    viewer, aw = docks["viewer"], docks["attack"]
    _open(viewer, glioma_small)
    aw.session.set_model(unet2d)
    aw.set_attack(name, eps=0.05, steps=2)
    _wait_job(qtbot, aw.run(), aw)
    shown = aw.session.shown
    assert shown is not None and shown.outcome.attack == name
    assert shown.outcome.params["steps"] == 2
    assert viewer.layers["case flair adversarial"].data.shape == glioma_small.spatial_shape
    assert "case segmentation (adversarial)" in viewer.layers
