"""Reader-study report: accuracy and Wilson intervals on a small hand table, the CSV round trip
through ``medadv reader-report``, bad CSVs, and the 75 % PSNR on data from a known curve."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from napari_medadv.cli import main
from napari_medadv.core.reader import ReaderLog, plan_trials
from napari_medadv.core.reader.report import fit_psychometric, psychometric, read_results, summarise, threshold, wilson

# (source, target, correct) — 4 FGSM trials at 30 dB (3 right), 2 at 40 dB (1 right), 2 motion at 30 dB (2 right),
# 2 motion at 40 dB (0 right)
HAND = [("fgsm", 30.0, 1), ("fgsm", 30.0, 1), ("fgsm", 30.0, 0), ("fgsm", 30.0, 1), ("fgsm", 40.0, 1),
        ("fgsm", 40.0, 0), ("motion", 30.0, 1), ("motion", 30.0, 1), ("motion", 40.0, 0), ("motion", 40.0, 0)]
# Wilson score interval by hand, z = 1.959964 (z² = 3.841459):
#   centre = (p + z²/2n) / (1 + z²/n),  half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
#   3/4: centre = (0.75 + 0.480182) / 1.960365 = 0.627527, half = 1.959964·0.326953 / 1.960365 = 0.326886
#   1/2: centre = (0.5 + 0.960365) / 2.920730 = 0.5, half = 1.959964·0.604228 / 2.920730 = 0.405469
#   2/2: centre = (1 + 0.960365) / 2.920730 = 0.671190, half = 1.959964·0.489991 / 2.920730 = 0.328810
#   0/2: by symmetry with 2/2: (0, 1 - 0.342380)
HAND_CI = {("fgsm", 30.0): (0.75, 0.300642, 0.954413), ("fgsm", 40.0): (0.5, 0.094531, 0.905469),
           ("motion", 30.0): (1.0, 0.342380, 1.0), ("motion", 40.0): (0.0, 0.0, 0.657620)}


def _write_hand(path):
    trials = []
    log = ReaderLog(path)
    for i, (source, target, ok) in enumerate(HAND):
        t = plan_trials(["case"], [source], [target], repeats=1, mode="pair", seed=i)[0]
        answer = ("left" if t.shown_left == "altered" else "right") if ok else (
            "right" if t.shown_left == "altered" else "left")
        trials.append(log.record(t, psnr=target + 0.03, answer=answer, confidence=3, seconds=2.0))
    return trials


def test_wilson_by_hand():
    for (k, n), (lo, hi) in {(3, 4): (0.300642, 0.954413), (1, 2): (0.094531, 0.905469), (2, 2): (0.342380, 1.0),
                             (0, 2): (0.0, 0.657620)}.items():
        assert wilson(k, n) == pytest.approx((lo, hi), abs=2e-6)


def test_csv_round_trip_through_reader_report(tmp_path, capsys):
    csv_path = tmp_path / "reader_study.csv"
    _write_hand(csv_path)
    cells = {(c.source, c.target_psnr): c for c in summarise(read_results(csv_path))}
    assert set(cells) == set(HAND_CI)
    for key, (acc, lo, hi) in HAND_CI.items():
        c = cells[key]
        assert (c.accuracy, c.ci_low, c.ci_high) == pytest.approx((acc, lo, hi), abs=2e-6), key
    out = tmp_path / "report"
    assert main(["reader-report", str(csv_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fgsm" in text and "75.0%" in text and "30.1-" in text  # 3/4 with its interval 30.1-95.4 %
    rows = list(csv.DictReader((out / "reader_summary.csv").open()))
    got = {(r["source"], float(r["target_psnr"])): r for r in rows}
    for key, (acc, lo, hi) in HAND_CI.items():
        assert float(got[key]["accuracy"]) == pytest.approx(acc)
        assert float(got[key]["ci_low"]) == pytest.approx(lo, abs=2e-6)
        assert float(got[key]["ci_high"]) == pytest.approx(hi, abs=2e-6)
    assert (out / "reader_report.png").stat().st_size > 5000


@pytest.mark.parametrize("content, problem", [
    ("", "empty file"),
    ("trial,case,source\n1,a,fgsm\n", "columns must be exactly"),
    ("trial,case,source,target_psnr,psnr,shown_left,answer,correct,confidence,seconds\n", "no answered trials"),
    ("trial,case,source,target_psnr,psnr,shown_left,answer,correct,confidence,seconds\n"
     "1,a,fgsm,30,30.1,altered,left,1,9,2.0\n", "line 2: confidence"),
    ("trial,case,source,target_psnr,psnr,shown_left,answer,correct,confidence,seconds\n"
     "1,a,fgsm,thirty,30.1,altered,left,1,3,2.0\n", "line 2"),
    ("trial,case,source,target_psnr,psnr,shown_left,answer,correct,confidence,seconds\n"
     "1,a,fgsm,30,30.1,altered,right,1,3,2.0\n", "does not follow"),
])
def test_bad_csv_is_one_line_exit_2(tmp_path, capsys, content, problem):
    path = tmp_path / "reader_study.csv"
    path.write_text(content)
    assert main(["reader-report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and problem in err


def test_missing_csv(tmp_path, capsys):
    assert main(["reader-report", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_psnr_75_from_a_known_curve():
    """Trials drawn from P = 0.5 + 0.5·σ((36 - psnr) / 1.5): the fitted 75 % point is 36 dB."""
    rng = np.random.default_rng(0)
    x = np.repeat(np.arange(28.0, 46.0, 2.0), 400)
    p = psychometric(x, 36.0 / 1.5, -1.0 / 1.5)
    y = (rng.random(x.size) < p).astype(int)
    t = threshold("fgsm", x, y)
    assert t.psnr_75 == pytest.approx(36.0, abs=0.3)
    assert t.b == pytest.approx(-1 / 1.5, rel=0.15)


def test_psnr_75_none_outside_the_tested_range():
    rng = np.random.default_rng(1)
    x = np.repeat([40.0, 42.0, 44.0], 200)  # the curve crosses 75 % at 36 dB, below what was tested
    y = (rng.random(x.size) < psychometric(x, 36.0 / 1.5, -1.0 / 1.5)).astype(int)
    t = threshold("motion", x, y)
    assert t.psnr_75 is None and "below the tested range" in t.note
    flat = threshold("blur", [30.0, 30.0], [1, 0])
    assert flat.psnr_75 is None and "one PSNR level" in flat.note


def test_plain_logistic_matches_scikit_learn():
    """chance = 0 is logistic regression: the same coefficients as scikit-learn's (no penalty)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x = rng.uniform(25, 45, 300)
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(20 - 0.55 * x)))).astype(int)
    a, b = fit_psychometric(x, y, chance=0.0)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[:, None], y)
    assert a == pytest.approx(float(ref.intercept_[0]), rel=1e-3)
    assert b == pytest.approx(float(ref.coef_[0, 0]), rel=1e-3)
    assert math.isfinite(a)
