"""What a model is to napari-medadv: a ``torch.nn.Module`` plus a declaration of what it expects.

Attacks work in the image's **native intensities** (ε is a fraction of each channel's range), so
every model is wrapped as ``native image -> normalisation -> network`` (:class:`NativeInputModel`):
gradients flow back to native units and the perturbation is applied where the user sees it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

TASKS = ("segmentation", "classification")
OUTPUTS = ("softmax", "sigmoid", "probabilities")
NORMALIZATIONS = ("none", "zscore", "zscore-nonzero", "minmax", "fixed")

#: MONAI BraTS bundle convention: sigmoid channels tumor core, whole tumor, enhancing tumor.
BRATS_REGION_NAMES = ("TC", "WT", "ET")


@dataclass
class ModelInfo:
    """Declaration of a model's contract. Read from a JSON sidecar, bundle metadata or flags.

    Attributes:
        task: "segmentation" or "classification".
        spatial_dims: 2 or 3.
        in_channels: number of input channels (e.g. 4 for T1/T1Gd/T2/FLAIR).
        channel_names: optional names of the input channels, in order.
        normalization: how native intensities become network input: "none", "zscore" (per
            channel over the whole image), "zscore-nonzero" (per channel over non-zero voxels,
            as MONAI's NormalizeIntensity(nonzero=True) for BraTS), "minmax" (per channel to
            [0, 1]), or "fixed" with ``norm_mean``/``norm_std`` per channel.
        output: "softmax" (logits over classes), "sigmoid" (independent channels: multi-label
            findings or overlapping regions) or "probabilities" (already activated).
        label_values: segmentation with softmax — label value of each output index
            (BraTS: ``[0, 1, 2, 4]``).
        region_names: segmentation with sigmoid — names of the channels (BraTS bundle:
            ``["TC", "WT", "ET"]``, converted to labels {1, 2, 4} for display and Dice).
        class_names: classification — one name per output.
        roi_size: input size the network was trained on; other sizes are processed with
            MONAI's sliding-window inference (segmentation) or resized inside the model
            (classification), so the attack always perturbs the image at its own resolution.
        spacing: voxel size (mm) the network was trained at; an image with another spacing is
            resampled to it inside the model and the output resampled back (differentiable).
        size_divisible: every spatial size must be a multiple of this (UNet strides).
        name, description: for display.
    """

    task: str
    spatial_dims: int
    in_channels: int
    output: str = "softmax"
    normalization: str = "none"
    norm_mean: list[float] | None = None
    norm_std: list[float] | None = None
    channel_names: list[str] | None = None
    label_values: list[int] | None = None
    region_names: list[str] | None = None
    class_names: list[str] | None = None
    roi_size: list[int] | None = None
    spacing: list[float] | None = None
    size_divisible: int = 1
    name: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ModelError(f"model task must be one of {TASKS}, got {self.task!r}")
        if self.spatial_dims not in (2, 3):
            raise ModelError(f"model spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ModelError(f"model in_channels must be a positive integer, got {self.in_channels!r}")
        if self.output not in OUTPUTS:
            raise ModelError(f"model output must be one of {OUTPUTS}, got {self.output!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ModelError(f"model normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.normalization == "fixed":
            for name in ("norm_mean", "norm_std"):
                v = getattr(self, name)
                if v is None or len(v) != self.in_channels:
                    raise ModelError(f"normalization 'fixed' needs {name} with {self.in_channels} values")
        if self.channel_names is not None and len(self.channel_names) != self.in_channels:
            raise ModelError(f"channel_names has {len(self.channel_names)} names for {self.in_channels} channels")
        if self.task == "segmentation" and self.output == "softmax" and self.label_values is None:
            self.label_values = None  # identity: output index = label value (filled in by n_outputs)
        if self.roi_size is not None and len(self.roi_size) != self.spatial_dims:
            raise ModelError(f"roi_size {self.roi_size} does not have {self.spatial_dims} entries")
        if self.spacing is not None and (len(self.spacing) != self.spatial_dims or min(self.spacing) <= 0):
            raise ModelError(f"spacing {self.spacing} must have {self.spatial_dims} positive entries")

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"unknown model metadata keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelInfo:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model metadata JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ModelError) as exc:
            raise ModelError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    # --------------------------------------------------------------- label conventions
    def output_labels(self, n_outputs: int) -> list[int]:
        """Label value of each softmax output index."""
        if self.label_values is not None:
            if len(self.label_values) != n_outputs:
                raise ModelError(
                    f"model declares {len(self.label_values)} label values but outputs {n_outputs} channels"
                )
            return list(self.label_values)
        return list(range(n_outputs))


class Normalize(nn.Module):
    """Differentiable intensity normalisation ``native -> network input`` (per sample, per channel)."""

    def __init__(self, info: ModelInfo):
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
        # zscore over non-zero voxels (background stays 0), as MONAI NormalizeIntensity(nonzero=True)
        mask = (x != 0).to(x.dtype)
        n = mask.sum(dims, keepdim=True).clamp_min(1.0)
        mean = (x * mask).sum(dims, keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(dims, keepdim=True) / n
        return (x - mean) / var.sqrt().clamp_min(1e-8) * mask

    # Statistics are recomputed on the (perturbed) input, as the deployed pipeline would do;
    # that keeps the attack honest about the whole pre-processing chain.


class NativeInputModel(nn.Module):
    """``native image -> Normalize -> [resample] -> network [sliding window] -> [resample back]``.

    What the attacks see: a differentiable function of the image in its own intensities and on
    its own grid. Resampling (``F.interpolate``) and MONAI's sliding-window inference are both
    differentiable, so the perturbation is computed for the image the user loaded.
    """

    def __init__(self, net: nn.Module, info: ModelInfo, *, sliding_window: bool = True, overlap: float = 0.25):
        super().__init__()
        self.net = net
        self.info = info
        self.normalize = Normalize(info)
        self.sliding_window = sliding_window
        self.overlap = overlap
        self.input_spacing: tuple[float, ...] | None = None

    def set_input_spacing(self, spacing) -> None:
        """Voxel size of the images about to be passed (from their geometry); None to forget."""
        self.input_spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def _resample_size(self, shape) -> tuple[int, ...] | None:
        if self.info.spacing is None or self.input_spacing is None:
            return None
        if len(self.input_spacing) != len(shape):
            return None
        ratio = [a / b for a, b in zip(self.input_spacing, self.info.spacing)]
        if all(abs(r - 1) < 0.05 for r in ratio):
            return None
        return tuple(max(1, round(n * r)) for n, r in zip(shape, ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        z = self.normalize(x)
        mode = "bilinear" if z.ndim == 4 else "trilinear"
        if self.info.task == "classification":
            roi = self.info.roi_size
            if roi is not None and tuple(z.shape[2:]) != tuple(roi):
                z = F.interpolate(z, size=tuple(roi), mode=mode, align_corners=False, antialias=z.ndim == 4)
            return self.net(z)
        size = self._resample_size(z.shape[2:])
        if size is None:
            return self._segment(z)
        out = self._segment(F.interpolate(z, size=size, mode=mode, align_corners=False))
        return F.interpolate(out, size=tuple(x.shape[2:]), mode=mode, align_corners=False)

    def _segment(self, z: torch.Tensor) -> torch.Tensor:
        roi = self.info.roi_size
        if (
            self.sliding_window
            and roi is not None
            and tuple(z.shape[2:]) != tuple(roi)
        ):
            # larger images are tiled; smaller ones are padded to the ROI by MONAI
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(z, roi_size=roi, sw_batch_size=1, predictor=self.net,
                                            overlap=self.overlap, mode="gaussian")
        return self.net(z)


@dataclass
class LoadedModel:
    """A ready-to-use model: the native-input module, its declaration and where it came from."""

    module: NativeInputModel
    info: ModelInfo
    spec: str
    checksum: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def to(self, device: str | torch.device) -> LoadedModel:
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    # --------------------------------------------------------------- checks and conversions
    def check_image(self, array: np.ndarray, source: str = "image") -> None:
        """Raise a clear ModelError when an image (``C *spatial``) does not fit the model."""
        if array.ndim != self.info.spatial_dims + 1:
            raise ModelError(
                f"{source}: the model {self.spec} takes {self.info.spatial_dims}-D images with "
                f"{self.info.in_channels} channel(s); got an array of shape {tuple(array.shape)}"
            )
        if array.shape[0] != self.info.in_channels:
            names = f" ({', '.join(self.info.channel_names)})" if self.info.channel_names else ""
            raise ModelError(
                f"{source}: the model {self.spec} expects {self.info.in_channels} channel(s){names} "
                f"but the image has {array.shape[0]}"
            )
        d = self.info.size_divisible
        if d > 1 and any(s % d for s in array.shape[1:]) and self.info.roi_size is None:
            raise ModelError(f"{source}: every spatial size must be a multiple of {d}; got {tuple(array.shape[1:])}")

    def to_batch(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=self.device)[None]

    @torch.no_grad()
    def forward(self, array_or_batch) -> torch.Tensor:
        x = array_or_batch if isinstance(array_or_batch, torch.Tensor) else self.to_batch(array_or_batch)
        self.module.eval()
        return self.module(x.to(self.device))

    def activation(self) -> str:
        """The ``activation`` argument the attacks/losses need for this model's outputs."""
        return {"softmax": "softmax", "sigmoid": "sigmoid", "probabilities": "none"}[self.info.output]

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        if self.info.output == "softmax":
            return torch.softmax(output, 1)
        if self.info.output == "sigmoid":
            return torch.sigmoid(output)
        return output

    def to_label_map(self, output: torch.Tensor) -> np.ndarray:
        """Segmentation output ``B K *spatial`` -> label values ``B *spatial`` (numpy)."""
        if self.info.task != "segmentation":
            raise ModelError(f"{self.spec} is a classifier; it has no label map")
        if self.info.output == "sigmoid" or (self.info.output == "probabilities" and self.info.region_names):
            probs = self.probabilities(output)
            return regions_to_labels(probs.cpu().numpy() > 0.5, self.info.region_names or list(BRATS_REGION_NAMES))
        values = np.asarray(self.info.output_labels(output.shape[1]))
        return values[output.argmax(1).cpu().numpy()]

    def label_map_to_target(self, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Ground-truth label values -> what the loss compares outputs with (``B *spatial``).

        Softmax models get class indices; sigmoid-region models get multi-hot region channels.
        Unknown label values raise ModelError naming them.
        """
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.ndim == self.info.spatial_dims:
            lab = lab[None]
        if self.info.output == "sigmoid" or self.info.region_names:
            names = self.info.region_names or list(BRATS_REGION_NAMES)
            return torch.as_tensor(labels_to_regions(lab, names), dtype=torch.float32, device=self.device)
        values = self.info.label_values
        if values is None:
            return torch.as_tensor(lab.astype(np.int64), device=self.device)
        lut = {v: i for i, v in enumerate(values)}
        present = set(np.unique(lab).tolist())
        unknown = sorted(present - set(lut))
        if unknown:
            raise ModelError(f"label values {unknown} are not among the model's labels {values}")
        idx = np.zeros(lab.shape, dtype=np.int64)
        for v, i in lut.items():
            idx[lab == v] = i
        return torch.as_tensor(idx, device=self.device)

    def label_value_to_index(self, value: int) -> int:
        """A label *value* (e.g. BraTS 4) -> the output index the attacks target."""
        values = self.info.label_values
        if values is None:
            return int(value)
        if value not in values:
            raise ModelError(f"label {value} is not one of the model's labels {values}")
        return values.index(value)


REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def labels_to_regions(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """BraTS labels ``B *spatial`` -> multi-hot region channels ``B R *spatial``."""
    out = []
    for n in names:
        if n not in REGION_LABELS:
            raise ModelError(f"unknown region {n!r}; known: {sorted(REGION_LABELS)}")
        out.append(np.isin(labels, REGION_LABELS[n]))
    return np.stack(out, 1).astype(np.float32)


def regions_to_labels(regions: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Binary region channels ``B R *spatial`` -> BraTS labels: WT→2, TC→1, ET→4 (nested)."""
    idx = {n: i for i, n in enumerate(names)}
    out = np.zeros((regions.shape[0],) + regions.shape[2:], dtype=np.int16)
    for name, value in (("WT", 2), ("TC", 1), ("ET", 4)):
        if name in idx:
            out[regions[:, idx[name]]] = value
    return out


def file_checksum(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
