"""Uniform L∞ random noise — the baseline of Liu et al. (augmentation radius 0.01) and DGDE's start."""

from __future__ import annotations

import torch

from .base import Attack, AttackStep, Param, _Context


class RandomNoise(Attack):
    r"""``X_noisy = clip(X + U(−ε, ε))`` independently per voxel and channel.

    Not an attack in the optimisation sense: the baseline that tells how much of an attack's
    effect any perturbation of the same L∞ size would have. Uses no model call except to
    report metrics; deterministic under ``seed``.

    Example::

        >>> x_noisy = RandomNoise(model, eps=0.01, seed=0)(images)
    """

    name = "noise"
    kind = "random"
    label = "Random noise"
    description = "Uniform random L∞ noise of the same budget (baseline)."
    gradient_free = True
    params = (Param("eps", float, 0.05, "L∞ budget, fraction of the intensity range", 0.0, 1.0),)

    def _steps(self, ctx: _Context):
        noise = torch.empty_like(ctx.x).uniform_(-1.0, 1.0, generator=ctx.rng)
        adv = ctx.project(ctx.x + noise * ctx.eps)
        yield AttackStep(1, 1, None, adv, {})
        return adv
