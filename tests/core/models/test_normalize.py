"""The models' z-score over non-zero voxels (an autograd function with its backward in closed
form): its values against MONAI's NormalizeIntensity and the plain tensor expression it replaces,
its gradient against autograd through that expression and torch's gradcheck, and constant or empty
channels (no NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medadv.core.models.normalize import EPS, NonzeroZscore, Normalize


def _expression(x: torch.Tensor) -> torch.Tensor:
    """The plain tensor expression (mask held fixed): what the function computes."""
    dims = tuple(range(2, x.ndim))
    mask = (x != 0).to(x.dtype)
    n = mask.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (x * mask).sum(dims, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(dims, keepdim=True) / n
    return (x - mean) / var.sqrt().clamp_min(EPS) * mask


def _image(dtype=torch.float32, shape=(2, 3, 9, 10, 11), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 300 + 500
    x[torch.rand(shape, generator=g, dtype=dtype) < 0.4] = 0  # background
    return x


def test_values_equal_monai_and_the_expression():
    from monai.transforms import NormalizeIntensity

    x = _image()
    y = NonzeroZscore.apply(x)
    torch.testing.assert_close(y, _expression(x), rtol=1e-5, atol=1e-5)
    for b in range(x.shape[0]):
        ref = NormalizeIntensity(nonzero=True, channel_wise=True)(x[b].numpy())
        np.testing.assert_allclose(y[b].numpy(), np.asarray(ref), rtol=1e-4, atol=1e-4)
    assert bool((y[x == 0] == 0).all())


def test_gradient_equals_autograd_through_the_expression_and_passes_gradcheck():
    x = _image(torch.float64, (2, 2, 5, 6, 4), seed=1)
    g = torch.randn_like(x)
    a = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad((NonzeroZscore.apply(a) * g).sum(), a)
    b = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad((_expression(b) * g).sum(), b)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)
    assert bool((ga[x == 0] == 0).all())
    # finite differences move a zero voxel off the mask (the function jumps there): gradcheck on
    # non-zero voxels, the comparison above covers the mask
    small = (torch.rand(1, 2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5)
    assert torch.autograd.gradcheck(NonzeroZscore.apply, (small.requires_grad_(True),))


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_a_constant_or_empty_channel_gives_zeros_and_finite_gradients(value):
    x = _image(torch.float64, (1, 2, 4, 5), seed=3)
    x[0, 1] = value
    x.requires_grad_(True)
    y = NonzeroZscore.apply(x)
    assert bool((y[0, 1] == 0).all())
    (gx,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert bool(torch.isfinite(gx).all())
    torch.testing.assert_close(y[0, 0], _expression(x.detach())[0, 0])


def test_the_module_uses_it_for_the_nonzero_mode():
    class Info:
        normalization = "zscore-nonzero"

    x = _image()
    torch.testing.assert_close(Normalize(Info())(x), NonzeroZscore.apply(x))
