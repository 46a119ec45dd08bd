"""nnU-Net's resampling, reproduced exactly and differentiably.

nnU-Net (``nnunetv2/preprocessing/resampling/default_resampling.py``) resamples the normalised
image to the configuration's spacing with ``skimage.transform.resize`` (spline order 3, ``mode=
"edge"``, no anti-aliasing, output clipped to the input's range), and its logits back with order 1.
When the image or target spacing is anisotropic (largest / smallest spacing > 3) it resamples the
in-plane axes slice by slice and the out-of-plane axis with nearest neighbour
(``map_coordinates(order=0)``).

``resize`` is ``scipy.ndimage.zoom(grid_mode=True)``: a spline prefilter and interpolation, both
separable, so along each axis it is one fixed linear map. :func:`axis_matrix` computes that map by
resampling the unit vectors with scipy itself; applying one matrix per axis (a matmul) gives the
same numbers as nnU-Net (up to float32 rounding) and is differentiable. The clip to the input range
is a ``clamp`` between the input's minimum and maximum (per channel; per slice where nnU-Net resizes
slice by slice). Plans written by nnU-Net's torch resampling (``resample_torch_fornnunet``) use
``F.interpolate`` (trilinear / nearest-exact), as nnU-Net does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ModelError

ANISO_THRESHOLD = 3  # nnunetv2.configuration.ANISO_THRESHOLD
RESAMPLING_FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet")


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: ``round(old_spacing / new_spacing * old_shape)`` per axis."""
    return tuple(round(s / n * k) for s, n, k in zip(spacing, new_spacing, shape))


def separate_z(force: bool | None, spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """``determine_do_sep_z_and_axis``: the anisotropic axis resampled separately, or None."""

    def aniso(sp):
        return max(sp) / min(sp) > ANISO_THRESHOLD

    def lowres(sp):
        return [i for i, s in enumerate(sp) if max(sp) / s == 1]

    if force is not None:
        axes = lowres(spacing) if force else None
    elif aniso(spacing):
        axes = lowres(spacing)
    elif aniso(new_spacing):
        axes = lowres(new_spacing)
    else:
        axes = None
    return axes[0] if axes is not None and len(axes) == 1 else None


@lru_cache(maxsize=64)
def axis_matrix(n_in: int, n_out: int, order: int, kind: str = "zoom") -> np.ndarray:
    """The ``n_out x n_in`` matrix of one axis of nnU-Net's resize.

    ``kind="zoom"``: ``scipy.ndimage.zoom(v, n_out / n_in, order, mode="nearest", grid_mode=True)``
    (what ``skimage.transform.resize(mode="edge", anti_aliasing=False)`` runs);
    ``kind="coords"``: ``map_coordinates(v, scale * (k + 0.5) - 0.5, order, mode="nearest")``, the
    out-of-plane step of nnU-Net's anisotropic resampling.
    """
    from scipy import ndimage as ndi

    eye = np.eye(n_in)
    if kind == "zoom":
        cols = [ndi.zoom(e, n_out / n_in, order=order, mode="nearest", grid_mode=True) for e in eye]
        if any(c.shape != (n_out,) for c in cols):
            raise ModelError(f"internal: zoom {n_in} -> {n_out} gave {cols[0].shape}")
    else:
        coords = (n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5
        cols = [ndi.map_coordinates(e, coords[None], order=order, mode="nearest") for e in eye]
    return np.stack(cols, axis=1)


def _apply_axis(x: torch.Tensor, axis: int, matrix: np.ndarray) -> torch.Tensor:
    """Multiply spatial axis ``axis`` of ``x`` (``C *spatial``) by ``matrix``."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    moved = x.movedim(axis + 1, -1)
    return (moved @ m.T).movedim(-1, axis + 1)


def _clamp_to(x: torch.Tensor, ref: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    lo, hi = ref.amin(dims, keepdim=True), ref.amax(dims, keepdim=True)
    return torch.minimum(torch.maximum(x, lo), hi)


def resize_skimage(x: torch.Tensor, new_shape: Sequence[int], order: int, axes: Sequence[int]) -> torch.Tensor:
    """``skimage.transform.resize`` of every ``axes``-slab of ``x`` (``C *spatial``) to ``new_shape`` on
    those axes: one matrix per resized axis, then the clip to each slab's input range."""
    out = x
    for a in axes:
        if out.shape[a + 1] != new_shape[a]:
            out = _apply_axis(out, a, axis_matrix(int(out.shape[a + 1]), int(new_shape[a]), int(order)))
    return _clamp_to(out, x, tuple(a + 1 for a in axes)) if order > 0 else out


def resample_default(x: torch.Tensor, new_shape: Sequence[int], spacing, new_spacing, *, order: int = 3,
                     order_z: int = 0, force_separate_z: bool | None = False, is_seg: bool = False) -> torch.Tensor:
    """``resample_data_or_seg_to_shape`` on ``x`` (``C *spatial``; data or logits, not segmentations)."""
    if is_seg:
        raise ModelError("plans: segmentation resampling is not part of inference")
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(x.shape[1:]) == new_shape:
        return x
    axis = separate_z(force_separate_z, spacing, new_spacing)
    nd = x.ndim - 1
    if axis is None:
        return resize_skimage(x, new_shape, order, tuple(range(nd)))
    plane = tuple(a for a in range(nd) if a != axis)
    out = resize_skimage(x, new_shape, order, plane)
    if x.shape[axis + 1] != new_shape[axis]:
        out = _apply_axis(out, axis, axis_matrix(int(x.shape[axis + 1]), new_shape[axis], int(order_z), "coords"))
    return out


def resample_torch(x: torch.Tensor, new_shape: Sequence[int], spacing, new_spacing, *, is_seg: bool = False,
                   force_separate_z: bool | None = None, mode: str = "linear",
                   aniso_axis_mode: str = "nearest-exact", **_ignored) -> torch.Tensor:
    """``resample_torch_fornnunet`` (nnU-Net's torch resampling) on ``x`` (``C *spatial``)."""
    if is_seg:
        raise ModelError("plans: segmentation resampling is not part of inference")
    new_shape = [int(s) for s in new_shape]
    if list(x.shape[1:]) == new_shape:
        return x
    nd = x.ndim - 1
    lin = {3: "trilinear", 2: "bilinear"}
    torch_mode = lin[nd] if mode == "linear" else mode
    axis = separate_z(force_separate_z, spacing, new_spacing)
    if axis is None:
        return F.interpolate(x[None], new_shape, mode=torch_mode, antialias=False)[0]
    plane = [a for a in range(nd) if a != axis]
    moved = x.movedim(axis + 1, 1)  # C A P Q
    c, a = moved.shape[:2]
    flat = moved.reshape(c * a, *moved.shape[2:])
    plane_mode = lin[2] if mode == "linear" else mode
    flat = F.interpolate(flat[None], [new_shape[p] for p in plane], mode=plane_mode, antialias=False)[0]
    out = flat.reshape(c, a, *flat.shape[1:]).movedim(1, axis + 1)
    if out.shape[1:] != torch.Size(new_shape):
        out = F.interpolate(out[None], new_shape, mode=aniso_axis_mode, antialias=False)[0]
    return out


class Resampler:
    """``fn(x, new_shape, spacing, new_spacing)``: a plans entry such as ``resampling_fn_data`` with its
    keyword arguments (a class, not a closure, so a model holding it can be pickled)."""

    def __init__(self, fn, kwargs: dict):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, x: torch.Tensor, new_shape, spacing, new_spacing) -> torch.Tensor:
        return self.fn(x, new_shape, spacing, new_spacing, **self.kwargs)


def resampler(name: str, kwargs: dict | None) -> Resampler:
    """The :class:`Resampler` for a plans entry, after checking its name and arguments."""
    kwargs = dict(kwargs or {})
    if name == "resample_data_or_seg_to_shape":
        allowed = {"is_seg", "order", "order_z", "force_separate_z"}
        fn = resample_default
    elif name == "resample_torch_fornnunet":
        allowed = {"is_seg", "force_separate_z", "mode", "aniso_axis_mode", "num_threads", "device",
                   "memefficient_seg_resampling", "separate_z_anisotropy_threshold"}
        fn = resample_torch
    else:
        raise ModelError(f"plans: resampling function {name!r} is not supported; "
                         f"known: {', '.join(RESAMPLING_FUNCTIONS)}")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ModelError(f"plans: {name} arguments {unknown} are not supported")
    if kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD) != ANISO_THRESHOLD:
        raise ModelError(f"plans: {name} with an anisotropy threshold other than {ANISO_THRESHOLD} is not supported")
    kwargs = {k: v for k, v in kwargs.items() if k in ("is_seg", "order", "order_z", "force_separate_z", "mode",
                                                       "aniso_axis_mode")}
    return Resampler(fn, kwargs)
