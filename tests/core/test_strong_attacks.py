"""SegPGD, CosPGD and APGD: hand-computed per-pixel weights, APGD against torchattacks, its step-size
schedule, invariants, and the strength ordering on a shipped glioma case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_medadv.core.attacks import APGD, ATTACKS, CosPGD, SegPGD
from napari_medadv.core.attacks.apgd import checkpoint_schedule, dlr_loss
from napari_medadv.core.intensity import compute_range

STRONG = ["segpgd", "cospgd", "apgd"]


# ----------------------------------------------------------------- per-pixel weights by hand

# one image, 3 classes, 2 pixels: pixel 0 predicted as its label (correct), pixel 1 not
LOGITS = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]]]).reshape(1, 3, 1, 2)
LABELS = torch.tensor([[[0, 0]]])


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _ce_by_hand():
    p0 = _softmax([2.0, 0.0, -1.0])
    p1 = _softmax([0.0, 1.0, 0.5])
    return -math.log(p0[0]), -math.log(p1[0]), p0, p1


@pytest.mark.parametrize("k, steps", [(0, 10), (5, 10), (9, 10), (3, 4)])
def test_segpgd_weights_by_hand(k, steps):
    ce0, ce1, _, _ = _ce_by_hand()
    lam = k / (2 * steps)  # λ(t) = (t − 1) / 2T, t = k + 1
    expected = ((1 - lam) * ce0 + lam * ce1) / 2  # pixel 0 correct, pixel 1 wrong; N = 2 pixels
    atk = SegPGD(nn.Identity(), steps=steps)
    got = atk.weighted_loss(LOGITS, LABELS, k)
    assert got.shape == (1,)
    assert math.isclose(float(got), expected, rel_tol=1e-6)
    # targeted (the authors' form): pixels already at the target get λ, the others 1 − λ
    got_t = atk.weighted_loss(LOGITS, LABELS, k, targeted=True)
    assert math.isclose(float(got_t), (lam * ce0 + (1 - lam) * ce1) / 2, rel_tol=1e-6)


def test_cospgd_weights_by_hand():
    ce0, ce1, p0, p1 = _ce_by_hand()
    # cos(softmax, one-hot(y)) = p_y / ||p||
    cos0 = p0[0] / math.sqrt(sum(v * v for v in p0))
    cos1 = p1[0] / math.sqrt(sum(v * v for v in p1))
    atk = CosPGD(nn.Identity())
    assert math.isclose(float(atk.weighted_loss(LOGITS, LABELS, 0)), (cos0 * ce0 + cos1 * ce1) / 2, rel_tol=1e-6)
    assert math.isclose(float(atk.weighted_loss(LOGITS, LABELS, 0, targeted=True)),
                        ((1 - cos0) * ce0 + (1 - cos1) * ce1) / 2, rel_tol=1e-6)


@pytest.mark.parametrize("activation", ["softmax", "none"])
def test_pixel_weights_with_index_references_equal_the_dense_definitions(activation):
    """For class-index references CosPGD's cosine is p_y / ||p|| (one gather and one norm) and the
    "correct" mask a slab-wise arg-max: equal to the cosine with the one-hot target and to torch's
    arg-max (ties between channels included: the first maximum wins)."""
    import torch.nn.functional as F

    from napari_medadv.core.attacks._pixelwise import pixel_cosine, pixel_loss
    from napari_medadv.core.losses import as_dense_target

    g = torch.Generator().manual_seed(1)
    out = torch.randn(2, 5, 6, 7, 8, generator=g).round()  # rounded: ties between channels
    if activation == "none":
        out = torch.softmax(out, 1)
    ref = torch.randint(0, 5, (2, 6, 7, 8), generator=g)
    probs = out if activation == "none" else torch.softmax(out, 1)
    want = F.cosine_similarity(probs, as_dense_target(ref, out), dim=1)
    torch.testing.assert_close(pixel_cosine(out, ref, activation), want, rtol=1e-6, atol=0)
    _, correct = pixel_loss(out, ref, activation)
    assert torch.equal(correct, out.argmax(1) == ref)
    _, correct_dense = pixel_loss(out, as_dense_target(ref, out), activation)
    assert torch.equal(correct_dense, out.argmax(1) == ref)


def test_sigmoid_outputs_use_per_channel_bce_and_two_class_cosine():
    z = torch.tensor([[1.0, -2.0]]).reshape(1, 2, 1, 1)  # two independent regions, one voxel
    y = torch.tensor([[1.0, 1.0]]).reshape(1, 2, 1, 1)
    p = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))]
    bce = [-math.log(p[0]), -math.log(p[1])]
    cos = [q / math.sqrt(q * q + (1 - q) ** 2) for q in p]  # [p, 1 − p] · [1, 0] / (||.|| · 1)
    lam = 2 / 8
    seg = SegPGD(nn.Identity(), steps=4, activation="sigmoid").weighted_loss(z, y, 2)
    assert math.isclose(float(seg), ((1 - lam) * bce[0] + lam * bce[1]) / 2, rel_tol=1e-6)
    cp = CosPGD(nn.Identity(), activation="sigmoid").weighted_loss(z, y, 0)
    assert math.isclose(float(cp), (cos[0] * bce[0] + cos[1] * bce[1]) / 2, rel_tol=1e-6)


def test_dlr_loss_by_hand_and_against_torchattacks():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.5, 4.0, -1.0, 2.5]])
    y = torch.tensor([0, 1, 3])
    # DLR = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)
    expected = [-(3 - 2) / (3 - 1), -(1 - 3) / (3 - 1), -(2.5 - 4) / (4 - 0.5)]
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    torchattacks = pytest.importorskip("torchattacks")
    theirs = torchattacks.APGD(nn.Identity(), loss="dlr").dlr_loss(z, y)
    assert torch.equal(dlr_loss(z, y), theirs)
    # per-pixel form: a 2 x 1 "image" with the first two rows as its pixels
    zz = z[:2].T.reshape(1, 4, 2, 1)
    torch.testing.assert_close(dlr_loss(zz, torch.tensor([[[0], [1]]])), torch.tensor([[[-0.5], [1.0]]]))


# ----------------------------------------------------------------- APGD: schedule, peer

def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), N = 100, by hand:
    # 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert checkpoint_schedule(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoint_schedule(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # windows of at least one step
    assert checkpoint_schedule(1) == [1]


class _Flat(nn.Module):
    """A classifier whose output ignores the input: the loss never rises."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_apgd_step_size_halves_at_each_checkpoint_without_progress():
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    res = APGD(_Flat(), eps=0.1, steps=100, seed=0).run(x, torch.tensor([0, 1]))
    sizes = [h["step_size"] for h in res.history]
    expected, eta = [], 2.0
    checks = set(checkpoint_schedule(100))
    for step in range(1, 101):
        if step in checks:  # condition (1): the loss rose in none of the window's steps
            eta /= 2
        expected.append(eta)
    assert sizes == expected
    assert len(res.history) == 100 and res.n_backward == 2 * 101


@pytest.fixture
def eval_classifier(classifier):
    return classifier.eval()


def _cls_batch():
    g = torch.Generator().manual_seed(5)
    return torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize("objective", ["ce", "dlr"])
def test_apgd_equals_torchattacks_single_run(eval_classifier, objective, monkeypatch):
    """Same seed, same start: the same x_max to float precision, once the reference's first-window
    comparison is made against f(x^(0)) as the paper says (it compares with 0; see APGD's docstring)."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = _cls_batch()
    eps, steps, seed = 8 / 255, 25, 3
    ta = torchattacks.APGD(eval_classifier, eps=eps, steps=steps, loss=objective, seed=seed)
    # the reference's random start, to know f(x^(0))
    g = torch.Generator().manual_seed(seed)
    t = 2 * torch.rand(x.shape, generator=g) - 1
    x0 = (x + eps * t / t.flatten(1).abs().amax(1).reshape(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        z0 = eval_classifier(x0)
    f0 = (nn.functional.cross_entropy(z0, y, reduction="none") if objective == "ce" else ta.dlr_loss(z0, y)).numpy()
    original = ta.check_oscillation

    def paper_condition(losses, j, k, y5, k3=0.75):
        losses = np.copy(losses)
        if j - k == -1:  # the first window reaches index −1: put f(x^(0)) there
            losses[-1] = f0
        return original(losses, j, k, y5, k3)

    monkeypatch.setattr(ta, "check_oscillation", paper_condition)
    torch.manual_seed(seed)
    x_best, _, loss_best, _ = ta.attack_single_run(x, y)
    res = APGD(eval_classifier, eps=eps, steps=steps, objective=objective, data_range=(0, 1), seed=seed).run(x, y)
    torch.testing.assert_close(res.adversarial, x_best, rtol=0, atol=1e-6)
    with torch.no_grad():
        ours = APGD(eval_classifier, objective=objective).objective_value(eval_classifier(res.adversarial), y)
    torch.testing.assert_close(ours.sum(), loss_best.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", ["ce", "dlr"])
def test_apgd_same_success_as_torchattacks(eval_classifier, objective):
    """Unpatched reference: the images it fools are the images APGD here fools."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = _cls_batch()
    theirs = torchattacks.APGD(eval_classifier, eps=8 / 255, steps=25, loss=objective, seed=3)(x, y)
    ours = APGD(eval_classifier, eps=8 / 255, steps=25, objective=objective, data_range=(0, 1), seed=3)(x, y)
    with torch.no_grad():
        fooled_theirs = eval_classifier(theirs).argmax(1) != y
        fooled_ours = eval_classifier(ours).argmax(1) != y
    assert torch.equal(fooled_ours, fooled_theirs)
    assert 0 < int(fooled_ours.sum()) < len(y)  # a batch where the comparison means something


# ----------------------------------------------------------------- invariants, registry, arguments

@pytest.mark.parametrize("name", STRONG)
def test_invariants(seg_model, seg_data, name):
    x, y = seg_data
    before = x.clone()
    seg_model.train()
    try:
        res = ATTACKS.create(name, seg_model, eps=0.04, steps=4, seed=1, track_metrics=True).run(x, y)
        assert seg_model.training, "model mode not restored"
    finally:
        seg_model.eval()
    assert torch.equal(x, before)
    assert all(p.grad is None for p in seg_model.parameters())
    rng = compute_range(before)
    delta = res.adversarial - before
    assert torch.all(delta.abs() <= 0.04 * rng.width + 1e-5), "outside the per-channel ε-ball"
    assert torch.all(res.adversarial >= rng.lo - 1e-6) and torch.all(res.adversarial <= rng.hi + 1e-6)
    assert len(res.history) == 5 and "dice" in res.history[-1]  # 4 steps + the tracked final forward
    again = ATTACKS.create(name, seg_model, eps=0.04, steps=4, seed=1).run(x, y)
    assert torch.equal(res.adversarial, again.adversarial)


@pytest.mark.parametrize("name", STRONG)
def test_steps_carry_their_evaluated_iterate_and_its_output_and_warm_start(seg_model, seg_data, name):
    """Each step's ``evaluated`` image and ``output`` belong together (APGD also after restoring its
    best point at a checkpoint), and ``init`` replaces the first random start."""
    x, y = seg_data
    atk = ATTACKS.create(name, seg_model, eps=0.05, steps=8, seed=0)
    gen = atk.iterate(x, y)
    for step in gen:
        with torch.no_grad():
            torch.testing.assert_close(step.output, seg_model(step.evaluated), rtol=1e-4, atol=1e-4)
    assert ATTACKS[name].warm_start
    init = atk.last_result.adversarial
    first = next(ATTACKS.create(name, seg_model, eps=0.05, steps=2, seed=0).iterate(x, y, init=init))
    assert torch.equal(first.evaluated, init)


@pytest.mark.parametrize("name", STRONG)
def test_stronger_than_nothing_and_clean_prediction_reference(seg_model, seg_data, name):
    """Without labels the reference is the clean prediction (one forward at the clean image)."""
    x, _ = seg_data
    with torch.no_grad():
        clean = seg_model(x).argmax(1)
    res = ATTACKS.create(name, seg_model, eps=0.08, steps=5, seed=0).run(x)
    with torch.no_grad():
        adv = seg_model(res.adversarial).argmax(1)
    assert (adv != clean).float().mean() > 0.05
    assert res.n_forward == 4 * (5 + 1 + (name == "apgd"))  # + the clean forward (+ APGD's start)


def test_registry_and_classifier_outputs():
    from tests.core._tiny_models import TinyClassifier  # sigmoid multi-label a/b/c

    for name in STRONG:
        spec = ATTACKS.get_spec(name)
        assert spec.iterative and spec.takes_eps and spec.kind == "adversarial" and not spec.live_eps
    assert ATTACKS["apgd"].params[3].choices == ("ce", "dlr")
    model = TinyClassifier()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for name in STRONG:
        adv = ATTACKS.create(name, model, eps=0.05, steps=3, seed=0, activation="sigmoid")(x)
        assert float((adv - x).abs().max()) <= 0.05 * float(compute_range(x).width.max()) + 1e-6
    with pytest.raises(ValueError, match="sigmoid"):
        APGD(model, objective="dlr", activation="sigmoid", steps=2)(x)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: APGD(m, loss="dice"), "objective"),
        (lambda m: APGD(m, objective="hinge"), "objective must be"),
        (lambda m: APGD(m, rho=1.5), "rho"),
        (lambda m: APGD(m, steps=0), "steps"),
        (lambda m: SegPGD(m, loss="dice"), "cross-entropy"),
        (lambda m: CosPGD(m, loss="mse"), "cross-entropy"),
        (lambda m: APGD(m, objective="dlr")(torch.zeros(1, 2, 4, 4)), "at least 3"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(nn.Conv2d(2, 2, 1))


# ----------------------------------------------------------------- shipped glioma case

@pytest.mark.slow
def test_segpgd_and_cospgd_at_least_as_strong_as_pgd_on_a_glioma_case():
    """demo:unet3d on glioma_002, ε = 1 %, 5 steps, same seed: whole-tumour Dice against the clean
    prediction after SegPGD and CosPGD is no higher than after PGD (with its default soft-Dice loss,
    and with cross-entropy, the loss SegPGD/CosPGD re-weight)."""
    from napari_medadv.core.data.paths import sample_data_dir
    from napari_medadv.core.io import read_image
    from napari_medadv.core.models import load_model
    from napari_medadv.core.pipeline import run_attack

    case = read_image(sample_data_dir() / "glioma" / "glioma_002")
    model = load_model("demo:unet3d", device="cpu")

    def wt(name, **params):
        o = run_attack(case, model, name, params={"eps": 0.01, "steps": 5, **params}, seed=0)
        return o.metrics["dice"]["clean_vs_adversarial"]["regions"]["WT"]

    pgd = min(wt("pgd"), wt("pgd", loss="ce"))
    assert wt("segpgd") <= pgd
    assert wt("cospgd") <= pgd
