"""Differentiable intensity normalisation ``native -> network input`` (:class:`Normalize`), part of
every wrapped model, so attacks see the whole pre-processing chain: the statistics are recomputed
on the (perturbed) input, as the deployed pipeline would do.

The z-score over the non-zero voxels (MONAI's ``NormalizeIntensity(nonzero=True,
channel_wise=True)``, what BraTS models use) is written as one autograd function,
:class:`NonzeroZscore`, with its backward in closed form. Written out by hand because the plain
tensor expression (mask, masked sum, masked squared deviations, scaled output: a dozen full-size
temporaries, and as many autograd nodes) took 0.14 s forward and 0.49 s forward + backward for a
4×240×240×155 input on 2 cores (the demo 3-D model's forward pass is about 0.65 s); the function
takes 0.12 s and 0.21 s.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-8  # the smallest standard deviation divided by (a constant channel)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n, mean, std)`` of the non-zero voxels of each ``(sample, channel)``, shaped ``B C 1…``:
    ``n`` at least 1, the population standard deviation (divided by ``n``) at least :data:`EPS`."""
    b, c = x.shape[:2]
    flat = x.reshape(b * c, -1)
    # whole-row counts: count_nonzero along a dimension is twice as slow (35 against 17 ms at BraTS size)
    n = torch.stack([torch.count_nonzero(row) for row in flat]).to(x.dtype).clamp_min(1.0)
    mean = flat.sum(1) / n  # zeros add nothing: the sum over the non-zero voxels
    var = torch.empty_like(mean)
    for i in range(b * c):  # one channel's deviations at a time: one temporary of a channel's size
        d = flat[i] - mean[i]
        d.masked_fill_(flat[i] == 0, 0.0)
        var[i] = d.square_().sum()  # torch's sum: the cascade summation of the tensor expression
    std = (var / n).sqrt().clamp_min(EPS)
    shape = (b, c) + (1,) * (x.ndim - 2)
    return n.reshape(shape), mean.reshape(shape), std.reshape(shape)


class NonzeroZscore(torch.autograd.Function):
    """``y = (x − μ) / σ`` on the non-zero voxels of each channel, 0 elsewhere; μ and σ (the
    population standard deviation, at least :data:`EPS`) over those voxels.

    The gradient treats the mask of non-zero voxels as fixed (as ``x * mask`` would): with
    ``m`` the mask, ``n`` its size and means over it,
    ``∂L/∂x = m · (g − mean(g) − y · mean(g y)) / σ``; where σ is held at :data:`EPS` (a constant
    channel) it does not depend on ``x``, and the ``y`` term drops out."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, mean, std = _channel_stats(x)
        y = torch.sub(x, mean).div_(std)
        y.masked_fill_(x == 0, 0.0)
        ctx.save_for_backward(x, y, n, std)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        x, y, n, std = ctx.saved_tensors
        mask = x != 0
        dims = tuple(range(2, x.ndim))
        gm = torch.where(mask, g, 0.0)
        g_mean = gm.sum(dims, keepdim=True) / n
        gy_mean = (gm * y).sum(dims, keepdim=True) / n  # y is 0 off the mask
        gy_mean = torch.where(std > EPS, gy_mean, 0.0)  # a held σ does not depend on x
        dx = gm.sub_(g_mean).sub_(y * gy_mean).div_(std)
        return dx.masked_fill_(~mask, 0.0)


class Normalize(nn.Module):
    """Differentiable intensity normalisation ``native -> network input`` (per sample, per channel)."""

    def __init__(self, info):
        super().__init__()
        self.mode = info.normalization
        if self.mode == "fixed":
            shape = (1, info.in_channels) + (1,) * info.spatial_dims
            self.register_buffer("mean", torch.tensor(info.norm_mean, dtype=torch.float32).reshape(shape))
            self.register_buffer("std", torch.tensor(info.norm_std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        if self.mode == "fixed":
            return (x - self.mean) / self.std
        dims = tuple(range(2, x.ndim))
        if self.mode == "minmax":
            lo = x.amin(dims, keepdim=True).detach()
            hi = x.amax(dims, keepdim=True).detach()
            return (x - lo) / (hi - lo).clamp_min(1e-8)
        if self.mode == "zscore":
            mean = x.mean(dims, keepdim=True)
            std = x.std(dims, keepdim=True).clamp_min(1e-8)
            return (x - mean) / std
        # z-score over the non-zero voxels (background stays 0), as MONAI NormalizeIntensity(nonzero=True)
        return NonzeroZscore.apply(x)
