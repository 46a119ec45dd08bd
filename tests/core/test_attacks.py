"""Attack engine: peer cross-check, invariants, effectiveness, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_medadv.core import metrics as M
from napari_medadv.core.attacks import ATTACKS, DGDE, FGSM, IFGSM, PGD, TIFGSM, RandomNoise, RiskPGD
from napari_medadv.core.intensity import compute_range

GRADIENT_ATTACKS = ["fgsm", "ifgsm", "tifgsm", "pgd"]
ARTIFACT_NAMES = {"motion", "ghosting", "spike", "biasfield", "gaussnoise", "blur"}


# ----------------------------------------------------------------- torchattacks cross-check

@pytest.fixture
def cls_batch():
    g = torch.Generator().manual_seed(5)
    return torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)


def test_fgsm_equals_torchattacks(classifier, cls_batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = cls_batch
    theirs = torchattacks.FGSM(classifier, eps=8 / 255)(x, y)
    ours = FGSM(classifier, eps=8 / 255, loss="ce", data_range=(0, 1))(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_bim_equals_torchattacks(classifier, cls_batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = cls_batch
    theirs = torchattacks.BIM(classifier, eps=8 / 255, alpha=2 / 255, steps=5)(x, y)
    ours = IFGSM(classifier, eps=8 / 255, alpha=2 / 255, steps=5, loss="ce", data_range=(0, 1))(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_equals_torchattacks_same_random_start(classifier, cls_batch, targeted):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = cls_batch
    atk = torchattacks.PGD(classifier, eps=8 / 255, alpha=2 / 255, steps=5, random_start=True)
    tgt = (y + 1) % 10
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(42)
    theirs = atk(x, tgt if targeted else y)
    ours = PGD(classifier, eps=8 / 255, alpha=2 / 255, steps=5, loss="ce", data_range=(0, 1), seed=42)
    ours = ours(x, y, target=tgt) if targeted else ours(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# ----------------------------------------------------------------- invariants

def _zscored_two_channel(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 20, 20, generator=g)
    x[:, 1] = x[:, 1] * 50 + 300  # second channel on a very different scale
    return x


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "tifgsm", "pgd", "noise", "pgd-restarts"])
def test_invariants(seg_model, seg_data, name):
    x, y = seg_data
    x = x.clone()
    before = x.clone()
    seg_model.train()
    seg_model[1].eval()  # a mixed state that must be restored module by module
    kwargs = {"seed": 3}
    if name == "pgd-restarts":
        atk = PGD(seg_model, eps=0.04, steps=3, restarts=3, **kwargs)
    else:
        atk = ATTACKS.create(name, seg_model, eps=0.04, **kwargs)
    try:
        res = atk.run(x, y)
        assert seg_model.training and not seg_model[1].training, "model modes not restored"
    finally:
        seg_model.eval()  # the model is shared by the session
    assert torch.equal(x, before), "the caller's tensor was modified"
    assert all(p.grad is None for p in seg_model.parameters()), "parameter gradients accumulated"
    rng = compute_range(before)
    delta = res.adversarial - before
    budget = (0.04 * rng.width)
    assert torch.all(delta.abs() <= budget + 1e-5), "outside the per-channel ε-ball"
    assert torch.all(res.adversarial >= rng.lo - 1e-6) and torch.all(res.adversarial <= rng.hi + 1e-6)
    # ε is reported in native units per sample and channel
    native = torch.tensor(res.eps_native, dtype=torch.float64)
    torch.testing.assert_close(native, (0.04 * rng.width).flatten(1).double(), rtol=1e-6, atol=1e-9)
    assert native[0, 1] > 20 * native[0, 0]  # the 300±50 channel gets a much larger native ε
    # deterministic under the seed
    again = (PGD(seg_model, eps=0.04, steps=3, restarts=3, **kwargs) if name == "pgd-restarts"
             else ATTACKS.create(name, seg_model, eps=0.04, **kwargs)).run(x, y)
    assert torch.equal(res.adversarial, again.adversarial)


def test_3d_multichannel_and_fixed_range():
    net = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    x = torch.randn(1, 4, 8, 10, 12)
    y = torch.randint(0, 3, (1, 8, 10, 12))
    res = IFGSM(net, eps=0.05, steps=2).run(x, y)
    assert res.adversarial.shape == x.shape
    # a fixed (lo, hi) range clamps every channel to it and scales ε by its width
    res2 = FGSM(net, eps=0.1, data_range=(-1.0, 1.0)).run(x.clamp(-1, 1), y)
    assert float(res2.adversarial.abs().max()) <= 1.0
    assert res2.eps_native == [[0.2] * 4]


def test_roi_restricts_perturbation(seg_model, seg_data):
    x, y = seg_data
    roi = torch.zeros(32, 32)
    roi[8:16, 8:16] = 1
    adv = PGD(seg_model, eps=0.05, steps=2, roi=roi, seed=0)(x, y)
    changed = (adv != x).any(1)
    assert changed[:, 8:16, 8:16].any()
    assert not changed[:, roi == 0].any()


def test_labels_default_to_clean_prediction(seg_model, seg_data):
    x, _ = seg_data
    with torch.no_grad():
        pred = seg_model(x).argmax(1)
    a = FGSM(seg_model, eps=0.03)(x)
    b = FGSM(seg_model, eps=0.03)(x, pred)
    torch.testing.assert_close(a, b)


def test_iterate_yields_steps_and_cancel_keeps_a_consistent_iterate(seg_model, seg_data):
    x, y = seg_data
    atk = IFGSM(seg_model, eps=0.05, steps=10, track_metrics=True)
    seen = []
    res = atk.run(x, y, callback=seen.append, should_stop=lambda: len(seen) >= 3)
    assert res.cancelled and len(seen) == 3 and [s.step for s in seen] == [1, 2, 3]
    assert {"psnr", "dice"} <= set(seen[0].metrics)
    torch.testing.assert_close(res.adversarial, seen[-1].adversarial)
    assert torch.all((res.adversarial - x).abs() <= 0.05 * compute_range(x).width + 1e-5)
    # full run: history has one record per step plus the final evaluation
    full = atk.run(x, y)
    assert not full.cancelled and len(full.history) == 11
    assert full.history[-1]["dice"] <= full.history[0]["dice"]
    # the generator form
    gen = atk.iterate(x, y)
    first = next(gen)
    assert first.step == 1 and first.n_steps == 10
    gen.close()
    assert not seg_model.training


def test_fast_eps_path_matches_full_fgsm_and_costs_one_forward(seg_model, seg_data):
    x, y = seg_data
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    atk = FGSM(seg_model, eps=0.05).prepare(x, y)
    hook = seg_model.register_forward_hook(count)
    try:
        for eps in (0.0, 0.01, 0.03):
            adv, out = atk.predict_at_eps(eps)
            torch.testing.assert_close(adv, FGSM(seg_model, eps=eps)(x, y))
            assert out.shape == (4, 3, 32, 32)
    finally:
        hook.remove()
    assert calls["n"] == 3 + 3  # 3 ticks + the 3 reference FGSM runs (one forward each)
    assert atk.native_eps(0.01)[0][1] == pytest.approx(0.01 * float(compute_range(x).width[0, 1]))


# ----------------------------------------------------------------- attacks actually work

def test_attacks_lower_dice_ifgsm_at_least_fgsm(seg_model, seg_data):
    x, y = seg_data

    def dice(imgs):
        with torch.no_grad():
            pred = seg_model(imgs).argmax(1)
        return sum(M.foreground_dice(p, t) for p, t in zip(pred, y)) / len(y)

    clean = dice(x)
    assert clean > 0.85, f"the test model is not trained well enough (Dice {clean:.3f})"
    d_fgsm = dice(FGSM(seg_model, eps=0.05)(x, y))
    d_ifgsm = dice(IFGSM(seg_model, eps=0.05, steps=10)(x, y))
    d_noise = dice(RandomNoise(seg_model, eps=0.05, seed=0)(x))
    assert d_fgsm < clean - 0.05
    assert d_ifgsm <= d_fgsm + 1e-6
    assert d_noise > d_fgsm  # an attack beats random noise of the same budget


def test_tifgsm_moves_prediction_to_target(seg_model, seg_data):
    x, y = seg_data

    def agreement(imgs, target):
        with torch.no_grad():
            return float((seg_model(imgs).argmax(1) == target).float().mean())

    target = 1  # Liu's setting: every pixel = label 1
    before = agreement(x, target)
    adv = TIFGSM(seg_model, eps=0.2, steps=10)(x, y)
    assert agreement(adv, target) > before + 0.15
    # a user-painted target mask
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[:16] = 2
    adv2 = TIFGSM(seg_model, eps=0.1, steps=10)(x, target=mask)
    assert agreement(adv2, mask) > agreement(x, mask) + 0.1


def test_targeted_pgd_on_classifier(cls_batch):
    x, y = cls_batch
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Conv2d(3, 10, 16), nn.Flatten())  # logits linear in the input
    with torch.no_grad():
        tgt = linear(x).argmin(1)  # the least likely class of each image
    adv = PGD(linear, eps=0.3, steps=20, seed=0, data_range=(0, 1))(x, target=tgt)
    with torch.no_grad():
        assert torch.equal(linear(adv).argmax(1), tgt)


def test_risk_pgd_raises_risk(classifier, cls_batch):
    x, _ = cls_batch
    labels = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]] * 3 + [[0] * 9 + [1]] * 2)
    inv = M.inverse_cooccurrence(labels.numpy())
    inv = inv + 0.01 * (1 - torch.eye(10).numpy())  # labels never seen get some risk too
    with torch.no_grad():
        clean = torch.sigmoid(classifier(x))
    atk = RiskPGD(classifier, eps=0.2, steps=10, seed=0, cooccurrence=inv, data_range=(0, 1), activation="sigmoid")
    adv = atk(x)
    with torch.no_grad():
        adv_p = torch.sigmoid(classifier(adv))
    assert M.risk(adv_p.numpy(), clean.numpy(), inv) > M.risk(clean.numpy(), clean.numpy(), inv)


def test_risk_pgd_target_vector_start_and_cooccurrence_csv(tmp_path):
    """The target C(ŷ*) by hand; x^0 = x by default (the paper); the matrix from a labels CSV."""
    from napari_medadv.core.attacks.pgd import risk_targets
    from napari_medadv.core.cooccurrence import inverse_cooccurrence_from_csv

    # training labels (columns b, a, c in the file): counts a=3, b=2, c=1; a&b=2, a&c=0, b&c=1
    (tmp_path / "train.csv").write_text("file,b,a,c\nx1.png,1,1,0\nx2.png,0,1,0\nx3.png,1,1,0\n"
                                        "x4.png,0,0,1\n")
    inv = inverse_cooccurrence_from_csv(tmp_path / "train.csv", ["a", "b", "c"])
    # rows: a -> [0, 1 - 2/3, 1]; b -> [1 - 2/2, 0, 1]; c -> [1, 1, 0]
    expected = torch.tensor([[0, 1 / 3, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(torch.as_tensor(inv), expected)
    clean = torch.tensor([[0.2, 3.0, -1.0], [5.0, 0.0, 0.1], [0.0, 0.0, 2.0]], dtype=torch.float64)
    # ŷ* = b, a, c -> target rows b, a, c
    torch.testing.assert_close(risk_targets(inv, clean), expected[[1, 0, 2]])
    with pytest.raises(ValueError, match="no column for the class"):
        inverse_cooccurrence_from_csv(tmp_path / "train.csv", ["a", "d"])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 8), nn.Flatten())
    x = torch.rand(2, 1, 8, 8)
    # one step from x^0 = x with α: the result is x - α sign(∇ BCE(M(x), C(ŷ*))) exactly
    atk = RiskPGD(model, eps=0.1, steps=1, alpha=0.05, cooccurrence_from=str(tmp_path / "train.csv"),
                  data_range=(0, 1), activation="sigmoid")
    assert atk.random_start is False and ATTACKS["pgd-risk"].cls.params[4].default is False
    adv = atk(x)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    # standalone, the attack takes the CSV's columns in their order (b, a, c); the pipeline picks by name
    tgt = risk_targets(inverse_cooccurrence_from_csv(tmp_path / "train.csv"), out.detach()).float()
    loss = nn.functional.binary_cross_entropy_with_logits(out, tgt, reduction="none").mean(1).sum()
    (g,) = torch.autograd.grad(loss, xg)
    torch.testing.assert_close(adv, (x - 0.05 * g.sign()).clamp(0, 1))
    extra = atk.last_result.extra
    assert extra["cooccurrence_source"].startswith("labels CSV") and len(extra["risk_target"]) == 2


class _Linear(nn.Module):
    """A one-logit classifier: a full-image convolution (so the channel check applies)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 16, bias=False)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randint(0, 2, (1, 1, 16, 16), generator=g).float() * 2 - 1)

    def forward(self, x):
        return self.conv(x).flatten(1) + self.bias_for(x)

    bias = 0.0

    def bias_for(self, x):
        return self.bias


def test_dgde_classifier_reduces_l0_and_still_succeeds():
    net = _Linear()
    x = torch.full((1, 1, 16, 16), 0.5)
    with torch.no_grad():
        net.bias = 0.4 - float(net.conv(x).sum())  # clean logit 0.4: positive (p = 0.60)
    atk = DGDE(net, amplitude=0.2, population=16, max_queries=3000, seed=1, activation="sigmoid",
               data_range=(0, 1))
    res = atk.run(x)
    assert res.success == [True]
    l0_hist = res.extra["l0_history"][0]
    assert l0_hist[0] == 256  # the random start perturbs every pixel
    assert all(b <= a for a, b in zip(l0_hist, l0_hist[1:])), "L0 increased"
    assert res.extra["l0"][0] == M.perturbation_norms(x[0], res.adversarial[0])["l0"] < 20
    with torch.no_grad():
        assert torch.sigmoid(net(res.adversarial))[0, 0] < 0.5
    assert res.n_backward == 0  # black box: never a gradient
    assert res.n_forward <= 3000 + 1


def test_dgde_batched_equals_one_by_one():
    net = _Linear()
    x = torch.full((1, 1, 16, 16), 0.5)
    with torch.no_grad():
        net.bias = 0.4 - float(net.conv(x).sum())
    kw = dict(amplitude=0.2, population=8, max_queries=400, seed=2, activation="sigmoid", data_range=(0, 1))
    a = DGDE(net, **kw).run(x)
    b = DGDE(net, batch_size=1, **kw).run(x)
    torch.testing.assert_close(a.adversarial, b.adversarial)
    assert a.extra["l0_history"] == b.extra["l0_history"]


def test_dgde_one_de_generation_by_hand():
    """One DE/rand/1/bin generation on a fixed seed (generator seed 0), checked by hand: partners,
    mutation F (v_r2 - v_r3) with clipping, binomial crossover with j_rand, strict selection."""
    from napari_medadv.core.attacks.dgde import de_generation

    g = torch.Generator().manual_seed(0)
    # the draws of seed 0, in de_generation's order: partners (4 x 3), crossover uniforms (4 x 2), j_rand
    # partners: i0 (3, 1, 2), i1 (0, 2, 3), i2 (3, 0, 1), i3 (1, 2, 0)
    # uniforms: i0 (0.022, 0.169), i1 (0.294, 0.519), i2 (0.698, 0.800), i3 (0.161, 0.282); j_rand (0, 1, 1, 0)
    pop = torch.tensor([[0.0, 0.4], [0.2, -0.2], [0.6, 0.1], [-0.4, 0.3]])[..., None]  # 4 individuals x 2 genes x 1 ch
    lb, ub = torch.full((2, 1), -0.5), torch.full((2, 1), 0.5)
    # mutants (F = 0.5), clipped to [-0.5, 0.5]:
    #   i0: v3 + F (v1 - v2) = (-0.4 - 0.2, 0.3 - 0.15) -> (-0.5, 0.15)
    #   i1: v0 + F (v2 - v3) = (0 + 0.5, 0.4 - 0.1)     -> (0.5, 0.3)
    #   i2: v3 + F (v0 - v1) = (-0.4 - 0.1, 0.3 + 0.3)  -> (-0.5, 0.5)
    #   i3: v1 + F (v2 - v0) = (0.2 + 0.3, -0.2 - 0.15) -> (0.5, -0.35)
    # crossover CR = 0.5 (u < CR, or j = j_rand): i0 both genes, i1 both (gene 1 forced), i2 gene 1 only
    # (forced), i3 both
    hand_trial = torch.tensor([[-0.5, 0.15], [0.5, 0.3], [0.6, 0.5], [0.5, -0.35]])[..., None]
    seen = {}

    def evaluate(trial):
        seen["trial"] = trial.clone()
        f = torch.tensor([-0.35, 0.8, 1.1, 0.15])  # the trials' fitness (their gene sums)
        return f, f > 0

    fit = torch.tensor([0.4, 0.0, 0.7, 0.15])  # parents; i3 ties with its trial
    ok = torch.tensor([True, True, True, False])
    new_pop, new_fit, new_ok = de_generation(pop, fit, ok, lb, ub, 0.5, 0.5, g, evaluate)
    torch.testing.assert_close(seen["trial"], hand_trial)
    # strict greedy selection: i1, i2 improve; i0 is worse; the tie i3 keeps its parent
    torch.testing.assert_close(new_pop, torch.stack([pop[0], hand_trial[1], hand_trial[2], pop[3]]))
    torch.testing.assert_close(new_fit, torch.tensor([0.4, 0.8, 1.1, 0.15]))
    assert new_ok.tolist() == [True, True, True, False]


def test_dgde_is_an_l0_attack_with_free_values_and_failures_have_no_l0():
    net = _Linear()
    x = torch.full((1, 1, 16, 16), 0.5)
    with torch.no_grad():
        net.bias = 2.0 - float(net.conv(x).sum())  # clean logit 2: p = 0.88
    atk = DGDE(net, population=8, max_queries=600, seed=0, activation="sigmoid", data_range=(0, 1))
    assert ATTACKS["dgde"].takes_eps is False  # no ε budget: a study's ε axis does not reach DGDE
    res = atk.run(x)
    assert res.success == [True]
    d = (res.adversarial - x)[0, 0]
    assert float(d.abs().max()) > 0.2  # values free within [0, 1], not capped at a small ε
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    assert res.extra["l0"][0] == int((d != 0).sum())
    hist = res.history
    assert [h["l0"] for h in hist] == res.extra["l0_history"][0]
    assert all(h["probability"] < 0.5 for h in hist)  # every accepted solution keeps p below 0.5
    assert [h["iteration"] for h in hist] == sorted(h["iteration"] for h in hist)
    # with a cap the change never exceeds it; too small a cap fails: success False and no L0 (not 0)
    capped = DGDE(net, amplitude=0.3, population=8, max_queries=300, seed=0, activation="sigmoid",
                  data_range=(0, 1)).run(x)
    assert float((capped.adversarial - x).abs().max()) <= 0.3 + 1e-6
    failed = DGDE(net, amplitude=1e-4, population=8, max_queries=50, seed=0, activation="sigmoid",
                  data_range=(0, 1)).run(x)
    assert failed.success == [False] and failed.extra["l0"] == [None]
    torch.testing.assert_close(failed.adversarial, x)


def test_dgde_segmentation(seg_model, seg_data):
    x, y = seg_data
    atk = DGDE(seg_model, population=16, max_queries=1500, seed=0, threshold=0.5)
    res = atk.run(x[:1], y[:1])
    assert res.success == [True]
    with torch.no_grad():
        pred = seg_model(res.adversarial).argmax(1)
    assert M.foreground_dice(pred[0], y[0]) < 0.5
    hist = res.extra["l0_history"][0]
    assert hist[-1] < hist[0]


@pytest.mark.parametrize("region", [None, [2, 3]])
def test_dgde_segmentation_criterion_equals_its_definition(region):
    """The hard Dice of the criterion comes from slab-wise counts (metrics.foreground_overlap /
    channel_argmax), not torch's arg-max over the channels: the same fitness, success and Dice as
    the definition written with torch's arg-max, ties included (first maximum wins)."""
    from napari_medadv.core.attacks.dgde import _make_criterion

    g = torch.Generator().manual_seed(0)
    out0 = torch.randn(1, 4, 9, 10, 11, generator=g)
    outs = torch.randn(3, 4, 9, 10, 11, generator=g).round()  # rounded: many ties between channels
    outs[1] = out0[0]
    atk = DGDE(nn.Identity(), threshold=0.5, region=region)
    crit, cls = _make_criterion(atk, out0, None)
    assert cls is None
    fitness, success, dice = crit(outs)

    ref = out0.argmax(1)
    fg = (ref != 0) if region is None else torch.isin(ref, torch.tensor(region))
    fg = fg.float()
    pred = outs.argmax(1)
    hard = ((pred != 0) if region is None else torch.isin(pred, torch.tensor(region))).float()
    want = 2 * (hard * fg).sum((1, 2, 3)) / (hard.sum((1, 2, 3)) + fg.sum((1, 2, 3)))
    probs = torch.softmax(outs, 1)
    soft_fg = 1 - probs[:, 0] if region is None else probs[:, region].sum(1)
    soft = 2 * (soft_fg * fg).sum((1, 2, 3)) / (soft_fg.sum((1, 2, 3)) + fg.sum((1, 2, 3)) + 1e-6)
    torch.testing.assert_close(dice, want, rtol=0, atol=0)
    torch.testing.assert_close(fitness, (0.5 - want) + 1e-3 * (1 - soft), rtol=0, atol=0)
    assert success.tolist() == (want < 0.5).tolist()
    assert float(dice[1]) == 1.0  # the clean output itself


def test_registry_lists_every_attack_with_params():
    assert {"fgsm", "ifgsm", "tifgsm", "pgd", "pgd-risk", "dgde", "noise"} <= set(ATTACKS)
    for spec in ATTACKS.values():
        # attacks lead with their L∞ budget, MR artifacts (core.attacks.artifacts) with their severity,
        # DGDE (an L0 attack: no ε budget) with its optional amplitude cap
        lead = "severity" if spec.name in ARTIFACT_NAMES else "amplitude" if spec.name == "dgde" else "eps"
        assert spec.params and spec.params[0].name == lead
        assert spec.label and spec.description
    with pytest.raises(ValueError, match="unknown attack"):
        ATTACKS.get_spec("deepfool")
    with pytest.raises(ValueError, match="does not take"):
        ATTACKS.create("fgsm", nn.Conv2d(1, 1, 1), steps=3)


# ----------------------------------------------------------------- bad arguments

@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: FGSM(m, eps=-0.1), "eps must be >= 0"),
        (lambda m: FGSM(m, eps=float("nan")), "eps must be finite"),
        (lambda m: IFGSM(m, steps=0), "steps must be an integer >= 1"),
        (lambda m: IFGSM(m, alpha=0), "alpha must be > 0"),
        (lambda m: PGD(m, restarts=0), "restarts"),
        (lambda m: DGDE(m, population=3), "population must be >= 4"),
        (lambda m: DGDE(m, CR=1.5), "CR"),
        (lambda m: FGSM(m, loss="hinge"), "unknown loss"),
        (lambda m: FGSM("not a model"), "torch.nn.Module"),
        (lambda m: RiskPGD(m), "co-occurrence"),
        (lambda m: FGSM(m, data_range=(1, 0)).run(torch.zeros(1, 2, 8, 8)), "hi > lo"),
    ],
)
def test_bad_constructor_arguments(seg_model, make, message):
    with pytest.raises(ValueError, match=message):
        make(seg_model)


@pytest.mark.parametrize(
    "images, labels, kwargs, message",
    [
        (torch.zeros(2, 32, 32), None, {}, "B C H W"),
        (torch.zeros(1, 3, 32, 32), None, {}, "expects 2 input channels"),
        (torch.full((1, 2, 32, 32), float("nan")), None, {}, "NaN"),
        (torch.zeros(1, 2, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long), {}, "batch size"),
        (torch.zeros(1, 2, 32, 32), torch.zeros(1, 16, 16, dtype=torch.long), {}, "does not fit"),
        (torch.zeros(1, 2, 32, 32), torch.full((1, 32, 32), 7), {}, "class index"),
    ],
)
def test_bad_call_arguments(seg_model, images, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FGSM(seg_model, eps=0.05)(images, labels, **kwargs)


def test_unknown_target_label(seg_model, seg_data):
    x, _ = seg_data
    with pytest.raises(ValueError, match="target label 5"):
        TIFGSM(seg_model, target_label=5)(x)
    with pytest.raises(ValueError, match="untargeted"):
        IFGSM(seg_model)(x, target=1)


def test_fast_path_before_prepare(seg_model):
    with pytest.raises(RuntimeError, match="prepare"):
        FGSM(seg_model).at_eps(0.1)


def test_slab_wise_add_clamp_equals_the_whole_volume_op():
    """at_eps's slab-wise multiply-add and clamp (CPU) equals torch's whole-volume ops bit for bit,
    per sample and channel bounds, with slabs smaller than a channel."""
    from napari_medadv.core.attacks.fgsm import _add_clamped

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 7, 5, generator=g) * 100
    step = torch.sign(torch.randn(2, 3, 9, 7, 5, generator=g)) * torch.rand(2, 3, 1, 1, 1, generator=g) * 50
    rng = compute_range(x, [(10.0, 90.0), (0.0, 100.0), (20.0, 30.0)])
    rng_obs = compute_range(x)  # per-sample bounds
    for bounds in (rng, rng_obs):
        for eps in (0.0, 0.3, 1.0):
            e = torch.tensor(eps)
            want = torch.clamp(torch.addcmul(x, step, e), min=bounds.lo, max=bounds.hi)
            assert torch.equal(_add_clamped(x, step, e, bounds, chunk=17), want)
            assert torch.equal(_add_clamped(x, step, e, bounds), want)


def test_slab_wise_projection_equals_the_expression():
    """Every iterative step's projection (onto the ε-ball inside the region, then the valid range),
    fused over slabs on CPU, equals the tensor expression bit for bit: per-sample and per-channel
    ε and bounds, no region, one region for the batch or one per sample, slabs smaller than a
    channel; a non-contiguous iterate takes the expression."""
    from napari_medadv.core.attacks._slabs import project

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 7, 5, generator=g) * 100
    adv = x + torch.randn(2, 3, 9, 7, 5, generator=g) * 20
    for bounds in (compute_range(x, [(10.0, 90.0), (0.0, 100.0), (20.0, 30.0)]), compute_range(x)):
        eps = bounds.eps_native(0.07)
        for roi in (None, (torch.rand(1, 1, 9, 7, 5, generator=g) > 0.3).float(),
                    (torch.rand(2, 1, 9, 7, 5, generator=g) > 0.5).float()):
            delta = torch.clamp(adv - x, min=-eps, max=eps)
            if roi is not None:
                delta = delta * roi
            want = torch.clamp(x + delta, min=bounds.lo, max=bounds.hi)
            assert torch.equal(project(adv, x, eps, roi, bounds.lo, bounds.hi, chunk=17), want)
            assert torch.equal(project(adv, x, eps, roi, bounds.lo, bounds.hi), want)
            strided = adv.transpose(2, 4).contiguous().transpose(2, 4)  # same values, not contiguous
            assert torch.equal(project(strided, x, eps, roi, bounds.lo, bounds.hi), want)


def test_numpy_input_and_integer_images(seg_model, seg_data):
    x, y = seg_data
    adv = FGSM(seg_model, eps=0.01)(x.numpy(), y.numpy())
    assert isinstance(adv, torch.Tensor) and adv.dtype == torch.float32
    assert math.isclose(float((adv - x).abs().amax()), 0.01 * float(compute_range(x).width.max()), rel_tol=1e-4)


def test_registry_carries_capabilities_for_the_front_ends():
    """Front ends read what an attack can do from its spec, never from its name or class."""
    from napari_medadv.core.attacks import ATTACKS

    kinds = {n: s.kind for n, s in ATTACKS.items()}
    assert kinds["fgsm"] == kinds["pgd"] == kinds["dgde"] == "adversarial" and kinds["noise"] == "random"
    assert {n for n, k in kinds.items() if k == "artifact"} == {"motion", "ghosting", "spike", "biasfield",
                                                                 "gaussnoise", "blur"}
    assert [n for n, s in ATTACKS.items() if s.live_eps] == ["fgsm"]
    assert ATTACKS["ifgsm"].iterative and not ATTACKS["fgsm"].iterative
    assert ATTACKS["fgsm"].takes_eps and not ATTACKS["motion"].takes_eps
