"""Defenses: distillation soft Dice (eq. 7, hand-computed), FGSM-regularised loss (eq. 9), noise
augmentation, and a few training steps of each defense changing the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from napari_medadv.core.errors import MedadvError
from napari_medadv.core.losses import DistillationDiceLoss
from napari_medadv.core.training import defenses as D


def test_distillation_dice_hand_computed():
    # N = 2 classes, 2 voxels, T = 2. Student logits class 1: [2 ln 3, 0], class 0: [0, 0]
    # -> softmax(z / T) class 1 = [3/4, 1/2]. Teacher soft labels class 1 = [1, 0].
    # eq. 7: D = 1/N * (2 * 0.75 + g) / (1.25 + 1 + g);  loss = 1 - D
    g = 1e-5
    z = torch.tensor([[[0.0, 0.0], [2 * math.log(3), 0.0]]])  # B K V
    q = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    loss = DistillationDiceLoss(temperature=2.0, gamma=g)(z, q)
    assert loss.shape == (1,)
    assert float(loss[0]) == pytest.approx(1 - 0.5 * (1.5 + g) / (2.25 + g), rel=1e-6)
    # T = 1 is the ordinary soft Dice: softmax(z) class 1 = [9/10, 1/2]
    loss1 = DistillationDiceLoss(temperature=1.0, gamma=g)(z, q)
    assert float(loss1[0]) == pytest.approx(1 - 0.5 * (1.8 + g) / (2.4 + g), rel=1e-6)


@pytest.mark.parametrize("kwargs, msg", [({"temperature": 0}, "temperature"), ({"gamma": 0}, "gamma")])
def test_distillation_dice_ill_opts(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        DistillationDiceLoss(**kwargs)


def test_distillation_dice_rejects_hard_targets():
    with pytest.raises(ValueError, match="soft labels"):
        DistillationDiceLoss()(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))


def _toy():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 6, 6, 6) * torch.tensor([1.0, 50.0]).view(1, 2, 1, 1, 1)
    x[:, :, :2] = 0  # background
    y = torch.randint(0, 3, (2, 1, 6, 6, 6))

    def loss_fn(out, tgt):
        return torch.nn.functional.cross_entropy(out, tgt[:, 0])

    return net, x, y, loss_fn


def test_fgsm_examples_and_adversarial_loss_eq9():
    net, x, y, loss_fn = _toy()
    x0 = x.clone()
    adv = D.fgsm_examples(net, loss_fn, x, y, eps=0.1)
    assert torch.equal(x, x0)  # input untouched
    width = x.amax(dim=(2, 3, 4), keepdim=True) - x.amin(dim=(2, 3, 4), keepdim=True)
    delta = adv - x
    assert torch.all(delta.abs() <= 0.1 * width + 1e-5)
    assert torch.all(delta[:, :, :2] == 0)  # stays on the non-zero support
    # the step follows the sign of the input gradient of the loss
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(net(xr), y), xr)
    moved = delta != 0  # voxels at the range limits may be clamped back
    assert moved[:, :, 2:].float().mean() > 0.9
    assert torch.equal(torch.sign(delta)[moved], torch.sign(g)[moved])
    # eq. 9 by hand, and no parameter gradient leaks from the inner FGSM step
    beta = 0.3
    total = D.adversarial_loss(net, loss_fn, x, y, eps=0.1, beta=beta)
    assert all(p.grad is None for p in net.parameters())
    expected = beta * loss_fn(net(x), y) + (1 - beta) * loss_fn(net(adv), y)
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="beta"):
        D.adversarial_loss(net, loss_fn, x, y, eps=0.1, beta=1.5)


def test_uniform_noise_radius_and_support():
    _, x, _, _ = _toy()
    noisy = D.uniform_noise(x, 0.01, torch.Generator().manual_seed(0))
    width = x.amax(dim=(2, 3, 4), keepdim=True) - x.amin(dim=(2, 3, 4), keepdim=True)
    d = noisy - x
    assert torch.all(d.abs() <= 0.01 * width + 1e-5) and float(d.abs().max()) > 0
    assert torch.all(d[:, :, :2] == 0)


def _tiny_data():
    rng = np.random.default_rng(0)
    data = []
    for _ in range(2):
        img = rng.normal(1.0, 0.2, size=(4, 16, 16, 16)).astype(np.float32)
        img[:, :3] = 0
        seg = np.zeros((16, 16, 16), np.int64)
        seg[6:12, 6:12, 6:12] = 2
        seg[8:11, 8:11, 8:11] = 4
        seg[9, 9, 9] = 1
        img[3][seg == 2] += 1.0
        img[1][seg == 4] += 1.5
        data.append((img, seg))
    return data


@pytest.mark.parametrize("defense", D.DEFENSES)
def test_each_defense_trains_and_changes_the_model(defense, tmp_path):
    from napari_medadv.core.models.demo import load_demo

    rec = D.train_defended(defense, tmp_path, init="demo:unet3d", data=_tiny_data(), epochs=1, lr=1e-3,
                           evaluate=False, log=lambda s: None)
    name = D.defended_name("unet3d", defense)
    assert rec["weights"].endswith(f"{name}.pt") and rec["defense"] == defense
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["info"]["name"] == f"demo:{name}" and meta["training"]["init"] == "demo:unet3d"
    assert "medadv train demo-unet3d --defense" in meta["training"]["command"]
    net, info, _ = load_demo(name, folder=tmp_path)
    ref, _, _ = load_demo("unet3d")
    a, b = net.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert changed, "training did not change any weight"
    assert info.task == "segmentation"
    from napari_medadv.core.models import load_model

    loaded = load_model(f"trained:{tmp_path / (name + '.json')}", device="cpu")  # no trust: known architecture
    assert loaded.info.name == f"demo:{name}" and loaded.checksum is not None


@pytest.mark.parametrize("adv_loss,adv_update", [("soft-dice", "sequential"), ("dicece", "joint")])
def test_adversarial_training_loss_and_update(adv_loss, adv_update, tmp_path, monkeypatch):
    """eq. 9 with the paper's soft Dice (eq. 6) or DiceCE; sequential: an FGSM-example step, then a
    clean step, per batch (two optimiser steps per batch)."""
    calls = []
    real = D.fgsm_examples
    monkeypatch.setattr(D, "fgsm_examples", lambda *a, **k: calls.append(1) or real(*a, **k))
    rec = D.train_defended("adversarial", tmp_path, init="demo:unet3d", data=_tiny_data(), epochs=1, lr=1e-3,
                           adv_loss=adv_loss, adv_update=adv_update, evaluate=False, log=lambda s: None)
    assert (rec["adv_loss"], rec["adv_update"]) == (adv_loss, adv_update)
    assert f"--adv-loss {adv_loss} --adv-update {adv_update}" in rec["command"]
    assert calls  # FGSM examples of the current model, every batch
    if adv_update == "sequential":
        assert rec["beta"] is None


def test_soft_dice_adversarial_objective_is_eq6():
    from napari_medadv.core.losses import SoftDiceLoss

    net, x, y, _ = _toy()
    params, steps, batches, loss_of = D._adversarial_objective(
        net, [], {"batch": 1}, np.random.default_rng(0), 1, eps=0.1, beta=0.25, adv_loss="soft-dice",
        adv_update="joint", dicece=None)
    soft = SoftDiceLoss("softmax")
    adv = D.fgsm_examples(net, lambda o, t: soft(o, t).mean(), x, y, 0.1)
    expected = 0.25 * soft(net(x), y).mean() + 0.75 * soft(net(adv), y).mean()
    assert float(loss_of((x, y))) == pytest.approx(float(expected), rel=1e-5)


def test_defense_arguments_are_validated(tmp_path):
    with pytest.raises(MedadvError, match="unknown defense"):
        D.train_defended("magic", tmp_path)
    with pytest.raises(MedadvError, match="beta"):
        D.train_defended("adversarial", tmp_path, beta=2.0)
    with pytest.raises(MedadvError, match="unet3d"):
        D.train_defended("noise", tmp_path, base="cxr")
    with pytest.raises(MedadvError, match="temperature"):
        D.train_defended("distill", tmp_path, temperature=-1)
    with pytest.raises(MedadvError, match="adversarial-training loss"):
        D.train_defended("adversarial", tmp_path, adv_loss="mse")


@pytest.mark.parametrize("include_background", [False, True])
def test_distillation_dice_with_soft_labels_is_not_minimal_at_the_teacher(include_background):
    """With diffuse soft labels (a teacher at high T), eq. 7's soft Dice is lower for a student
    sharper than the teacher than for one equal to it: the student is not pulled onto F(X)."""
    torch.manual_seed(0)
    q = torch.softmax(torch.randn(1, 4, 6, 6, 6) / 5, dim=1)
    loss = DistillationDiceLoss(1.0, include_background=include_background)
    equal, sharper = float(loss(torch.log(q), q)), float(loss(4 * torch.log(q), q))
    assert sharper < equal


def test_temperature_sweep_trains_one_model_per_temperature(monkeypatch, tmp_path, capsys):
    import argparse

    from napari_medadv.cli import train as cli_train

    seen = []

    def fake(defense, out, **kw):
        seen.append((kw["temperature"], kw["name"]))
        return {"metadata": str(tmp_path / f"{kw['name']}.json")}

    monkeypatch.setattr(cli_train, "train_defended", fake)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    cli_train.add_parser(sub)
    args = p.parse_args(["train", "demo-unet3d", "--defense", "distill", "--temperature", "1,5,100",
                         "--out", str(tmp_path)])
    records = cli_train.train_defended_from_args(args)
    assert seen == [(1.0, "unet3d-distill-T1"), (5.0, "unet3d-distill-T5"), (100.0, "unet3d-distill-T100")]
    assert len(records) == 3 and "trained:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["train", "demo-unet3d", "--defense", "distill", "--temperature", "1,x"])
