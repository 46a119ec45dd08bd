"""Matched image quality: the search reaches the target for artifacts and for FGSM ε, flags
unreachable targets, agrees with metrics.json, and refuses bad arguments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_medadv.core.attacks import ATTACKS, FGSM
from napari_medadv.core.matching import (
    image_quality, knob_bounds, knob_for, match_knob, match_quality,
)
from napari_medadv.core.data.paths import sample_data_dir

CASE = sample_data_dir() / "glioma" / "glioma_001"


def _volume():
    g = torch.Generator().manual_seed(0)
    zz, yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (16, 20, 18)), indexing="ij")
    blob = ((zz**2 + yy**2 + xx**2) < 0.7).float()
    x = torch.stack([blob * (1 + 0.2 * torch.rand(16, 20, 18, generator=g)), blob * (2 + xx)])
    return x[None]


# ----------------------------------------------------------------------------- the quality measure

def test_image_quality_psnr_from_the_mean_normalised_mse_on_each_channels_range():
    x = _volume()
    y = x.clone()
    y[0, 0, 8, 10, 9] += 0.5
    y[0, 1, 8, 10, 9] -= 1.0
    r0 = float(x[0, 0].max() - x[0, 0].min())
    r1 = float(x[0, 1].max() - x[0, 1].min())
    n = x[0, 0].numel()
    # hand-computed: 10 log10(1 / mean_c(MSE_c / range_c^2))
    expected = 10 * math.log10(1 / np.mean([0.25 / n / r0 ** 2, 1.0 / n / r1 ** 2]))
    assert image_quality(x, y) == pytest.approx(expected, abs=1e-6)
    # one untouched channel: still finite (the mean of per-channel PSNRs would be inf)
    z = x.clone()
    z[0, 0, 8, 10, 9] += 0.5
    assert math.isfinite(image_quality(x, z))
    assert image_quality(x, z) == pytest.approx(10 * math.log10(1 / np.mean([0.25 / n / r0 ** 2, 0.0])), abs=1e-6)
    assert image_quality(x, x) == math.inf
    assert image_quality(x, x, "ssim") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="metric"):
        image_quality(x, y, "lpips")
    with pytest.raises(ValueError, match="B C"):
        image_quality(x[0, 0], y[0, 0])


# ----------------------------------------------------------------------------- the search itself

def test_match_knob_on_a_known_curve():
    """x + k·n: PSNR = 20 log10(range / (k·rms(n))) — solvable by hand."""
    x = _volume()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    calls = []

    def perturb(k):
        calls.append(k)
        return x + k * noise

    res = match_knob(perturb, x, 30.0, tol=0.01, source="toy", knob="k")
    assert res.reached and abs(res.achieved - 30.0) <= 0.01
    # by hand: both channels' PSNR fall by exactly 20 log10(k) -> k = 10 ** ((PSNR(1) - 30) / 20)
    k_true = 10 ** ((image_quality(x, x + noise) - 30.0) / 20)
    assert res.value == pytest.approx(k_true, rel=2e-3)
    assert len(calls) <= 8 and len(res.evaluations) == len(calls)
    assert torch.equal(res.perturbed, x + res.value * noise)
    d = res.to_dict()
    assert json.loads(json.dumps(d))["reached"] is True and "perturbed" not in d


def test_unreachable_targets_give_the_closest_value_and_a_flag():
    x = _volume()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    res = match_knob(lambda k: x + k * noise, x, 5.0, bounds=(0.0, 0.1), source="toy", knob="k")
    assert not res.reached and res.value == 0.1 and "cannot reach" in res.note
    with pytest.raises(ValueError, match="cannot reach psnr 5"):
        match_knob(lambda k: x + k * noise, x, 5.0, bounds=(0.0, 0.1), strict=True, source="toy")
    res = match_knob(lambda k: x + k * noise + 1.0, x, 60.0, bounds=(0.0, 1.0), knob="k")
    assert not res.reached and "already below" in res.note


def test_progress_callback_and_cancel():
    x = _volume()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    seen = []
    res = match_knob(lambda k: x + k * noise, x, 30.0, callback=lambda n, k, q: seen.append((n, k, q)))
    assert [n for n, _, _ in seen] == list(range(1, len(res.evaluations) + 1))
    assert [(k, q) for _, k, q in seen] == res.evaluations and not res.cancelled
    res = match_knob(lambda k: x + k * noise, x, 30.0, strict=True, should_stop=lambda: True)
    assert res.cancelled and not res.reached and len(res.evaluations) == 1 and "cancelled" in res.note
    assert res.to_dict()["cancelled"] is True


def test_step_function_flags_a_gap():
    x = _volume()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    step = lambda k: x + (0.05 if k < 0.5 else 0.5) * noise  # noqa: E731  quality jumps at k = 0.5
    q_lo, q_hi = image_quality(x, x + 0.05 * noise), image_quality(x, x + 0.5 * noise)
    res = match_knob(step, x, (q_lo + q_hi) / 2, bounds=(0.1, 1.0), tol=0.1, max_evals=60)
    assert not res.reached and "jumps" in res.note
    assert res.achieved in (pytest.approx(q_lo), pytest.approx(q_hi))


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "dice"}, "metric"),
    ({"bounds": (0.5, 0.1)}, "bounds"),
    ({"bounds": (-1.0, 1.0)}, "bounds"),
    ({"tol": 0.0}, "tol"),
    ({"max_evals": 1}, "max_evals"),
])
def test_bad_search_arguments(kwargs, message):
    x = _volume()
    with pytest.raises(ValueError, match=message):
        match_knob(lambda k: x * (1 + k), x, 30.0, **kwargs)


def test_bad_targets():
    x = _volume()
    with pytest.raises(ValueError, match="finite"):
        match_knob(lambda k: x, x, float("nan"))
    with pytest.raises(ValueError, match="SSIM"):
        match_knob(lambda k: x, x, 1.5, metric="ssim")
    with pytest.raises(ValueError, match="exactly one"):
        match_quality("motion", nn.Conv3d(2, 2, 1), x, psnr=30.0, ssim=0.9)


# ----------------------------------------------------------------------------- registered sources

def test_knob_of_each_source():
    assert knob_for("fgsm") == "eps" and knob_for("pgd") == "eps" and knob_for("noise") == "eps"
    for name in ("motion", "ghosting", "spike", "biasfield", "gaussnoise", "blur"):
        assert knob_for(name) == "severity" and knob_bounds(name) == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown attack"):
        knob_for("nope")


@pytest.mark.parametrize("name, target", [("gaussnoise", 30.0), ("biasfield", 28.0), ("blur", 25.0)])
def test_artifact_reaches_target_psnr(name, target):
    x = _volume()
    model = nn.Conv3d(2, 2, 1)
    res = match_quality(name, model, x, psnr=target, seed=0, spacing=(1.0, 1.0, 1.0))
    assert res.reached, res.note
    assert abs(res.achieved - target) <= 0.1 and 0 < res.value <= 1
    again = ATTACKS.create(name, model, severity=res.value, seed=0, spacing=(1.0, 1.0, 1.0))(x)
    assert image_quality(x, again) == pytest.approx(res.achieved, abs=1e-9)
    assert res.params == {"severity": res.value} and res.knob == "severity"


def test_artifact_reaches_target_ssim():
    x = _volume()
    res = match_quality("gaussnoise", nn.Conv3d(2, 2, 1), x, ssim=0.8, seed=0)
    assert res.reached and abs(res.achieved - 0.8) <= 0.002 and res.metric == "ssim"


def _seg_net():
    torch.manual_seed(0)  # untrained is enough: FGSM only needs a gradient
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


@pytest.fixture
def seg_case():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 2, 24, 24, generator=g) * torch.tensor([1.0, 50.0]).reshape(1, 2, 1, 1)
    return _seg_net(), x, torch.randint(0, 3, (2, 24, 24), generator=g)


def test_fgsm_eps_reaches_target_psnr(seg_case):
    seg_model, x, y = seg_case
    res = match_quality("fgsm", seg_model, x, y, psnr=32.0, seed=0)
    assert res.reached and abs(res.achieved - 32.0) <= 0.1 and res.knob == "eps"
    direct = FGSM(seg_model, eps=res.value, seed=0)(x, y)  # the fast ε path equals a fresh run
    torch.testing.assert_close(direct, res.perturbed, rtol=0, atol=1e-6)
    assert image_quality(x, direct) == pytest.approx(32.0, abs=0.1)


def test_rerun_path_for_another_attack(seg_case):
    seg_model, x, y = seg_case
    res = match_quality("ifgsm", seg_model, x, y, psnr=35.0, params={"steps": 2}, seed=0)
    assert res.reached and res.params == {"steps": 2, "eps": res.value}
    with pytest.raises(ValueError, match="what the search sets"):
        match_quality("ifgsm", seg_model, x, y, psnr=35.0, params={"eps": 0.1})


def test_no_scalar_knob_is_a_clear_error(monkeypatch):
    from napari_medadv.core.attacks import AttackSpec, Param

    spec = ATTACKS["fgsm"]
    fake = AttackSpec("knobless", "Knobless", "", spec.cls, (Param("steps", int, 1, "steps"),), False, "no")
    monkeypatch.setitem(ATTACKS, "knobless", fake)
    with pytest.raises(ValueError, match="no scalar knob"):
        knob_for("knobless")


# ----------------------------------------------------------------------------- images, pipeline, CLI

def test_cli_match_psnr(tmp_path, capsys):
    from napari_medadv.cli import main

    out = tmp_path / "gn"
    rc = main(["attack", str(CASE), "--model", "demo:unet3d", "--attack", "gaussnoise", "--match-psnr", "31",
               "--seed", "0", "--out", str(out), "--device", "cpu", "--quiet"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "record.json").read_text())
    assert abs(metrics["image_quality"]["psnr"] - 31.0) <= 0.1
    # match_for_image set the run up exactly as run_attack does (ROI, seed, input): same PSNR
    assert metrics["image_quality"]["psnr"] == pytest.approx(record["matched_quality"]["achieved"], abs=1e-6)
    assert record["matched_quality"]["reached"] and record["matched_quality"]["knob"] == "severity"
    assert record["attack"]["params"]["severity"] == pytest.approx(record["matched_quality"]["value"])
    # unreachable -> one line, exit 2, nothing written
    rc = main(["attack", str(CASE), "--model", "demo:unet3d", "--attack", "ghosting", "--match-psnr", "10",
               "--seed", "0", "--out", str(tmp_path / "g"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach psnr 10" in err and not (tmp_path / "g").exists()
    rc = main(["attack", str(CASE), "--model", "demo:unet3d", "--attack", "blur", "--match-psnr", "30",
               "--severity", "0.2", "--out", str(tmp_path / "b"), "--device", "cpu", "--quiet"])
    assert rc == 2 and "drop one" in capsys.readouterr().err
