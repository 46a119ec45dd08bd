""""Breaks at ε": the search on a toy curve with a known answer, bisection against a dense ε scan on a
small model, None when never reached, classifiers, and bad arguments."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_medadv.core.breaking import breaking_eps, dice_auc, search_breaking
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.errors import MedadvError
from napari_medadv.core.io import read_image
from napari_medadv.core.live import LiveEps
from napari_medadv.core.models import load_model

sys.path.insert(0, str(Path(__file__).parent))
import _tiny_models  # noqa: E402  (registers the tiny: scheme)


def _toy(eps):
    """WT: Dice = 1 − ε / 0.12 (below 0.5 past ε = 0.06); ET: never below 0.6."""
    return {"WT": 1.0 - eps / 0.12, "ET": max(0.6, 1.0 - eps)}


def test_search_finds_the_known_breaking_eps_and_none():
    calls = []

    def evaluate(eps):
        calls.append(eps)
        return _toy(eps)

    breaking, brackets, probes = search_breaking(evaluate, lambda k, d: d < 0.5, 0.1, grid=8, refine=6)
    lo, hi = brackets["WT"]
    assert lo < 0.06 <= hi and hi - lo == pytest.approx(0.1 / 8 / 2 ** 6)
    assert breaking["WT"] == hi
    assert breaking["ET"] is None and brackets["ET"] is None
    assert len(calls) == len(set(calls)) == 8 + 6  # probes are cached, never repeated
    # Dice-vs-ε area: the trapezoid rule is exact on a line: mean of 1 − ε/0.12 over [0, 0.1]
    auc = dice_auc(probes, 0.1)
    assert auc["WT"] == pytest.approx(1 - 0.05 / 0.12) and auc["ET"] == pytest.approx(np.mean([1 - e for e in (0, 0.1)]))


def test_search_breaks_at_first_grid_point_and_bad_arguments():
    breaking, brackets, _ = search_breaking(lambda e: {"x": 0.0}, lambda k, d: d < 0.5, 0.2, grid=4, refine=3)
    assert brackets["x"][0] == 0.0 and breaking["x"] == pytest.approx(0.05 / 8)
    with pytest.raises(ValueError, match="eps_max"):
        search_breaking(_toy, lambda k, d: d < 0.5, 0.0)
    with pytest.raises(ValueError, match="grid"):
        search_breaking(_toy, lambda k, d: d < 0.5, 0.1, grid=0)


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    root = _tiny_models.make_small_cases(tmp_path_factory.mktemp("brk"), names=("glioma_001",), size=32)
    return read_image(root / "glioma_001")


def test_fgsm_bisection_agrees_with_a_dense_scan(small_case):
    model = load_model("tiny:0", device="cpu")
    calls = []
    hook = model.module.register_forward_hook(lambda *a: calls.append(1))
    try:
        res = breaking_eps(small_case, model, "fgsm", eps_max=0.12, grid=6, refine=7)
    finally:
        hook.remove()
    assert len(calls) == 1 + len(res.curve)  # FGSM's prepare, then one forward per probe
    assert set(res.breaking_eps) == {"1", "2", "4", "WT", "TC", "ET"}
    assert res.names == {"1": "NCR/NET", "2": "ED", "4": "ET"}
    # a dense scan on the same fast path: the first ε (step 0.003) where each Dice is below 0.5
    live = LiveEps(small_case, model)
    step = 0.003
    first = {}
    for eps in np.arange(1, 41) * step:
        block = live.segmentation_readouts(live.outcome(float(eps), metrics=False))[0]["clean_vs_adversarial"]
        for key, dice in {**block["per_label"], **block["regions"]}.items():
            if dice < 0.5 and key not in first:
                first[key] = float(eps)
    width = 0.12 / 6 / 2 ** 7
    for key, eps in res.breaking_eps.items():
        if key not in first:
            assert eps is None
            continue
        lo, hi = res.brackets[key]
        assert hi - lo == pytest.approx(width) and eps == hi
        assert first[key] - step - 1e-9 <= eps <= first[key] + 1e-9, key  # the scan's resolution
    assert any(v is not None for v in res.breaking_eps.values())
    assert all(0.0 < a < 1.0 for a in res.dice_auc.values())
    assert res.to_dict()["n_evaluations"] == len(res.curve)


def test_none_when_not_reached_and_iterative_attacks(small_case):
    model = load_model("tiny:0", device="cpu")
    tiny = breaking_eps(small_case, model, "fgsm", eps_max=0.004, grid=3, refine=2)
    assert tiny.breaking_eps == {k: None for k in ("1", "2", "4", "WT", "TC", "ET")}
    assert all(a > 0.5 for a in tiny.dice_auc.values())
    pgd = breaking_eps(small_case, model, "pgd", params={"steps": 2, "eps": 0.9}, eps_max=0.12, grid=3, refine=2)
    assert "re-run" in pgd.method and len(pgd.curve) <= 3 + 2 * 6
    fgsm = breaking_eps(small_case, model, "fgsm", eps_max=0.12, grid=3, refine=2)
    for key in ("WT", "ET"):  # two PGD steps break no later than one FGSM step here
        assert pgd.breaking_eps[key] is not None and pgd.breaking_eps[key] <= fgsm.breaking_eps[key] + 1e-9


def test_classifier_breaks_when_the_decision_flips():
    image = read_image(sample_data_dir() / "cxr" / "chest_pa.png")
    model = load_model("demo:cxr", device="cpu")
    res = breaking_eps(image, model, "fgsm", eps_max=0.1, grid=4, refine=3)
    assert set(res.breaking_eps) == set(model.info.class_names) and res.dice_auc is None
    live = LiveEps(image, model)
    clean = live.outcome(0.0, metrics=False).probs_clean
    for i, name in enumerate(model.info.class_names):
        if res.breaking_eps[name] is None:
            continue
        lo, hi = res.brackets[name]
        p_hi = live.outcome(hi, metrics=False).probs_adv[i]
        p_lo = live.outcome(lo, metrics=False).probs_adv[i] if lo > 0 else clean[i]
        assert (p_hi >= 0.5) != (clean[i] >= 0.5) and (p_lo >= 0.5) == (clean[i] >= 0.5)


def test_breaking_needs_an_eps_budget(small_case):
    model = load_model("tiny:0", device="cpu")
    with pytest.raises(MedadvError, match="no ε budget"):
        breaking_eps(small_case, model, "motion")
    with pytest.raises(MedadvError, match="between 0 and 1"):
        breaking_eps(small_case, model, "fgsm", threshold=1.5)
