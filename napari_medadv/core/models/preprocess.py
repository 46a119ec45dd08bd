"""Liu et al. 2021's preprocessing as an optional step inside the wrapped model: N4 bias-field
correction (SimpleITK, the library made for it) and resizing to 128³.

It runs *inside* :class:`~.base.NativeInputModel`, so an attack still perturbs the image the
user loaded. N4 is an iterative fit, not a differentiable function of the image, so the field is
estimated once per image on the **clean** image (:meth:`BiasField.prepare`) and then held fixed:
the model sees ``x / field``, which is differentiable in ``x``. An adversarial image is therefore
corrected with the clean image's field — what a pipeline that re-estimated N4 on every input
would do only approximately (the field is smooth and the perturbation small, so a re-fit moves it
little; that approximation is the price of exact gradients and is stated in record.json's model
info). The resize (``F.interpolate``, trilinear) is differentiable and done in the forward pass.

Switch it on with ``load_model(spec, preprocess="liu")`` / ``medadv attack --preprocess liu`` /
the Model dock's "Liu preprocessing" box; the model info then carries ``bias_correction="n4"``
and ``resize_to=[128, 128, 128]``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..errors import ModelError

#: ``load_model(..., preprocess=NAME)``: the model-info fields each preprocessing sets
PREPROCESSING = {"liu": {"bias_correction": "n4", "resize_to": [128, 128, 128]}}
#: the N4 fit runs on the image shrunk by this factor per axis (SimpleITK's usual speed-up)
N4_SHRINK = 2
N4_ITERATIONS = (50, 50, 30, 20)


def preprocessing_fields(name: str | None, spatial_dims: int) -> dict:
    """The model-info overrides for a preprocessing name (None: none)."""
    if name in (None, "", "none"):
        return {}
    if name not in PREPROCESSING:
        raise ModelError(f"unknown preprocessing {name!r}; known: none, {', '.join(PREPROCESSING)}")
    if spatial_dims != 3:
        raise ModelError(f"{name} preprocessing (N4 + resize to 128³) is for 3-D MR models, not {spatial_dims}-D ones")
    return dict(PREPROCESSING[name])


def n4_field(volume: np.ndarray) -> np.ndarray:
    """The multiplicative N4 bias field of one 3-D volume (``volume / field`` is corrected),
    fitted on the non-zero voxels (skull-stripped MR), or on all of them when none is zero."""
    import SimpleITK as sitk  # deferred: only models with N4 need it

    vol = np.asarray(volume, dtype=np.float32)
    lo = float(vol.min())
    shifted = vol - lo + 1.0 if lo <= 0 else vol  # N4 fits a log: intensities must be positive
    img = sitk.GetImageFromArray(shifted)
    mask_arr = (vol != 0) if np.any(vol == 0) and np.any(vol != 0) else np.ones(vol.shape, bool)
    mask = sitk.GetImageFromArray(mask_arr.astype(np.uint8))
    small, small_mask = sitk.Shrink(img, [N4_SHRINK] * 3), sitk.Shrink(mask, [N4_SHRINK] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    n4.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).astype(np.float32)
    field = np.exp(log_field)  # fitted on the (shifted) positive intensities: the field's shape is what counts
    return np.where(mask_arr, field, 1.0).astype(np.float32)


class BiasField:
    """The fixed N4 fields of the images a model sees, per image (keyed by its content)."""

    def __init__(self):
        self.key: tuple | None = None
        self.field: torch.Tensor | None = None

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        a = x.detach().float().cpu().numpy()
        return tuple(a.shape), hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()

    def prepare(self, x: torch.Tensor) -> None:
        """Fit the field of the clean image ``x`` (``1 C *spatial``, the model's input channels)
        unless it is the image fitted last."""
        key = self._key(x)
        if key == self.key:
            return
        vols = x.detach().float().cpu().numpy()[0]
        field = np.stack([n4_field(v) for v in vols])[None]
        self.field = torch.from_numpy(field).to(x.device)
        self.key = key

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """``z / field``; an image of a grid no clean image was prepared for gets its own field
        first (so a model used without :meth:`prepare` still corrects)."""
        if self.field is None or tuple(self.field.shape[2:]) != tuple(z.shape[2:]) or self.field.shape[1] != z.shape[1]:
            self.prepare(z[:1])
        return z / self.field.to(device=z.device, dtype=z.dtype)
