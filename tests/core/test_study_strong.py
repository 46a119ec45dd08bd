"""Study columns of issue 14: breaking ε per case (equal to core.breaking's own search), the
Dice-vs-ε AUC (by hand from the rows), the sanity checks once per model (stored, never
recomputed on resume), their report sections, and fingerprints unchanged without the new keys."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _tiny_models  # noqa: E402,F401  (registers the tiny: and masked: schemes)

from napari_medadv.core import study as ST  # noqa: E402
from napari_medadv.core.breaking import breaking_eps  # noqa: E402
from napari_medadv.core.errors import MedadvError  # noqa: E402
from napari_medadv.core.io import read_image  # noqa: E402
from napari_medadv.core.models import load_model  # noqa: E402
from napari_medadv.core.study.cases import case_seed  # noqa: E402
from napari_medadv.core.study.report.robustness import censored_quantiles  # noqa: E402

GRID = [{"attack": "fgsm", "eps": [0.03, 0.1]}]
BREAK = {"attack": ["fgsm", "pgd"], "steps": 2, "grid": 2, "refine": 1}
SANITY = {"source_model": "tiny:0", "eps": [0.02, 0.05], "pgd_eps": [0.05], "pgd_steps": 2, "steps": [1, 2],
          "steps_eps": 0.05}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    return _tiny_models.make_small_cases(tmp_path_factory.mktemp("cases"), names=("glioma_001", "glioma_002"),
                                         size=16)


def _config(root, **kw) -> ST.StudyConfig:
    base = dict(dataset=str(root), models=["masked:round"], grid=GRID, seed=5, breaking_eps=BREAK, sanity=SANITY)
    return ST.StudyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def study(cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("strong")
    res = ST.Study(_config(cases), out).run(workers=0)
    return out, res


def test_breaking_columns_match_core_breaking(study, cases):
    out, res = study
    assert res.n_run == 2
    df = pd.read_csv(out / "per_case.csv")
    clean = df[df["grid_key"] == "none"].set_index("case")
    model = load_model("masked:round", device="cpu")
    for case in ("glioma_001", "glioma_002"):
        image = read_image(cases / case)
        for attack in ("fgsm", "pgd"):
            r = breaking_eps(image, model, attack, params={"steps": 2} if attack == "pgd" else {}, labels=image.labels, seed=case_seed(
                5, case, "masked:round", f"breaking[{attack}]"), eps_max=0.1, grid=2, refine=1)
            for key in ("WT", "TC", "ET"):
                want = math.inf if r.breaking_eps[key] is None else r.breaking_eps[key]
                assert clean.loc[case, f"breaking_eps_{attack}_{key}"] == pytest.approx(want)
    # the rounding step hides the gradient: FGSM never breaks anything up to ε_max
    assert np.isinf(clean[[f"breaking_eps_fgsm_{k}" for k in ("WT", "TC", "ET")]].to_numpy()).all()
    attacked = df[df["grid_key"] != "none"]
    assert attacked.filter(like="breaking_eps_").isna().all().all()  # only on the no-attack rows
    detail = json.loads((out / "cases" / "glioma_001.json").read_text())["breaking"]
    assert [d["attack"] for d in detail] == ["fgsm", "pgd"] and detail[0]["eps_max"] == 0.1


def test_dice_auc_by_hand(study):
    out, _ = study
    df = pd.read_csv(out / "per_case.csv")
    for case, g in df.groupby("case"):
        d0 = g[g["grid_key"] == "none"]["dice_WT"].item()
        d1 = g[g["grid_key"] == "fgsm[eps=0.03]"]["dice_WT"].item()
        d2 = g[g["grid_key"] == "fgsm[eps=0.1]"]["dice_WT"].item()
        want = (0.03 * (d0 + d1) / 2 + 0.07 * (d1 + d2) / 2) / 0.1
        assert g[g["attack"] == "fgsm"]["auc_dice_WT"].to_numpy() == pytest.approx([want, want])
        assert np.isnan(g[g["grid_key"] == "none"]["auc_dice_WT"].item())
    summ = pd.read_csv(out / "summary_dice_auc.csv")
    assert summ["auc_WT_mean"].item() == pytest.approx(df.drop_duplicates("case")["case"].map(
        df[df["attack"] == "fgsm"].groupby("case")["auc_dice_WT"].first()).mean())


def test_sanity_stored_once_and_reported(study, cases, monkeypatch):
    out, _ = study
    stored = json.loads((out / "sanity" / "masked_round.json").read_text())
    assert stored["cases"] == ["glioma_001"]  # the first case only (default cases: 1)
    failed = stored["reports"][0]["failed"]
    assert "zero_gradients" in failed
    md = (out / "report.md").read_text()
    for title in ("## Breaks at ε", "## Dice-vs-ε AUC", "## Evaluation sanity checks"):
        assert title in md
    assert "possible gradient masking" in md and "| masked:round | fgsm | WT | 2 | > ε_max |" in md
    sanity_csv = pd.read_csv(out / "sanity_checks.csv")
    assert not sanity_csv.set_index("check").loc["zero_gradients", "passed"]

    def boom(*a, **k):
        raise AssertionError("the sanity checks ran again")

    monkeypatch.setattr("napari_medadv.core.sanity.run_sanity_checks", boom)
    res = ST.Study(_config(cases), out).run(workers=0)
    assert (res.n_run, res.n_skipped) == (0, 2)
    # adding or changing the sanity key never recomputes the cases, only the sanity checks
    res = ST.Study(_config(cases, sanity={**SANITY, "cases": 2}), out)
    assert all(res.is_done(c) for c in res.dataset().cases)


def test_fingerprint_unchanged_without_new_keys(cases, tmp_path):
    plain = ST.Study(_config(cases, breaking_eps=None, sanity=None), tmp_path)
    with_sanity = ST.Study(_config(cases, breaking_eps=None), tmp_path)
    with_break = ST.Study(_config(cases), tmp_path)
    c = plain.dataset().cases[0]
    assert plain.fingerprint(c) == with_sanity.fingerprint(c) != with_break.fingerprint(c)


def test_settings_validated_and_censored_quantiles():
    with pytest.raises(MedadvError, match="no ε budget"):
        ST.StudyConfig(dataset="x", models=["tiny:0"], grid=GRID, breaking_eps={"attack": "motion"}).validate()
    with pytest.raises(MedadvError, match="unknown key"):
        ST.StudyConfig(dataset="x", models=["tiny:0"], grid=GRID, sanity={"colour": 1}).validate()
    with pytest.raises(MedadvError, match="eps_max"):
        ST.StudyConfig(dataset="x", models=["tiny:0"], grid=[{"attack": "motion"}], breaking_eps=True).validate()
    assert censored_quantiles([0.1, 0.2, 0.3, 0.4]) == pytest.approx([0.175, 0.25, 0.325])
    assert censored_quantiles([0.1, 0.2, math.inf, math.inf])[1:] == [math.inf, math.inf]
    assert censored_quantiles([0.02, math.inf]) == [math.inf, math.inf, math.inf]  # q25 touches the censored case
    assert censored_quantiles([0.1, 0.2, 0.3, math.inf])[:2] == pytest.approx([0.175, 0.25])


def test_classifier_study_breaking_and_sanity(tmp_path):
    """A labelled classifier dataset: breaking ε per finding and the sanity checks (with DGDE) run,
    attacking the clean prediction (FGSM's fast ε path takes label maps only)."""
    import imageio.v3 as iio

    from napari_medadv.core.models.registry import register_scheme

    register_scheme("tinycls", _tiny_models.tiny_classifier_loader)
    rng = np.random.default_rng(0)
    rows = ["file,a,b,c"]
    for i in range(2):
        img = rng.random((16, 16)) * 0.2 + 0.1
        img[:8] += 0.5 * i
        iio.imwrite(tmp_path / f"im{i}.png", (img * 255).astype(np.uint8))
        rows.append(f"im{i}.png,{i},0,0")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = ST.StudyConfig(dataset=str(tmp_path), models=["tinycls:0"], grid=[{"attack": "fgsm", "eps": [0.1, 0.3]}],
                         breaking_eps={"attack": "fgsm", "eps_max": 0.5},
                         sanity={"eps": [0.1, 0.3], "pgd_eps": [0.3], "pgd_steps": 2, "steps": [1, 2], "steps_eps": 0.3})
    out = tmp_path / "out"
    ST.Study(cfg, out).run(workers=0)
    df = pd.read_csv(out / "per_case.csv")
    clean = df[df["grid_key"] == "none"]
    assert {"breaking_eps_fgsm_a", "breaking_eps_fgsm_b", "breaking_eps_fgsm_c"} <= set(df.columns)
    assert clean["breaking_eps_fgsm_a"].notna().all()
    stored = json.loads((out / "sanity" / "tinycls_0.json").read_text())
    assert {c["name"] for c in stored["reports"][0]["checks"]} >= {"zero_gradients", "black_box_vs_white_box"}
    assert "## Breaks at ε" in (out / "report.md").read_text()
