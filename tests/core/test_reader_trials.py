"""Reader-study trial plans: balanced (each cell equally often, sides / altered-original
balanced), reproducible under a seed and different under another; scoring; the CSV log; and
the altered images from the matched-PSNR search."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from napari_medadv.core.reader import COLUMNS, ReaderLog, plan_trials
from napari_medadv.core.reader.trials import Trial

CASES, SOURCES, PSNRS = ("c1", "c2"), ("fgsm", "motion", "blur"), (30.0, 36.0, 42.0)


@pytest.mark.parametrize("mode", ["pair", "single"])
@pytest.mark.parametrize("repeats", [1, 2, 3, 4])
def test_plan_is_balanced(mode, repeats):
    plan = plan_trials(CASES, SOURCES, PSNRS, repeats=repeats, mode=mode, seed=7)
    n_cells = len(CASES) * len(SOURCES) * len(PSNRS)
    assert len(plan) == n_cells * repeats
    assert [t.trial for t in plan] == list(range(1, len(plan) + 1))
    per_cell = Counter(t.cell for t in plan)
    assert len(per_cell) == n_cells and set(per_cell.values()) == {repeats}
    # altered on the left (pair) / altered shown (single): half of each cell's trials, +-1 when odd,
    # and the whole plan within one trial of half
    for cell in per_cell:
        sides = Counter(t.shown_left for t in plan if t.cell == cell)
        assert abs(sides["altered"] - sides["original"]) == repeats % 2
    total = Counter(t.shown_left for t in plan)
    assert abs(total["altered"] - total["original"]) <= 1
    assert all(t.mode == mode for t in plan)


def test_plan_reproducible_under_a_seed_and_different_under_another():
    a = plan_trials(CASES, SOURCES, PSNRS, repeats=2, mode="pair", seed=3)
    b = plan_trials(CASES, SOURCES, PSNRS, repeats=2, mode="pair", seed=3)
    c = plan_trials(CASES, SOURCES, PSNRS, repeats=2, mode="pair", seed=4)
    assert a == b
    assert [(t.cell, t.shown_left) for t in a] != [(t.cell, t.shown_left) for t in c]
    assert sorted((t.cell, t.shown_left) for t in a) == sorted((t.cell, t.shown_left) for t in c)  # same design
    # shuffled: not the order the cells were built in (case, then source, then PSNR, repeats together)
    built = [(c, s, p) for c in CASES for s in SOURCES for p in PSNRS for _ in range(2)]
    assert [t.cell for t in a] != built


def test_scoring_pair_and_single():
    left = Trial(1, "c", "fgsm", 30.0, "pair", "altered")
    right = Trial(2, "c", "fgsm", 30.0, "pair", "original")
    assert left.is_correct("left") and not left.is_correct("right")
    assert right.is_correct("right") and not right.is_correct("left")
    shown = Trial(3, "c", "fgsm", 30.0, "single", "altered")
    orig = Trial(4, "c", "fgsm", 30.0, "single", "original")
    assert shown.is_correct("altered") and orig.is_correct("original") and not orig.is_correct("altered")
    with pytest.raises(ValueError, match="left, right"):
        left.is_correct("altered")


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "grid"}, "mode"), ({"repeats": 0}, "whole number"), ({"repeats": 1.5}, "whole number"),
])
def test_bad_designs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_trials(CASES, SOURCES, PSNRS, **kwargs)


@pytest.mark.parametrize("args, match", [
    (((), SOURCES, PSNRS), "cases"), ((CASES, ("nope",), PSNRS), "nope"), ((CASES, SOURCES, (30.0, -1.0)), "PSNR"),
    ((CASES, SOURCES, (30.0, 30.0)), "repeat"),
])
def test_bad_lists(args, match):
    with pytest.raises(ValueError, match=match):
        plan_trials(*args)


def test_log_rewritten_after_each_answer(tmp_path):
    path = tmp_path / "reader_study.csv"
    log = ReaderLog(path)
    assert path.read_text().strip() == ",".join(COLUMNS)  # the header is there from the start
    plan = plan_trials(("c1",), ("fgsm",), (30.0,), repeats=2, mode="pair", seed=0)
    log.record(plan[0], psnr=30.04, answer="left", confidence=4, seconds=1.25)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and tuple(rows[0]) == COLUMNS
    assert rows[0]["correct"] == str(int(plan[0].shown_left == "altered"))
    log.record(plan[1], psnr=30.04, answer="right", confidence=2, seconds=3.5)
    assert len(list(csv.DictReader(path.open()))) == 2
    assert not [p for p in tmp_path.iterdir() if p.name != "reader_study.csv"]  # no temp file left
    with pytest.raises(ValueError, match="confidence"):
        log.record(plan[1], psnr=30.0, answer="left", confidence=6, seconds=1.0)


def test_stimuli_reach_the_target_psnr(cxr_image, cxr_demo):
    """FGSM (fast path) and an MR artifact at 34 dB on a shrunken radiograph: the image returned
    has the PSNR the search reports, measured here with the metrics module."""
    from napari_medadv.core import metrics as M
    from napari_medadv.core.reader import iter_stimuli

    gen = iter_stimuli({"cxr": cxr_image}, cxr_demo, ["fgsm", "blur"], [34.0], seed=0)
    got = []
    try:
        while True:
            got.append(next(gen))
    except StopIteration as done:
        stimuli = done.value
    assert [g[:2] for g in got] == [(0, 2), (1, 2), (2, 2)]
    for key, s in stimuli.items():
        assert s.image.shape == cxr_image.array.shape
        assert s.psnr == pytest.approx(34.0, abs=0.1), key
        assert M.psnr_channels(cxr_image.array.astype(np.float64), s.image.astype(np.float64)) == pytest.approx(
            s.psnr, abs=1e-3)


def test_stimuli_stop_when_asked(cxr_image, cxr_demo):
    from napari_medadv.core.reader import iter_stimuli

    gen = iter_stimuli({"cxr": cxr_image}, cxr_demo, ["fgsm"], [30.0, 40.0], should_stop=lambda: True)
    assert next(gen) == (0, 2, None)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value is None


def test_plan_takes_numpy_psnrs():
    plan = plan_trials(["c"], ["fgsm"], np.array([30.0, 35.0], dtype=np.float32), repeats=2, seed=0)
    assert sorted({t.target_psnr for t in plan}) == [30.0, 35.0]
    assert all(type(t.target_psnr) is float for t in plan)


@pytest.fixture(scope="module")
def cxr_image():
    from napari_medadv._sample_data import chest_radiograph_path
    from napari_medadv.core.io import read_image

    return read_image(chest_radiograph_path())


@pytest.fixture(scope="module")
def cxr_demo():
    from napari_medadv.core.models import load_model

    return load_model("demo:cxr", device="cpu")
