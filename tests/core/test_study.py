"""Robustness studies: grid, dataset discovery, end-to-end run, statistics vs scipy, summary vs
per-case data, resume after interruption, Dask LocalCluster == sequential, classifier metrics."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

sys.path.insert(0, str(Path(__file__).parent))
import _tiny_models  # noqa: E402,F401  (registers the tiny: scheme)

from napari_medadv.core import study as ST  # noqa: E402
from napari_medadv.core.study import stats as S  # noqa: E402
from napari_medadv.core.study.cases import _evaluate  # noqa: E402
from napari_medadv.core.errors import InputFileError, MedadvError  # noqa: E402
from napari_medadv.core.data.paths import sample_data_dir  # noqa: E402

GRID = [{"attack": "fgsm", "eps": [0.02, 0.08]}, {"attack": "ifgsm", "eps": [0.02, 0.08], "steps": 3}]
SIZE = 24


@pytest.fixture(scope="module")
def small_cases(tmp_path_factory) -> Path:
    """Three shipped glioma cases cropped to 24 x 24 x 24 around the tumour (cheap to attack)."""
    return _tiny_models.make_small_cases(tmp_path_factory.mktemp("cases"), size=SIZE)


def _config(root, **kw) -> ST.StudyConfig:
    base = dict(dataset=str(root), models=["tiny:0", "tiny:1"], grid=GRID, seed=3, track_iterations=True,
                transfer=True)
    base.update(kw)
    return ST.StudyConfig(**base)


@pytest.fixture(scope="module")
def sequential(small_cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    seen = []
    res = ST.Study(_config(small_cases), out).run(workers=0, progress=seen.append, command=["medadv", "study"])
    return out, res, seen


# --------------------------------------------------------------------------- grid / dataset


def test_grid_expansion_is_generic_over_registry_params():
    pts = ST.expand_grid(GRID)
    assert [p.key for p in pts] == ["none", "fgsm[eps=0.02]", "fgsm[eps=0.08]",
                                    "ifgsm[eps=0.02,steps=3]", "ifgsm[eps=0.08,steps=3]"]
    assert pts[3].params_dict == {"eps": 0.02, "steps": 3} and pts[3].eps == 0.02
    with pytest.raises(MedadvError, match="has no parameter 'steps'"):
        ST.expand_grid([{"attack": "fgsm", "steps": 3}])
    with pytest.raises(MedadvError, match="unknown attack 'nope'"):
        ST.expand_grid([{"attack": "nope"}])
    with pytest.raises(MedadvError, match="expected int"):
        ST.expand_grid([{"attack": "ifgsm", "steps": 2.5}])
    flags = ST.grid_from_flags(["fgsm", "pgd"], eps=[0.01], steps=[4])
    assert flags == [{"attack": "fgsm", "eps": [0.01]}, {"attack": "pgd", "eps": [0.01], "steps": [4]}]


def test_yaml_config(tmp_path):
    y = tmp_path / "grid.yaml"
    y.write_text("dataset: data\nmodels: demo:unet3d\nattacks:\n  - attack: fgsm\n    eps: [0.05]\n")
    cfg = ST.StudyConfig.from_yaml(y, seed=7)
    assert cfg.models == ["demo:unet3d"] and cfg.seed == 7 and cfg.grid == [{"attack": "fgsm", "eps": [0.05]}]
    y.write_text("dataset: data\nmodels: [a:b]\nattacks: []\ncolour: red\n")
    with pytest.raises(InputFileError, match="grid.yaml: unknown key"):
        ST.StudyConfig.from_yaml(y)
    y.write_text("[unclosed")
    with pytest.raises(InputFileError, match="grid.yaml"):
        ST.StudyConfig.from_yaml(y)


def test_discover_brats_and_labelled_images(tmp_path):
    ds = ST.discover_dataset(sample_data_dir() / "glioma")
    assert ds.kind == "brats" and [c.case_id for c in ds.cases] == [f"glioma_00{i}" for i in range(1, 5)]
    cxr = ST.discover_dataset(sample_data_dir() / "cxr" / "heldout")
    assert cxr.class_names == ["nodule", "opacity"] and all(len(c.labels) == 2 for c in cxr.cases)
    bad = tmp_path / "labels.csv"
    bad.write_text("file,nodule\nmissing.png,1\n")
    with pytest.raises(InputFileError, match=r"labels.csv: line 2: image missing.png not found"):
        ST.discover_dataset(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    bad.write_text("file,nodule\na.png,2\n")
    with pytest.raises(InputFileError, match="must be 0 or 1"):
        ST.discover_dataset(tmp_path)
    with pytest.raises(InputFileError, match="not found"):
        ST.discover_dataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="no BraTS case folders"):
        ST.discover_dataset(empty)


def test_phantom_spec_refuses_training_seeds():
    assert ST.parse_phantom_spec("phantoms:glioma:5-7,9") == ("glioma", [5, 6, 7, 9])
    with pytest.raises(MedadvError, match="held-out seeds"):
        ST.parse_phantom_spec("phantoms:glioma:990-1001")


def test_phantom_dataset_is_the_seed_range_not_the_folder(tmp_path):
    """Cases of an earlier, wider range left in OUT/data are not evaluated again."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for cid in ("glioma_001", "glioma_002"):  # the shipped cases stand for phantoms generated earlier
        shutil.copytree(sample_data_dir() / "glioma" / cid, data / cid)
    st = ST.Study(_config("phantoms:glioma:1", models=["tiny:0"]), tmp_path)
    assert [c.case_id for c in st.dataset().cases] == ["glioma_001"]


# --------------------------------------------------------------------------- end to end


def test_small_study_end_to_end(sequential):
    out, res, seen = sequential
    assert res.n_cases == 3 and res.n_run == 3 and res.n_skipped == 0
    for name in ("per_case.csv", "per_case.parquet", "history.csv", "summary_segmentation.csv",
                 "model_comparison.csv", "stats.csv", "report.md", "report.html",
                 "figures/dice_vs_eps.png", "figures/dice_vs_eps.svg", "figures/dice_vs_iterations.png",
                 "figures/psnr_vs_iterations.svg"):
        assert (out / name).is_file(), name
    assert len(list((out / "cases").glob("*.json"))) == 3
    # progress: the start report + one per case, with an ETA after the first case
    assert [p.done for p in seen] == [0, 1, 2, 3] and seen[-1].eta == 0.0 and seen[1].eta is not None
    import pandas as pd

    df = pd.read_parquet(out / "per_case.parquet")
    # cases x (models x clean + source models x target models x attack grid points)
    assert len(df) == 3 * (2 + 2 * 2 * 4)
    assert set(df["grid_key"]) == {"none", "fgsm[eps=0.02]", "fgsm[eps=0.08]", "ifgsm[eps=0.02,steps=3]",
                                   "ifgsm[eps=0.08,steps=3]"}
    att = df[df["attack"] != "none"]
    assert (att["linf"] > 0).all() and np.isfinite(att["psnr"]).all()
    # a larger ε costs PSNR
    f = df[df["attack"] == "fgsm"].groupby("eps")["psnr"].mean()
    assert f[0.02] > f[0.08]
    hist = pd.read_csv(out / "history.csv")
    assert set(hist["step"]) == {0, 1, 2, 3}  # the start + after each of the 3 updates
    md = (out / "report.md").read_text()
    assert "figures/dice_vs_eps.png" in md and "Wilcoxon" in md and "medadv study" in md
    assert "<table>" in (out / "report.html").read_text()


def test_summary_matches_per_case_data(sequential):
    import pandas as pd

    out = sequential[0]
    df = pd.read_csv(out / "per_case.csv")
    summ = pd.read_csv(out / "summary_segmentation.csv")
    for _, row in summ.iterrows():
        sub = df[(df["target"] == row["model"]) & (df["source"] == row["model"]) & (df["grid_key"] == row["grid_key"])]
        assert row["n"] == len(sub) == 3
        for r in ("WT", "TC", "ET"):
            assert row[f"dice_{r}_mean"] == pytest.approx(sub[f"dice_{r}"].mean(), abs=1e-12)
            assert row[f"dice_{r}_sd"] == pytest.approx(sub[f"dice_{r}"].std(ddof=1), abs=1e-12)
        if row["grid_key"] != "none":
            assert row["psnr_mean"] == pytest.approx(sub["psnr"].mean())
            assert row["ssim_mean"] == pytest.approx(sub["ssim"].mean())
            assert row["rmse_mean"] == pytest.approx(sub["rmse"].mean())


def test_statistics_equal_scipy(sequential):
    import pandas as pd

    out = sequential[0]
    df = pd.read_csv(out / "per_case.csv")
    tests = pd.read_csv(out / "stats.csv", keep_default_na=False, na_values=[""])
    at = tests[tests["comparison"] == "attack vs no attack"]
    assert len(at) == 2 * 3 * 4  # models x regions x attack conditions
    checked = 0
    for _, t in at.iterrows():
        g = df[(df["target"] == t["model"]) & (df["source"] == t["model"])]
        a = g[g["grid_key"] == t["grid_key"]].set_index("case")[f"dice_{t['region']}"].sort_index()
        b = g[g["grid_key"] == "none"].set_index("case")[f"dice_{t['region']}"].sort_index()
        if np.all(a.to_numpy() == b.to_numpy()):
            assert t["p"] == 1.0
            continue
        ref = scipy.stats.wilcoxon(a.to_numpy(), b.to_numpy())
        assert t["p"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert t["statistic"] == pytest.approx(ref.statistic)
        assert t["m"] == 4 and t["p_adj"] == pytest.approx(min(1.0, ref.pvalue * 4))
        assert (t["stars"] if isinstance(t["stars"], str) else "") == S.stars(min(1.0, ref.pvalue * 4))
        checked += 1
    assert checked > 0
    mc = tests[tests["comparison"] == "model vs baseline model"]
    assert set(mc["reference_model"]) == {"tiny:0"} and len(mc) == 3 * 5


def test_stats_helpers_hand_checked():
    # 6 pairs, all differences positive: W = 0 (the smaller rank sum), exact two-sided p = 2/2^6
    stat, p, n = S.wilcoxon_paired([2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 1])
    assert (stat, n) == (0.0, 6) and p == pytest.approx(2 / 64)
    assert S.wilcoxon_paired([1, 2], [1, 2]) == (0.0, 1.0, 2)
    assert S.bonferroni([0.01, 0.2, math.nan]) == [0.02, 0.4, math.nan] or math.isnan(S.bonferroni([0.01, 0.2, math.nan])[2])
    assert S.bonferroni([0.4, 0.5], m=3) == [1.0, 1.0]
    assert [S.stars(p) for p in (0.0001, 0.005, 0.03, 0.2)] == ["***", "**", "*", ""]
    m, sd, n = S.mean_sd([1.0, 2.0, 3.0, math.nan])
    assert (m, sd, n) == (2.0, 1.0, 3)
    assert S.auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)  # 3 of 4 pos>neg pairs


def test_resume_after_interruption(small_cases, sequential, tmp_path):
    """Stop after the first case (as if killed), re-run: only the missing cases run, and the
    result equals the uninterrupted study."""
    import pandas as pd

    cfg = _config(small_cases)
    calls = {"n": 0}

    def stop_after_one():
        return calls["n"] >= 1

    def count(p):
        if p.case is not None:
            calls["n"] += 1

    first = ST.Study(cfg, tmp_path).run(workers=0, progress=count, should_stop=stop_after_one, report=False)
    assert first.n_run == 1 and len(list((tmp_path / "cases").glob("*.json"))) == 1
    # a half-written temp file from a killed run is ignored
    (tmp_path / "cases" / ".glioma_002.json.x.tmp").write_text("{")
    second = ST.Study(cfg, tmp_path).run(workers=0)
    assert second.n_skipped == 1 and second.n_run == 2
    third = ST.Study(cfg, tmp_path).run(workers=0)
    assert third.n_run == 0 and third.n_skipped == 3
    a = pd.read_csv(tmp_path / "per_case.csv").drop(columns="seconds")
    b = pd.read_csv(sequential[0] / "per_case.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a.sort_values(["case", "target", "grid_key"]).reset_index(drop=True),
                                  b.sort_values(["case", "target", "grid_key"]).reset_index(drop=True))
    # changing the grid changes the fingerprint: every case runs again
    cfg2 = _config(small_cases, grid=[{"attack": "fgsm", "eps": 0.05}], transfer=False)
    assert ST.Study(cfg2, tmp_path).run(workers=0, report=False).n_run == 3


def test_dask_local_cluster_equals_sequential(small_cases, sequential, tmp_path):
    import pandas as pd

    res = ST.Study(_config(small_cases), tmp_path).run(workers=2, processes=False, report=False)
    assert res.n_run == 3
    a, _ = ST.load_rows(tmp_path)
    b, _ = ST.load_rows(sequential[0])
    key = ["case", "source", "target", "grid_key"]
    a = a.drop(columns="seconds").sort_values(key).reset_index(drop=True)
    b = b.drop(columns="seconds").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)


def test_transfer_matrix(sequential):
    import pandas as pd

    out = sequential[0]
    df = pd.read_csv(out / "per_case.csv")
    mat = pd.read_csv(out / "transfer_fgsm_eps_0.08_.csv", index_col=0)
    assert mat.shape == (2, 2)
    for s in ("tiny:0", "tiny:1"):
        for t in ("tiny:0", "tiny:1"):
            sub = df[(df["source"] == s) & (df["target"] == t) & (df["grid_key"] == "fgsm[eps=0.08]")]
            assert len(sub) == 3 and mat.loc[s, t] == pytest.approx(sub["dice_WT"].mean())
    assert "Transfer matrix" in (out / "report.md").read_text()


def test_case_seed_is_order_independent():
    assert ST.case_seed(0, "a", "m", "k") == ST.case_seed(0, "a", "m", "k")
    assert ST.case_seed(0, "a", "m", "k") != ST.case_seed(0, "b", "m", "k")


# --------------------------------------------------------------------------- classifiers


def test_classifier_metrics_hand_checked():
    """k-robust accuracy, MSE/BCE vs the clean prediction and RISK on a 3-class case."""
    import torch

    from napari_medadv.core import metrics as M
    from napari_medadv.core.models.base import ModelInfo

    class Fake:
        info = ModelInfo.from_dict({"task": "classification", "spatial_dims": 2, "in_channels": 1,
                                    "output": "probabilities", "normalization": "none",
                                    "class_names": ["a", "b", "c"]})

        def probabilities(self, out):
            return out

    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0]], float)
    inv = M.inverse_cooccurrence(labels)
    # hand: counts diag a=3,b=2,c=1; P(b|a)=1/3, P(c|a)=0 -> row a = [0, 2/3, 1]
    assert np.allclose(inv[0], [0, 2 / 3, 1])
    clean = torch.tensor([[0.7, 0.2, 0.1]])
    adv = torch.tensor([[0.1, 0.3, 0.6]])
    out = _evaluate(Fake(), clean, adv, [1, 1, 0], ST.Case("x", "x"), {"inverse_cooccurrence": inv.tolist()})
    # top-1 of adv = c, of truth = a -> 0; top-3 of both = {a,b,c} -> 1
    assert out["k1_acc"] == 0.0 and out["k3_acc"] == 1.0
    assert out["mse"] == pytest.approx(((0.6**2) + 0.1**2 + 0.5**2) / 3)
    bce = -np.mean([0.7 * np.log(0.1) + 0.3 * np.log(0.9), 0.2 * np.log(0.3) + 0.8 * np.log(0.7),
                    0.1 * np.log(0.6) + 0.9 * np.log(0.4)])
    assert out["bce"] == pytest.approx(bce)
    # RISK = adv . C(argmax clean = a), from the logits (the paper; this model outputs probabilities,
    # so the logits are log(p / (1 - p))): logit(0.3)*2/3 + logit(0.6)*1 ; and from the probabilities
    assert out["risk"] == pytest.approx(np.log(0.3 / 0.7) * 2 / 3 + np.log(0.6 / 0.4))
    assert out["risk_prob"] == pytest.approx(0.3 * 2 / 3 + 0.6)
    assert out["top1_changed"] is True


def test_classifier_study_with_risk_pgd_and_transfer(tmp_path):
    """A tiny 3-class classifier study: k-robust accuracy, AUC, RISK under risk-targeted PGD and
    the transfer matrix, on hand-made radiographs with a labels CSV."""
    import imageio.v3 as iio
    import pandas as pd

    from napari_medadv.core.models.registry import register_scheme

    from _tiny_models import tiny_classifier_loader

    register_scheme("tinycls", tiny_classifier_loader)
    rng = np.random.default_rng(0)
    rows = ["file,a,b,c"]
    for i in range(6):
        img = (rng.random((16, 16)) * 0.2 + 0.1)
        lab = [i % 2, (i // 2) % 2, int(i == 5)]
        img[:8] += 0.5 * lab[0]
        img[8:] += 0.5 * lab[1]
        iio.imwrite(tmp_path / f"im{i}.png", (img * 255).astype(np.uint8))
        rows.append(f"im{i}.png,{lab[0]},{lab[1]},{lab[2]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = ST.StudyConfig(dataset=str(tmp_path), models=["tinycls:0", "tinycls:1"], transfer=True,
                         grid=[{"attack": "pgd-risk", "eps": 0.1, "steps": 3}, {"attack": "fgsm", "eps": 0.1}],
                         track_iterations=False)
    out = tmp_path / "out"
    ST.Study(cfg, out).run(workers=0)
    df = pd.read_csv(out / "per_case.csv")
    summ = pd.read_csv(out / "summary_classification.csv")
    for _, r in summ.iterrows():
        sub = df[(df["source"] == r["model"]) & (df["target"] == r["model"]) & (df["grid_key"] == r["grid_key"])]
        assert r["k1_robust_accuracy"] == pytest.approx(sub["k1_acc"].mean())
        assert r["k3_robust_accuracy"] == pytest.approx(sub["k3_acc"].mean())
        assert r["risk"] == pytest.approx(sub["risk"].mean())
        aucs = [S.auc(sub[f"p_adv_{n}"], sub[f"y_{n}"]) for n in "abc"]
        assert r["auc"] == pytest.approx(np.nanmean(aucs))
    assert (out / "transfer_pgd-risk_eps_0.1_steps_3_.csv").is_file()
    assert (out / "transfer_pgd-risk_eps_0.1_steps_3__k3.csv").is_file()  # Table 2 at k = 3 too
    # MLACC: per-label Youden thresholds from each model's clean rows, then label agreement
    from napari_medadv.core import metrics as M

    for _, r in summ.iterrows():
        g = df[(df["source"] == r["model"]) & (df["target"] == r["model"])]
        clean = g[g["grid_key"] == "none"]
        thr = M.operating_thresholds(clean[[f"p_clean_{n}" for n in "abc"]].to_numpy(),
                                     clean[[f"y_{n}" for n in "abc"]].to_numpy())
        sub = g[g["grid_key"] == r["grid_key"]]
        assert r["mlacc"] == pytest.approx(M.multilabel_accuracy(sub[[f"p_adv_{n}" for n in "abc"]].to_numpy(),
                                                                 sub[[f"y_{n}" for n in "abc"]].to_numpy(), thr))
    # the risk-targeted attack moves the white-box prediction towards its target C(y*), the row of
    # the inverse co-occurrence matrix (built from labels.csv) for the clean top-1 label
    labels = pd.read_csv(tmp_path / "labels.csv")[["a", "b", "c"]].to_numpy()
    inv = M.inverse_cooccurrence(labels)
    wb = df[(df["source"] == df["target"]) & df["grid_key"].str.startswith("pgd-risk")]
    pc = wb[[f"p_clean_{n}" for n in "abc"]].to_numpy()
    pa = wb[[f"p_adv_{n}" for n in "abc"]].to_numpy()
    target = inv[pc.argmax(1)]
    assert np.mean((pa - target) ** 2) < np.mean((pc - target) ** 2)
    # and RISK is M(x*) . C(y*) per case: from the probabilities (risk_prob) and the logits (risk)
    assert np.allclose(wb["risk_prob"], (pa * target).sum(1))
    za = np.log(np.clip(pa, 1e-7, 1 - 1e-7) / (1 - np.clip(pa, 1e-7, 1 - 1e-7)))
    assert np.allclose(wb["risk"], (za * target).sum(1), atol=1e-4)
    assert "Ghamizi" in (out / "report.md").read_text()


def test_transfer_attack_core_function(small_cases):
    from napari_medadv.core.io import read_image
    from napari_medadv.core.models import load_model

    img = read_image(small_cases / "glioma_001")
    a, b = load_model("tiny:0", device="cpu"), load_model("tiny:1", device="cpu")
    res = ST.transfer_attack(img, a, b, "fgsm", params={"eps": 0.08}, labels=img.labels, seed=1)
    assert set(res["metrics"]) >= {"dice_WT", "dice_TC", "dice_ET"}
    assert res["outcome"].model is a and res["target_adversarial"].shape[1] == 4


def test_run_case_config_roundtrip(small_cases):
    cfg = _config(small_cases, models=["tiny:0"], grid=[{"attack": "fgsm", "eps": 0.05}], track_iterations=False)
    res = ST.run_case(ST.Case("glioma_001", str(small_cases / "glioma_001")), asdict(cfg))
    assert [r["grid_key"] for r in res["rows"]] == ["none", "fgsm[eps=0.05]"]
    json.dumps(res)  # JSON-ready


# --------------------------------------------------------------------------- matched image quality

MATCHED_GRID = [{"attack": "fgsm", "eps": 0.05},
                {"attack": ["fgsm", "noise", "ghosting"], "psnr": [40, 30], "tol": 0.25}]


def test_matched_quality_grid_axis():
    pts = ST.expand_grid([{"attack": ["fgsm", "motion"], "psnr": [40, 30.5]},
                          {"attack": "ifgsm", "steps": 2, "ssim": 0.95, "tol": 0.01}])
    assert [p.key for p in pts] == ["none", "fgsm[psnr=40]", "fgsm[psnr=30.5]", "motion[psnr=40]", "motion[psnr=30.5]",
                                    "ifgsm[ssim=0.95,steps=2,tol=0.01]"]
    assert pts[2].match_metric == "psnr" and pts[2].match_target == 30.5 and pts[2].match_tol is None
    assert pts[2].params == () and math.isnan(pts[2].eps)
    assert pts[5].params_dict == {"steps": 2} and pts[5].match_tol == 0.01
    assert pts[1].label == "FGSM at PSNR 40 dB" and pts[5].label == "i-FGSM steps=2 at SSIM 0.95"
    # every target of a source shares its seed (the same random event, scaled); fixed points keep their key
    assert pts[3].seed_key == pts[4].seed_key == "motion" and pts[5].seed_key == "ifgsm[steps=2]"
    assert ST.GridPoint("fgsm", (("eps", 0.05),)).seed_key == "fgsm[eps=0.05]"
    # a fixed-ε entry and a matched entry of the same attack are different points
    both = ST.expand_grid([{"attack": "fgsm", "eps": 0.05}, {"attack": "fgsm", "psnr": 35}])
    assert [p.key for p in both] == ["none", "fgsm[eps=0.05]", "fgsm[psnr=35]"]
    for entry, needle in [
        ({"attack": "fgsm", "psnr": 35, "eps": 0.05}, "psnr sets fgsm's eps"),
        ({"attack": ["fgsm", "motion"], "psnr": 35, "severity": 0.5}, "has no parameter 'severity'"),
        ({"attack": "motion", "ssim": 0.9, "severity": [0.2]}, "ssim sets motion's severity"),
        ({"attack": "fgsm", "psnr": 35, "ssim": 0.9}, "not both"),
        ({"attack": "fgsm", "tol": 0.2}, "tol is the tolerance of a psnr/ssim target"),
        ({"attack": "fgsm", "psnr": -3}, "must be a finite PSNR"),
        ({"attack": "fgsm", "psnr": "high"}, "expected float"),
        ({"attack": "fgsm", "ssim": 1.5}, r"must be an SSIM in \(-1, 1\]"),
        ({"attack": "fgsm", "psnr": 30, "tol": 0}, "tol must be a number > 0"),
        ({"attack": "fgsm", "psnr": []}, "empty list"),
        ({"attack": []}, "empty list"),
    ]:
        with pytest.raises(MedadvError, match=entry and needle):
            ST.expand_grid([entry])
    flags = ST.grid_from_flags(["fgsm", "motion"], eps=[0.02], psnr=[40, 30], tol=0.2)
    assert flags == [{"attack": "fgsm", "eps": [0.02]}, {"attack": "fgsm", "psnr": [40, 30], "tol": 0.2},
                     {"attack": "motion", "psnr": [40, 30], "tol": 0.2}]
    with pytest.raises(MedadvError, match="a match tolerance needs"):
        ST.grid_from_flags(["fgsm"], tol=0.2)


@pytest.fixture(scope="module")
def matched(small_cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("matched")
    cfg = _config(small_cases, models=["tiny:0"], grid=MATCHED_GRID, transfer=False, track_iterations=False)
    res = ST.Study(cfg, out).run(workers=0, command=["medadv", "study"])
    return out, cfg, res


def test_matched_points_reach_their_target_or_say_so(matched):
    out, _, res = matched
    assert res.n_run == 3
    df, _ = ST.load_rows(out)
    m = df[df["match_metric"].notna()]
    assert len(m) == 3 * 6 and set(m["match_knob"]) == {"eps", "severity"}
    assert (m["match_metric"] == "psnr").all() and set(m["match_target"]) == {40.0, 30.0}
    assert (m.groupby(["case", "attack"])["seed"].nunique() == 1).all()  # one seed per source and case
    # the row's PSNR is that of the image the search settled on
    assert np.allclose(m["psnr"], m["match_achieved"], atol=1e-6)
    hit = m[m["match_reached"].astype(bool)]
    assert (abs(hit["match_achieved"] - hit["match_target"]) <= 0.25).all() and (hit["match_tol"] == 0.25).all()
    # FGSM and random noise reach 30 dB everywhere; ghosting's strongest setting stays above 30 dB
    # on some of these crops: recorded as not reached, with the closest (highest-severity) value
    assert m[m["attack"].isin(["fgsm", "noise"])]["match_reached"].all()
    miss = m[~m["match_reached"].astype(bool)]
    assert len(miss) >= 1 and (miss["attack"] == "ghosting").all()
    assert (miss["match_achieved"] > 30.25).all() and (miss["match_value"] == 1.0).all()
    # an attack's ε column holds the ε found; a fixed-ε point has no match columns
    f = m[m["attack"] == "fgsm"]
    assert np.allclose(f["eps"], f["match_value"]) and (f[f["match_target"] == 30]["eps"] > f[f["match_target"] == 40]["eps"].max()).all()
    fixed = df[df["grid_key"] == "fgsm[eps=0.05]"]
    assert fixed["match_metric"].isna().all() and (fixed["eps"] == 0.05).all()


def test_matched_point_is_deterministic(small_cases):
    cfg = _config(small_cases, models=["tiny:0"], grid=[{"attack": "gaussnoise", "psnr": 33}], transfer=False)
    case = ST.Case("glioma_001", str(small_cases / "glioma_001"))
    a, b = (ST.run_case(case, asdict(cfg))["rows"][1] for _ in range(2))
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["match_reached"] and a["match_evaluations"] >= 2


def test_matched_report_tables_and_statistics(matched):
    import pandas as pd

    out = matched[0]
    for name in ("figures/dice_vs_psnr.png", "figures/dice_vs_psnr.svg", "summary_matched_quality.csv",
                 "comparison_matched_quality.csv", "figures/dice_vs_eps.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "at matched image quality" in md and "figures/dice_vs_psnr.png" in md
    assert "[summary_matched_quality.csv](summary_matched_quality.csv)" in md and "FGSM vs" in md
    assert "dice_vs_psnr.svg" in (out / "report.html").read_text()
    df, _ = ST.load_rows(out)
    summ = pd.read_csv(out / "summary_matched_quality.csv")
    assert len(summ) == 6 and list(summ["kind"]) == ["adversarial"] * 2 + ["random"] * 2 + ["natural"] * 2
    for _, r in summ.iterrows():
        sub = df[df["grid_key"] == r["grid_key"]]
        ok = sub[sub["match_reached"].astype(bool)]
        assert r["n"] == 3 and r["n_reached"] == len(ok)
        if len(ok):
            assert r["dice_WT_mean"] == pytest.approx(ok["dice_WT"].mean())
            assert r["achieved_mean"] == pytest.approx(ok["match_achieved"].mean())
            assert r["knob_mean"] == pytest.approx(ok["match_value"].mean())
    # the fixed-ε table and its tests do not mix with the matched ones
    assert list(pd.read_csv(out / "summary_segmentation.csv")["grid_key"]) == ["none", "fgsm[eps=0.05]"]
    tests = pd.read_csv(out / "stats.csv", keep_default_na=False, na_values=[""])
    vs_clean = tests[tests["comparison"] == "matched quality vs no attack"]
    assert len(vs_clean) == 6 * 3 and (vs_clean["m"] <= 6).all()
    # adversarial vs natural at the same target: paired over the cases where both reached it
    comp = tests[tests["comparison"] == "adversarial vs other source at equal psnr"]
    assert len(comp) == 2 * 2 * 3  # (noise, ghosting) x 2 targets x 3 regions
    row = comp[(comp["reference_grid_key"] == "noise[psnr=30,tol=0.25]") & (comp["region"] == "ET")].iloc[0]
    a = df[df["grid_key"] == "fgsm[psnr=30,tol=0.25]"].set_index("case")["dice_ET"].sort_index()
    b = df[df["grid_key"] == "noise[psnr=30,tol=0.25]"].set_index("case")["dice_ET"].sort_index()
    assert row["n"] == 3 and row["mean"] == pytest.approx(a.mean()) and row["reference_mean"] == pytest.approx(b.mean())
    if np.all(a.to_numpy() == b.to_numpy()):
        assert row["p"] == 1.0
    else:
        assert row["p"] == pytest.approx(scipy.stats.wilcoxon(a.to_numpy(), b.to_numpy()).pvalue)
    assert row["m"] == len(comp[comp["region"] == "ET"].dropna(subset=["p"]))
    assert row["p_adj"] == pytest.approx(min(1.0, row["p"] * row["m"]))


def test_matched_study_resumes_and_fingerprints_the_target(small_cases, matched):
    out, cfg, _ = matched
    again = ST.Study(cfg, out).run(workers=0, report=False)
    assert again.n_run == 0 and again.n_skipped == 3
    case = ST.discover_dataset(small_cases).cases[0]
    fp = ST.Study(cfg, out).fingerprint(case)
    for grid in ([{"attack": "fgsm", "eps": 0.05}, {"attack": ["fgsm", "noise", "ghosting"], "psnr": [40, 31],
                                                     "tol": 0.25}],
                 [{"attack": "fgsm", "eps": 0.05}, {"attack": ["fgsm", "noise", "ghosting"], "psnr": [40, 30]}],
                 [{"attack": "fgsm", "eps": 0.05}, {"attack": ["fgsm", "noise", "ghosting"], "ssim": [0.9]}]):
        other = _config(small_cases, models=["tiny:0"], grid=grid, transfer=False, track_iterations=False)
        assert ST.Study(other, out).fingerprint(case) != fp


def test_non_brats_model_study_reports_per_label_dice_by_name(tmp_path):
    """A binary tumour/background model (label_names {"1": "tumour"}) gets per-label Dice columns
    and report tables under its label name, never WT/TC/ET; per-case rows record the channel
    mapping (the model declares T1, T1c, T2, FLAIR; the cases are t1, t1ce, t2, flair)."""
    import nibabel as nib

    root = _tiny_models.make_small_cases(tmp_path / "cases", names=("glioma_001", "glioma_002"), size=SIZE)
    for f in root.glob("*/*_seg.nii.gz"):
        im = nib.load(f)
        nib.save(nib.Nifti1Image((np.asarray(im.dataobj) > 0).astype(np.int16), im.affine), f)
    cfg = ST.StudyConfig(dataset=str(root), models=["tinybin:0"], grid=[{"attack": "fgsm", "eps": [0.05]}], seed=3)
    ST.Study(cfg, tmp_path / "out").run(workers=0)
    df = ST.load_rows(tmp_path / "out")[0]
    assert "dice_label_tumour" in df and not any(c in df for c in ("dice_WT", "dice_TC", "dice_ET"))
    assert df["dice_label_tumour"].notna().all()
    assert set(df["channels"]) == {"matched by name: T1 <- t1, T1c <- t1ce, T2 <- t2, FLAIR <- flair"}
    ST.build_report(tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Dice tumour | p adj tumour |" in md and "Dice WT" not in md


def test_ground_truth_the_model_cannot_read_names_the_case(tmp_path):
    """BraTS labels {1, 2, 4} given to a binary model: one error naming the case and the model."""
    root = _tiny_models.make_small_cases(tmp_path / "cases", names=("glioma_001",), size=SIZE)
    cfg = ST.StudyConfig(dataset=str(root), models=["tinybin:0"], grid=[{"attack": "fgsm", "eps": [0.05]}], seed=3)
    with pytest.raises(MedadvError, match=r"glioma_001: ground truth does not fit tinybin:0: label values \[2, 4\]"):
        ST.Study(cfg, tmp_path / "out").run(workers=0)


def test_dgde_summary_counts_only_successes_hand_computed():
    """DGDE Table 2 bookkeeping: a failure has no L0 (NaN), never 0 pixels."""
    import pandas as pd

    from napari_medadv.core.study.report.tables import dgde_summary

    base = {"source": "m", "target": "m", "grid_key": "dgde", "attack_label": "DGDE", "n_pixels": 100}
    df = pd.DataFrame([{**base, "case": "a", "success": True, "l0_pixels": 10.0},
                       {**base, "case": "b", "success": True, "l0_pixels": 30.0},
                       {**base, "case": "c", "success": True, "l0_pixels": 20.0},
                       {**base, "case": "d", "success": False, "l0_pixels": float("nan")},
                       {**base, "case": "a", "grid_key": "fgsm", "success": float("nan"),
                        "l0_pixels": float("nan")}])
    s = dgde_summary(df)
    assert list(s["grid_key"]) == ["dgde"]
    r = s.iloc[0]
    # 3 of 4 succeed; L0 over the successes {10, 30, 20}: mean 20, median 20, sd 10, % of 100 pixels: 20
    assert (r["n"], r["n_success"], r["success_rate"]) == (4, 3, 0.75)
    assert (r["l0_max"], r["l0_min"], r["l0_mean"], r["l0_median"]) == (30, 10, 20, 20)
    assert r["l0_sd"] == pytest.approx(10.0) and r["l0_percent_mean"] == pytest.approx(20.0)


def test_dgde_study_grid_params_bookkeeping_and_figures(tmp_path):
    """DGDE's own parameters as grid axes; per case success and l0_pixels; Table 2 and Figs. 3-4."""
    import imageio.v3 as iio
    import pandas as pd

    from napari_medadv.core.models.registry import register_scheme

    from _tiny_models import tiny_classifier_loader

    register_scheme("tinycls", tiny_classifier_loader)
    rng = np.random.default_rng(1)
    rows = ["file,a,b,c"]
    for i in range(3):  # bright images: finding c ("bright overall") positive; full-range noise hides it
        img = 0.4 + 0.6 * rng.random((16, 16))
        img[0, 0] = 0.0
        iio.imwrite(tmp_path / f"im{i}.png", (img * 255).astype(np.uint8))
        rows.append(f"im{i}.png,1,1,1")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = ST.StudyConfig(dataset=str(tmp_path), models=["tinycls:0"],
                         grid=[{"attack": "dgde", "population": [4, 6], "max_queries": 150, "F": 0.5, "CR": 0.7,
                                "class_index": 2}])
    assert [gp.key for gp in cfg.points()][1:] == [
        "dgde[CR=0.7,F=0.5,class_index=2,max_queries=150,population=4]",
        "dgde[CR=0.7,F=0.5,class_index=2,max_queries=150,population=6]"]
    out = tmp_path / "out"
    ST.Study(cfg, out).run(workers=0)
    df = pd.read_csv(out / "per_case.csv")
    d = df[df["attack"] == "dgde"]
    assert len(d) == 6 and d["success"].notna().all()
    assert d.loc[~d["success"].astype(bool), "l0_pixels"].isna().all()  # a failure has no L0
    ok = d[d["success"].astype(bool)]
    assert (ok["l0_pixels"] >= 1).all() and (ok["n_pixels"] == 256).all()
    summ = pd.read_csv(out / "summary_dgde.csv")
    assert len(summ) == 2
    for _, r in summ.iterrows():
        sub = d[d["grid_key"] == r["grid_key"]]
        assert r["success_rate"] == pytest.approx(sub["success"].astype(bool).mean())
    assert len(ok) >= 4  # the noise start flips c on these images; the decrease steps then remove pixels
    assert (ok["l0_pixels"] < 256).all()
    hist = pd.read_csv(out / "history.csv")
    h = hist[hist["l0"].notna()]
    assert {"l0", "probability", "queries"} <= set(hist.columns) and (h["probability"] < 0.5).all()
    for stem in ("dgde_l0_vs_iteration", "dgde_probability_vs_iteration"):
        assert (out / "figures" / f"{stem}.png").is_file() and (out / "figures" / f"{stem}.svg").is_file()
    assert "DGDE 2024, Table 2" in (out / "report.md").read_text()
