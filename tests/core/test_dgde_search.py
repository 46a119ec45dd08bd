"""DGDE's live controls (issue 18): a kept search continued with a larger budget or a lower pixel
target reaches exactly what a cold run with the final settings reaches; settings already searched
past are answered from the kept solutions without a model call."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medadv.core.anytime import SearchRun
from napari_medadv.core.attacks import DGDE
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image
from napari_medadv.core.models import load_model
from napari_medadv.core.pipeline import run_attack

sys.path.insert(0, str(Path(__file__).parent))
from test_attacks import _Linear  # noqa: E402  (a linear "classifier" whose decision DGDE can flip)

KW = dict(amplitude=0.2, population=8, seed=3, activation="sigmoid", data_range=(0, 1))


@pytest.fixture
def net_x():
    net = _Linear()
    x = torch.full((1, 1, 16, 16), 0.5)
    with torch.no_grad():
        net.bias = 0.4 - float(net.conv(x).sum())  # clean logit 0.4: positive (p = 0.60)
    return net, x


def _drain(gen):
    return [step for step in gen]


@pytest.mark.parametrize("budgets", [(30, 200), (100, 260, 500), (9, 10, 400)])
def test_continued_search_equals_the_cold_run(net_x, budgets):
    net, x = net_x
    search = DGDE(net, **KW).open_search(x)
    steps = []
    for b in budgets:
        steps += _drain(search.advance(b))
    cold = DGDE(net, max_queries=budgets[-1], **KW)
    res = cold.run(x)
    idx, known = search.point_for(budgets[-1])
    assert known
    torch.testing.assert_close(search.image(search.points[idx]), res.adversarial)
    assert [p["l0"] for p in search.points] == res.extra["l0_history"][0]
    assert [{"step": s.step, "loss": None, **s.metrics} for s in steps] == res.history and res.history  # the same solutions, in order
    assert search.state.queries == res.n_forward <= budgets[-1]  # a generation is never cut short


def test_lower_budget_and_pixel_target_come_from_the_kept_solutions(net_x):
    net, x = net_x
    search = DGDE(net, **KW).open_search(x)
    _drain(search.advance(400))
    used = search.state.queries
    for b in (40, 120, 400):
        idx, known = search.point_for(b)
        assert known
        cold = DGDE(net, max_queries=b, **KW).run(x)
        torch.testing.assert_close(search.image(search.points[idx]), cold.adversarial)
    assert search.state.queries == used  # no model call
    k = search.points[2]["l0"]
    idx, known = search.point_for(400, max_pixels=k)
    cold = DGDE(net, max_queries=400, max_pixels=k, **KW).run(x)
    assert known and search.points[idx]["l0"] == cold.extra["l0"][0] <= k
    torch.testing.assert_close(search.image(search.points[idx]), cold.adversarial)


def test_pixel_target_pauses_and_a_lower_one_continues(net_x):
    net, x = net_x
    search = DGDE(net, **KW).open_search(x)
    _drain(search.advance(2000, max_pixels=60))
    assert search.points[-1]["l0"] <= 60 and not search.finished
    paused_at = search.state.queries
    assert search.point_for(2000, max_pixels=20) == (None, False)  # not searched yet
    _drain(search.advance(2000, max_pixels=20))
    assert search.state.queries > paused_at and search.points[-1]["l0"] <= 20
    cold = DGDE(net, max_queries=2000, max_pixels=20, **KW).run(x)
    torch.testing.assert_close(search.image(search.points[-1]), cold.adversarial)


def test_failed_start_is_no_solution(net_x):
    net, x = net_x
    search = DGDE(net, population=8, amplitude=1e-4, seed=0, activation="sigmoid", data_range=(0, 1)).open_search(x)
    _drain(search.advance(100))
    assert search.finished and search.point_for(5000) == (None, True)
    assert torch.equal(search.image(None), x)


def test_search_run_outcomes_equal_cold_pipeline_runs():
    image = read_image(sample_data_dir() / "cxr" / "heldout" / "case_02.png")  # DGDE flips it in ~100 queries
    model = load_model("demo:cxr", device="cpu")
    params = {"population": 8, "init_tries": 4}
    run = SearchRun(image, model, "dgde", params=params, seed=5)
    assert run.outcome_at(300) is None  # nothing searched yet
    frames = [run.frame(s) for s in run.steps(150)]
    assert frames and all(f is not None for f in frames)
    _drain(run.steps(300))
    for b in (150, 300):
        ours = run.outcome_at(b)
        cold = run_attack(image, model, "dgde", params={**params, "max_queries": b}, seed=5)
        np.testing.assert_array_equal(ours.adversarial, cold.adversarial)
        assert ours.result.extra["l0"] == cold.result.extra["l0"]
        assert ours.result.success == cold.result.success
        assert ours.params == cold.params
        assert ours.metrics["image_quality"] == cold.metrics["image_quality"]
        assert ours.metrics["probabilities"] == cold.metrics["probabilities"]
    assert ours.result.success == [True]
    far = run.outcome_at(300, max_pixels=1)  # a target the search did not reach within the budget
    assert far is not None and far.metrics["dgde_pixel_target_met"] is False and far.metrics["success"]


def test_random_subsets_are_sorted_uniform_subsets_of_the_wanted_size():
    """The decrease step's candidate pixel subsets: ``keep`` distinct indices per row, increasing,
    each index kept with probability keep/size (a chi-square test on 4000 draws), the same draws
    for the same generator state."""
    from scipy import stats

    from napari_medadv.core.attacks.dgde import random_subsets

    g = torch.Generator().manual_seed(3)
    rows = random_subsets(4000, 20, 7, g)
    assert rows.shape == (4000, 7)
    assert bool((rows[:, 1:] > rows[:, :-1]).all()) and int(rows.min()) >= 0 and int(rows.max()) < 20
    counts = torch.bincount(rows.flatten(), minlength=20).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    again = random_subsets(4000, 20, 7, torch.Generator().manual_seed(3))
    assert torch.equal(rows, again)
