"""An attack's soft-Dice target is one-hot encoded once per run, not at every step, and the attack
is exactly what it was when the loss encoded the label map itself at every call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_medadv.core.attacks import IFGSM, PGD
from napari_medadv.core.attacks import base as attack_base


def _seg_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("make", [lambda m: IFGSM(m, eps=0.05, steps=4, track_metrics=True),
                                  lambda m: PGD(m, eps=0.05, steps=3, restarts=2, seed=3)])
def test_the_dice_target_is_encoded_once_and_the_attack_is_unchanged(monkeypatch, make):
    model = _seg_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((2, 2, 8, 10, 6), generator=g)
    labels = torch.randint(0, 3, (2, 8, 10, 6), generator=g)
    calls = []
    real = attack_base.as_dense_target
    monkeypatch.setattr(attack_base, "as_dense_target", lambda t, o: calls.append(1) or real(t, o))
    cached = _run(make(model), x, labels)
    n_cached = len(calls)
    monkeypatch.setattr(attack_base._Context, "_loss_target", lambda self, ref, output: ref)  # the loss encodes
    plain = _run(make(model), x, labels)
    assert n_cached == 1
    assert torch.equal(cached.adversarial, plain.adversarial)
    assert cached.history == plain.history  # losses and tracked metrics, step by step


def _run(attack, x, labels):
    gen = attack.iterate(x, labels)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value
