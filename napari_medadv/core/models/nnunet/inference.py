"""nnU-Net v2's inference as one differentiable ``torch.nn.Module``: native image in, logits out.

:class:`NnUNetModel` runs, for each image of the batch, what ``nnUNetPredictor.predict_single_npy_array``
runs (``nnunetv2/inference/predict_from_raw_data.py``, ``preprocessing/preprocessors/
default_preprocessor.py``, ``inference/export_prediction.py``), step by step:

1. **axis order** of nnU-Net's image reader: a NIfTI array ``(i, j, k)`` becomes ``(k, j, i)``
   (SimpleITK's order; nnU-Net's ``NibabelIO`` transposes the same way), a DICOM series read here
   as ``(slice, row, column)`` already is in that order, ``NibabelIOWithReorient`` and
   ``SimpleITKIOWithReorient`` first reorient to RAS from the affine, a 2-D image gets a leading
   axis of one slice;
2. the plans' ``transpose_forward``;
3. **crop** to the bounding box of the voxels that are non-zero in any channel (``crop_to_nonzero``);
4. **normalisation** per channel, from the plans: ``ZScoreNormalization`` (over the whole crop, or
   with ``use_mask_for_norm`` over the hole-filled non-zero mask only, the rest left as it is),
   ``CTNormalization`` (clip to the dataset's 0.5/99.5 percentiles, then the dataset's mean/std),
   ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``;
5. **resampling** to the configuration's spacing (:mod:`.resample`: nnU-Net's order-3 spline,
   reproduced exactly, differentiably);
6. **sliding window** over the plans' patch size with step 0.5, each tile weighted by nnU-Net's
   Gaussian (σ = patch/8, peak 10, float16-quantised as nnU-Net's), padded to the patch where the
   image is smaller; 2-D configurations slide over every slice of axis 0;
7. **mirroring** test-time augmentation over the checkpoint's ``inference_allowed_mirroring_axes``
   (every combination, logits averaged; the attack then differentiates through all mirrors), and
   the mean of the **folds'** logits (nnU-Net averages logits over folds, then applies the softmax);
8. logits **resampled back** (order 1) to the crop, **uncropped** (outside: background; logits
   ``0`` for background and ``-50`` for the rest, ``-50`` for every region), transposed back.

The only differences from nnU-Net: everything is float32 (nnU-Net accumulates the tiles in
float16) and this module returns logits where nnU-Net returns probabilities after a softmax or
sigmoid. The crop box and the mask for ``use_mask_for_norm`` are recomputed from each input (as
nnU-Net would on the perturbed image) but are not differentiated (they are index sets).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelError
from ..base import ModelInfo, NativeInputModel
from .folder import REORIENTING_READERS
from .resample import compute_new_shape

#: logit of the classes that are not background (and of every region) outside the crop box
OUTSIDE_LOGIT = -50.0


@dataclass
class Plan:
    """What inference needs from the plans, dataset.json and the checkpoints (nnU-Net array order)."""

    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    schemes: tuple[str, ...]
    use_mask: tuple[bool, ...]
    intensity: tuple[dict | None, ...]
    resample_data: object
    resample_probabilities: object
    reader: str
    image_dims: int
    mirror_axes: tuple[int, ...] | None
    regions: bool
    n_outputs: int
    tile_step_size: float = 0.5


@lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, ...]) -> torch.Tensor:
    """nnU-Net's ``compute_gaussian(patch, sigma_scale=1/8, value_scaling_factor=10)`` in float16, as float32."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(patch)
    tmp[tuple(i // 2 for i in patch)] = 1
    g = gaussian_filter(tmp, [i / 8 for i in patch], 0, mode="constant", cval=0)
    g /= np.max(g) / 10
    g16 = torch.from_numpy(g).to(torch.float16)
    zero = g16 == 0
    if zero.any():
        g16[zero] = torch.min(g16[~zero])
    return g16.float()


def sliding_window_steps(image_size: Sequence[int], patch: Sequence[int], step: float) -> list[list[int]]:
    """nnU-Net's ``compute_steps_for_sliding_window``."""
    out = []
    for size, tile in zip(image_size, patch):
        n = int(np.ceil((size - tile) / (tile * step))) + 1
        actual = (size - tile) / (n - 1) if n > 1 else 99999999999
        out.append([int(np.round(actual * i)) for i in range(n)])
    return out


def nonzero_bbox(nonzero: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open bounding box of a boolean mask (the whole array when it is empty), as acvl_utils'."""
    box = []
    for a in range(nonzero.ndim):
        proj = nonzero.any(dim=tuple(d for d in range(nonzero.ndim) if d != a)) if nonzero.ndim > 1 else nonzero
        idx = torch.nonzero(proj).flatten()
        box.append((int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, int(nonzero.shape[a])))
    return box


def _slices(box) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in box)


class NnUNetModel(NativeInputModel):
    """``native image -> [channel order] -> nnU-Net's preprocessing, sliding window, TTA, folds -> logits``.

    Attributes a caller may change: ``use_mirroring`` (mirroring TTA, on by default as in
    nnU-Net), ``window_batch`` (tiles per network call), ``checkpoint`` (while gradients are taken,
    each network call is recomputed in the backward pass instead of keeping its activations:
    memory for one call instead of folds x mirrors x tiles of them; neither changes the result).
    """

    def __init__(self, nets: Sequence[nn.Module], plan: Plan, info: ModelInfo, use_mirroring: bool = True):
        super().__init__(nn.ModuleList(nets), info)
        self.plan = plan
        self.use_mirroring = use_mirroring
        self.window_batch = 1 if len(plan.patch_size) == 3 else 8
        self.checkpoint = True
        self.input_kind: str | None = None
        self.input_affine: np.ndarray | None = None
        self._mask_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ where the image comes from
    def set_input_geometry(self, geometry, kind: str | None = None) -> None:
        """The image's grid (a :class:`~napari_medadv.core.io.Geometry`) and reader kind: spacing for
        the resampling, kind and affine for nnU-Net's axis order; None forgets them."""
        super().set_input_geometry(geometry, kind)
        self.input_affine = None if geometry is None else np.asarray(geometry.affine, dtype=float)
        self.input_kind = kind

    def layout(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
        """``(flipped axes, permutation, add a leading axis)`` taking this image's array to nnU-Net's."""
        if ndim == 2:
            return (), (0, 1), True
        if self.plan.reader in REORIENTING_READERS and self.input_affine is not None:
            from nibabel.orientations import io_orientation

            ornt = io_orientation(self.input_affine)
            flips = tuple(i for i in range(3) if ornt[i, 1] == -1)
            return flips, tuple(int(p) for p in np.argsort(ornt[:, 0])[::-1]), False
        if self.plan.reader == "Tiff3DIO" or self.input_kind == "dicom-series":
            return (), (0, 1, 2), False
        return (), (2, 1, 0), False

    def _nnunet_spacing(self, perm: tuple[int, ...], added: bool) -> list[float] | None:
        sp = self.input_spacing
        if sp is None or len(sp) != len(perm):
            return None
        if added:
            return [999.0, 1.0, 1.0] if self.plan.reader == "NaturalImage2DIO" else [999.0 * max(sp), *sp]
        return [abs(float(sp[p])) for p in perm]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.select_channels(x)
        if x.shape[1] != len(self.plan.schemes):
            raise ModelError(f"the nnU-Net model takes {len(self.plan.schemes)} channel(s), got {x.shape[1]}")
        return torch.stack([self._predict_case(x[b]) for b in range(x.shape[0])])

    def _predict_case(self, img: torch.Tensor) -> torch.Tensor:
        flips, perm, added = self.layout(img.ndim - 1)
        flips = [f + 1 for f in flips]  # spatial axes -> axes of C *spatial
        x = img.flip(flips) if flips else img
        x = x.permute(0, *[p + 1 for p in perm])
        if added:
            x = x[:, None]
        sp = self._nnunet_spacing(perm, added)
        tf = self.plan.transpose_forward
        x = x.permute(0, *[t + 1 for t in tf])
        out = self._predict_transposed(x, None if sp is None else [sp[t] for t in tf])
        out = out.permute(0, *[t + 1 for t in self.plan.transpose_backward])
        if added:
            out = out[:, 0]
        out = out.permute(0, *[int(i) + 1 for i in np.argsort(perm)])
        return out.flip(flips) if flips else out

    def _predict_transposed(self, x: torch.Tensor, spacing: list[float] | None) -> torch.Tensor:
        plan = self.plan
        nonzero = (x.detach() != 0).any(0)
        box = nonzero_bbox(nonzero)
        crop = x[(slice(None), *_slices(box))]
        mask = self._norm_mask(nonzero, box) if self._needs_mask() else None
        z = self.normalize_channels(crop, mask)
        shape = tuple(crop.shape[1:])
        target = list(plan.spacing) if len(plan.spacing) == len(shape) else [None, *plan.spacing]
        if spacing is None:  # no geometry given: the image is taken to be at the plans' spacing
            spacing = [1.0 if t is None else t for t in target]
        target = [spacing[0] if t is None else t for t in target]
        z = plan.resample_data(z, compute_new_shape(shape, spacing, target), spacing, target)
        logits = self.predict_windows(z)
        logits = plan.resample_probabilities(logits, shape, target, spacing)
        return self._uncrop(logits, box, tuple(x.shape[1:]))

    # ------------------------------------------------------------------ normalisation
    def _needs_mask(self) -> bool:
        return any(s == "ZScoreNormalization" and m for s, m in zip(self.plan.schemes, self.plan.use_mask))

    def _norm_mask(self, nonzero: torch.Tensor, box) -> torch.Tensor:
        """``crop_to_nonzero``'s mask: non-zero in any channel, holes filled (cached for an unchanged mask)."""
        cached = self._mask_cache
        if cached is None or cached[0].shape != nonzero.shape or cached[0].device != nonzero.device \
                or not torch.equal(cached[0], nonzero):
            from scipy.ndimage import binary_fill_holes

            filled = torch.from_numpy(binary_fill_holes(nonzero.cpu().numpy())).to(nonzero.device)
            self._mask_cache = cached = (nonzero.clone(), filled)
        return cached[1][_slices(box)]

    def normalize_channels(self, crop: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """nnU-Net's per-channel normalisation schemes on the cropped image (``C *spatial``)."""
        out = []
        for c in range(crop.shape[0]):
            v, scheme, props = crop[c], self.plan.schemes[c], self.plan.intensity[c] or {}
            if scheme == "ZScoreNormalization":
                if self.plan.use_mask[c] and mask is not None:
                    m = mask.to(v.dtype)
                    n = m.sum().clamp_min(1.0)
                    mean = (v * m).sum() / n
                    std = (((v - mean) ** 2 * m).sum() / n).clamp_min(1e-16).sqrt()
                    out.append(torch.where(mask, (v - mean) / std, v))
                else:
                    mean = v.mean()
                    std = ((v - mean) ** 2).mean().clamp_min(1e-16).sqrt()
                    out.append((v - mean) / std)
            elif scheme == "CTNormalization":
                v = v.clamp(float(props["percentile_00_5"]), float(props["percentile_99_5"]))
                out.append((v - float(props["mean"])) / max(float(props["std"]), 1e-8))
            elif scheme == "RescaleTo01Normalization":
                lo = v.min()
                out.append((v - lo) / (v.max() - lo).clamp_min(1e-8))
            elif scheme == "RGBTo01Normalization":
                out.append(v / 255.0)
            else:  # NoNormalization
                out.append(v)
        return torch.stack(out)

    # ------------------------------------------------------------------ sliding window
    def predict_windows(self, data: torch.Tensor) -> torch.Tensor:
        """Gaussian-weighted tiles over ``data`` (``C *spatial``, normalised, at the plans' spacing) ->
        logits ``K *spatial`` (nnU-Net's ``predict_sliding_window_return_logits``)."""
        patch = tuple(self.plan.patch_size)
        nd = len(patch)
        lead = data.ndim - 1 - nd
        old = data.shape[1:]
        new = [max(p, s) for p, s in zip(patch, old[lead:])]
        below = [(n - s) // 2 for n, s in zip(new, old[lead:])]
        pads = []
        for b, n, s in zip(below[::-1], new[::-1], old[lead:][::-1]):
            pads += [b, n - s - b]
        data = F.pad(data, pads) if any(pads) else data
        size = data.shape[1:]
        steps = sliding_window_steps(size[lead:], patch, self.plan.tile_step_size)
        windows = [(*lead_idx, *[slice(s, s + p) for s, p in zip(starts, patch)])
                   for lead_idx in itertools.product(*[range(n) for n in size[:lead]])
                   for starts in itertools.product(*steps)]
        gauss = gaussian_weights(patch).to(device=data.device, dtype=data.dtype)
        pred = torch.zeros((self.plan.n_outputs, *size), dtype=data.dtype, device=data.device)
        weight = torch.zeros(size, dtype=data.dtype, device=data.device)
        for i in range(0, len(windows), self.window_batch):
            chunk = windows[i:i + self.window_batch]
            tiles = torch.stack([data[(slice(None), *w)] for w in chunk])
            out = self.predict_tiles(tiles) * gauss
            for j, w in enumerate(chunk):
                pred[(slice(None), *w)] += out[j]
                weight[w] += gauss
        logits = pred / weight
        return logits[(slice(None), *[slice(None)] * lead,
                       *[slice(b, b + s) for b, s in zip(below, old[lead:])])]

    def predict_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """Mean over folds of the (mirrored) network logits of a batch of tiles."""
        total = None
        for net in self.net:
            out = self._mirrored(net, tiles)
            total = out if total is None else total + out
        return total / len(self.net)

    def _call(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled() and x.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(net, x, use_reentrant=False)
        return net(x)

    def _mirrored(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        pred = self._call(net, x)
        axes = self.plan.mirror_axes if self.use_mirroring else None
        if not axes:
            return pred
        if max(axes) > x.ndim - 3:
            raise ModelError(f"mirroring axes {axes} do not fit {x.ndim - 2}-D tiles")
        dims = [a + 2 for a in axes]
        combos = [c for k in range(len(dims)) for c in itertools.combinations(dims, k + 1)]
        for c in combos:
            pred = pred + torch.flip(self._call(net, torch.flip(x, c)), c)
        return pred / (len(combos) + 1)

    # ------------------------------------------------------------------ back to the image
    def _uncrop(self, logits: torch.Tensor, box, full: tuple[int, ...]) -> torch.Tensor:
        if all(lo == 0 and hi == n for (lo, hi), n in zip(box, full)):
            return logits
        pads = []
        for (lo, hi), n in zip(box[::-1], full[::-1]):
            pads += [lo, n - hi]
        out = F.pad(logits, pads)
        outside = torch.ones(full, dtype=logits.dtype, device=logits.device)
        outside[_slices(box)] = 0
        fill = torch.full((logits.shape[0],), OUTSIDE_LOGIT, dtype=logits.dtype, device=logits.device)
        if not self.plan.regions:
            fill[0] = 0.0
        return out + fill.reshape(-1, *[1] * len(full)) * outside
