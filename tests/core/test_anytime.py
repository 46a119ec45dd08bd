"""Iterative attacks shown while they run and live ε for them (issue 18): the frames of a run are
the iterates the attack evaluated with their own predictions, the last run equals the plain run,
warm starts stay feasible, the ε cache is keyed and bounded."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medadv.core.anytime import AnytimeRun, EpsCache, outcome_bytes, warm_start
from napari_medadv.core.attacks import IFGSM, PGD
from napari_medadv.core.models import load_model
from napari_medadv.core.pipeline import run_attack
from napari_medadv.core.scoring import outcome_metrics


sys.path.insert(0, str(Path(__file__).parent))
from test_live_readouts import _close  # noqa: E402  (nested metrics equal to a tolerance)


@pytest.fixture(scope="module")
def model():
    return load_model("demo:unet3d", device="cpu")


def _all_frames(run):
    frames, steps = [], []
    for step in run.steps():
        steps.append(step)
        frames.append(run.frame(step))
    return frames, steps


@pytest.mark.parametrize("attack", ["ifgsm", "pgd"])
def test_frames_are_evaluated_iterates_with_their_own_prediction(case, model, attack):
    params = {"eps": 0.03, "steps": 3}
    run = AnytimeRun(case, model, attack, params=params, labels=case.labels, seed=4)
    frames, steps = _all_frames(run)
    assert [f.result.extra["iterate"] for f in frames] == [0, 1, 2]
    for f, st in zip(frames, steps):
        # the frame's label map is the model's prediction on the frame's image: one forward checks it
        out = model.forward(model.to_batch(f.adversarial))
        np.testing.assert_array_equal(model.to_label_map(out)[0], f.seg_adv)
        assert np.abs(f.adversarial - case.array).max() <= 0.03 * np.ptp(case.array, axis=(1, 2, 3)).max() + 1e-3
    # iterate k+1 of a frame is the adversarial image the previous step yielded
    np.testing.assert_array_equal(frames[1].adversarial, steps[0].adversarial[0].numpy())
    if attack == "ifgsm":
        np.testing.assert_array_equal(frames[0].adversarial, case.array.astype(np.float32))
        np.testing.assert_array_equal(frames[0].seg_adv, frames[0].seg_clean)
    # the run's outcome is the plain run's, same seed
    plain = run_attack(case, model, attack, params=params, labels=case.labels, seed=4)
    np.testing.assert_array_equal(run.outcome.adversarial, plain.adversarial)
    np.testing.assert_array_equal(run.outcome.seg_adv, plain.seg_adv)


def test_frame_readouts_equal_the_reference_metrics(case, model):
    run = AnytimeRun(case, model, "ifgsm", params={"eps": 0.05, "steps": 2}, labels=case.labels, seed=0)
    frames, _ = _all_frames(run)
    o = frames[-1]
    run.readouts.add_metrics(o)
    ref = outcome_metrics(o)
    for k in ("roi", "seconds"):
        ref[k] = o.metrics[k]
    _close(o.metrics, ref, rel=2e-4)


@pytest.mark.parametrize("attack", ["ifgsm", "pgd"])
def test_tracked_frames_reuse_the_steps_sums_with_the_same_readouts(case, model, attack):
    """With per-step tracking (the Attack dock's default) a frame's image quality comes from the
    sums its step's PSNR computed on the same iterate: equal to the pass over the images, and the
    step's PSNR equal to the frame's."""
    run = AnytimeRun(case, model, attack, params={"eps": 0.04, "steps": 3, "track_metrics": True},
                     labels=case.labels, seed=2)
    frames, steps = _all_frames(run)
    for f, st in zip(frames, steps):
        assert st.sums is not None and f.difference_sums is st.sums
        shared = run.readouts.readouts(f).metrics["image_quality"]
        f.difference_sums = None
        assert run.readouts.readouts(f).metrics["image_quality"] == shared
        assert st.metrics["psnr"] == pytest.approx(shared["psnr"], rel=1e-9)
    untracked = AnytimeRun(case, model, attack, params={"eps": 0.04, "steps": 3}, labels=case.labels, seed=2)
    assert all(st.sums is None for st in untracked.steps())


@pytest.mark.parametrize("eps_prev,eps", [(0.02, 0.05), (0.05, 0.02), (0.03, 0.03)])
def test_warm_start_scales_and_the_attack_projects_it(eps_prev, eps):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    x = torch.rand(1, 1, 16, 16)
    prev = IFGSM(net, eps=eps_prev, steps=3, data_range=(0, 1))(x)
    start = warm_start(x[0].numpy(), prev[0].numpy(), eps_prev, eps)
    np.testing.assert_allclose(start - x[0].numpy(), (prev - x)[0].numpy() * eps / eps_prev, atol=1e-6)
    for atk in (IFGSM(net, eps=eps, steps=2, data_range=(0, 1)), PGD(net, eps=eps, steps=2, data_range=(0, 1), seed=1)):
        gen = atk.iterate(x, init=torch.as_tensor(start)[None] + 0.5)  # pushed out of the ball and the range
        first = next(gen)
        assert torch.all((first.evaluated - x).abs() <= eps + 1e-6)  # the start, projected
        assert first.evaluated.max() <= 1.0 and first.evaluated.min() >= 0.0
        for _ in gen:
            pass
        adv = atk.last_result.adversarial
        assert torch.all((adv - x).abs() <= eps + 1e-6) and adv.max() <= 1 and adv.min() >= 0


@pytest.mark.parametrize("attack", ["tifgsm", "pgd"])
def test_preview_is_the_warm_runs_first_frame_after_one_forward(case, model, attack):
    """Live ε's quick answer: the warm start projected onto the new ε-ball and its prediction —
    what the warm run's first step evaluates — without that step's backward."""
    prev = run_attack(case, model, attack, params={"eps": 0.02, "steps": 2}, labels=case.labels, seed=1)
    init = warm_start(case.array, prev.adversarial, 0.02, 0.05) + 5.0  # partly out of the new ball
    kw = dict(params={"eps": 0.05, "steps": 2}, labels=case.labels, seed=1, init=init, clean_output=prev.clean_output)
    calls = []
    hook = model.module.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    try:
        preview = AnytimeRun(case, model, attack, **kw).preview()
    finally:
        hook.remove()
    assert calls == [False]  # one forward, no gradient
    run = AnytimeRun(case, model, attack, **kw)
    first = run.frame(next(run.steps()))
    np.testing.assert_array_equal(preview.adversarial, first.adversarial)
    np.testing.assert_array_equal(preview.seg_adv, first.seg_adv)
    assert preview.result.extra["iterate"] == 0 and preview.result.extra["preview"] and preview.result.eps == 0.05
    eps_native = 0.05 * np.ptp(case.array, axis=(1, 2, 3))
    assert np.all(np.abs(preview.adversarial - case.array).max(axis=(1, 2, 3)) <= eps_native * (1 + 1e-5))
    with pytest.raises(ValueError, match="warm start"):
        AnytimeRun(case, model, attack, params={"eps": 0.05}).preview()


def test_kept_start_gives_the_cold_run_at_another_eps(case, model):
    """Live ε keeps the clean side of a run (StartCache): a run at another ε from it equals the
    cold run with the same seed (PGD: the same random start), and the input is not rebuilt."""
    from napari_medadv.core.anytime import StartCache

    starts = StartCache()
    starts.use("key")
    first = AnytimeRun(case, model, "pgd", params={"eps": 0.02, "steps": 2}, labels=case.labels, seed=3, starts=starts)
    for _ in first.steps():
        pass
    kept = starts.prepared
    assert kept is not None and kept.started.x is first.started.x
    again = AnytimeRun(case, model, "pgd", params={"eps": 0.04, "steps": 2}, labels=case.labels, seed=3, starts=starts)
    for _ in again.steps():
        pass
    assert again.started.x is kept.started.x and again.started.attack is not kept.started.attack
    assert again.started.attack.eps == 0.04 and kept.started.attack.eps == 0.02
    cold = run_attack(case, model, "pgd", params={"eps": 0.04, "steps": 2}, labels=case.labels, seed=3)
    np.testing.assert_array_equal(again.outcome.adversarial, cold.adversarial)
    np.testing.assert_array_equal(again.outcome.seg_adv, cold.seg_adv)
    assert again.outcome.params == cold.params
    starts.use("other")  # another key: nothing kept
    assert starts.prepared is None
    with pytest.raises(ValueError, match="eps"):
        kept.started.at_eps(float("nan"))


def test_warm_start_is_refused_where_an_attack_has_none(classifier):
    from napari_medadv.core.attacks import FGSM

    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="warm start"):
        next(FGSM(classifier, eps=0.1).iterate(x, init=x))
    with pytest.raises(ValueError, match="shaped"):
        next(IFGSM(classifier, eps=0.1).iterate(x, init=x[:1]))


def test_eps_cache_keys_lru_and_bound(case, model):
    o = run_attack(case, model, "fgsm", params={"eps": 0.01}, seed=0)
    size = outcome_bytes(o)
    cache = EpsCache(max_bytes=int(2.5 * size))
    key = ("img", "model", "ifgsm", (("steps", 3),))
    for e in (0.01, 0.02, 0.03):
        cache.put(key, e, o)
    assert cache.values() == [0.02, 0.03]  # the least recently used left
    assert cache.nbytes == 2 * size
    assert cache.get(key, 0.02) is o
    cache.put(key, 0.04, o)
    assert cache.values() == [0.02, 0.04]  # 0.02 was used more recently than 0.03
    assert cache.get(("other",), 0.02) is None and cache.nearest(key, 0.035) is o
    cache.put(("other",), 0.05, o)  # any change of the key clears it
    assert cache.values() == [0.05] and cache.get(key, 0.04) is None
    with pytest.raises(ValueError):
        EpsCache(0)
