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

from ..brats import BRATS_LABEL_NAMES, BRATS_REGION_NAMES, BRATS_REGIONS
from ..errors import ModelError
from ..metrics import channel_argmax
from .channels import ChannelMapping, ChannelMismatch, match_channels
from .normalize import Normalize

TASKS = ("segmentation", "classification")
OUTPUTS = ("softmax", "sigmoid", "probabilities")
NORMALIZATIONS = ("none", "zscore", "zscore-nonzero", "minmax", "fixed")




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
        region_labels: regions other than BraTS's (nnU-Net region models, e.g. KiTS): the label
            values each region covers, ``{"kidney_and_masses": [1, 2, 3], "masses": [2, 3],
            "tumor": [2]}``; the label map paints region ``i`` (in ``region_names`` order) with
            ``label_values[i]`` where its probability passes 0.5, later regions over earlier ones
            (nnU-Net's ``regions_class_order``).
        label_names: segmentation — a name per label value (``{"1": "brain"}``), used for per-label
            Dice everywhere. BraTS tumour regions (WT/TC/ET) are reported only for models that
            declare the BraTS labels {1, 2, 4} or TC/WT/ET region outputs.
        class_names: classification — one name per output.
        output_index / output_key: for a network that returns a tuple/list (deep supervision,
            auxiliary heads) or a dict, which element is the prediction. Without them: the only
            tensor, else the only one at the input's resolution (tuple) or the ``pred``/``out``/
            ``logits`` entry (dict); anything else is refused as ambiguous.
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
    region_labels: dict[str, list[int]] | None = None
    class_names: list[str] | None = None
    label_names: dict[str, str] | None = None
    output_index: int | None = None
    output_key: str | None = None
    roi_size: list[int] | None = None
    spacing: list[float] | None = None
    size_divisible: int = 1
    bias_correction: str | None = None
    resize_to: list[int] | None = None
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
        if self.label_names is not None:
            if isinstance(self.label_names, (list, tuple)):  # one name per output index
                self.label_names = {str(i): str(n) for i, n in enumerate(self.label_names)}
            if not isinstance(self.label_names, dict):
                raise ModelError(f'label_names must map label values to names, e.g. {{"1": "brain"}}; '
                                 f"got {self.label_names!r}")
            try:
                self.label_names = {str(int(k)): str(v) for k, v in self.label_names.items()}
            except (TypeError, ValueError):
                raise ModelError(f"label_names keys must be label values (integers); got {sorted(self.label_names)}") from None
        if self.region_labels is not None:
            self._check_region_labels()
        if self.output_index is not None and not isinstance(self.output_index, int):
            raise ModelError(f"output_index must be an integer, got {self.output_index!r}")
        if self.roi_size is not None and len(self.roi_size) != self.spatial_dims:
            raise ModelError(f"roi_size {self.roi_size} does not have {self.spatial_dims} entries")
        if self.spacing is not None and (len(self.spacing) != self.spatial_dims or min(self.spacing) <= 0):
            raise ModelError(f"spacing {self.spacing} must have {self.spatial_dims} positive entries")
        if self.bias_correction not in (None, "n4"):
            raise ModelError(f"bias_correction must be null or 'n4', got {self.bias_correction!r}")
        if self.resize_to is not None and (len(self.resize_to) != self.spatial_dims or min(self.resize_to) < 1):
            raise ModelError(f"resize_to {self.resize_to} must have {self.spatial_dims} positive sizes")

    def _check_region_labels(self) -> None:
        names = list(self.region_names or [])
        if not isinstance(self.region_labels, dict) or sorted(self.region_labels) != sorted(names):
            raise ModelError(f"region_labels must give the label values of every region in region_names {names}; "
                             f"got {self.region_labels!r}")
        try:
            self.region_labels = {str(k): [int(v) for v in vals] for k, vals in self.region_labels.items()}
        except (TypeError, ValueError):
            raise ModelError(f"region_labels values must be lists of label values; "
                             f"got {self.region_labels!r}") from None
        if self.label_values is None or len(self.label_values) != len(names):
            raise ModelError(f"with region_labels, label_values gives the label painted for each region "
                             f"({len(names)} values); got {self.label_values!r}")

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
    def sigmoid_regions(self, n_outputs: int) -> list[str] | None:
        """Region names of a sigmoid (or probability) segmentation output with ``n_outputs`` channels:
        the declared ``region_names``, or TC/WT/ET for an undeclared 3-channel sigmoid output (the
        MONAI BraTS bundle convention); None when the channels are plain labels 1..K."""
        if self.task != "segmentation":
            return None
        if self.region_names:
            return list(self.region_names)
        if self.output == "sigmoid" and n_outputs == 3 and not self.label_names:
            return list(BRATS_REGION_NAMES)
        return None

    def region_table(self) -> dict[str, tuple[int, ...]]:
        """Region name -> the label values it covers (``region_labels``, else BraTS's WT/TC/ET)."""
        if self.region_labels:
            return {k: tuple(v) for k, v in self.region_labels.items()}
        return dict(BRATS_REGIONS)

    def region_label_values(self, n_outputs: int) -> list[int]:
        """Label values (with 0) of a region model's label map."""
        if self.region_labels:
            return sorted({0, *[int(v) for vals in self.region_labels.values() for v in vals]})
        return [0, *sorted({v for vals in BRATS_REGIONS.values() for v in vals})]

    def brats_regions(self, n_outputs: int | None = None) -> bool:
        """True when WT/TC/ET Dice means something: BraTS labels {1, 2, 4} or TC/WT/ET region outputs."""
        if self.task != "segmentation":
            return False
        if self.region_labels and any(tuple(v) != BRATS_REGIONS.get(k) for k, v in self.region_labels.items()):
            return False
        if self.output in ("sigmoid", "probabilities") and (self.region_names or self.output == "sigmoid"):
            regions = self.region_names or (self.sigmoid_regions(n_outputs) if n_outputs else None)
            return bool(regions) and set(regions) <= set(BRATS_REGION_NAMES)
        return self.label_values is not None and set(self.label_values) - {0} == {1, 2, 4}

    def label_name(self, value: int) -> str:
        """Display name of a label value: ``label_names``, the BraTS names, or the value itself."""
        if self.label_names and str(int(value)) in self.label_names:
            return self.label_names[str(int(value))]
        if self.brats_regions(3) and int(value) in BRATS_LABEL_NAMES:
            return BRATS_LABEL_NAMES[int(value)]
        return str(int(value))

    def output_labels(self, n_outputs: int) -> list[int]:
        """Label value of each softmax output index."""
        if self.label_values is not None:
            if len(self.label_values) != n_outputs:
                raise ModelError(
                    f"model declares {len(self.label_values)} label values but outputs {n_outputs} channels"
                )
            return list(self.label_values)
        return list(range(n_outputs))


def small_labels(values: np.ndarray) -> np.ndarray:
    """Label values in the smallest integer type that holds them (uint8 for BraTS' 0..4)."""
    values = np.asarray(values)
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if values.size == 0 or (info.min <= values.min() and values.max() <= info.max):
            return values.astype(dtype)
    return values.astype(np.int64)


def select_output(out, info: ModelInfo, like: torch.Tensor | None = None) -> torch.Tensor:
    """The prediction tensor of a network that may return a tuple/list or a dict.

    ``info.output_index`` / ``info.output_key`` say which element; without them: the only tensor;
    for a tuple/list the only element at the input's spatial size (deep supervision returns the
    full-resolution map beside coarser ones); for a dict the ``pred``/``out``/``logits`` entry.
    Anything else is refused as ambiguous, naming what the network returned.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if info.output_key is not None:
            if info.output_key not in out:
                raise ModelError(f"the network returned a dict with keys {sorted(map(str, out))}; "
                                 f"output_key {info.output_key!r} is not one of them")
            return _tensor(out[info.output_key], f"output {info.output_key!r}")
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        for key in ("pred", "out", "logits", "seg"):
            if key in tensors:
                return tensors[key]
        raise ModelError(f"the network returned a dict with keys {sorted(map(str, out))}; declare which one is "
                         "the prediction with output_key in the model's metadata")
    if isinstance(out, (tuple, list)):
        if info.output_index is not None:
            if not -len(out) <= info.output_index < len(out):
                raise ModelError(f"the network returned {len(out)} outputs; output_index {info.output_index} "
                                 "is out of range")
            return _tensor(out[info.output_index], f"output {info.output_index}")
        tensors = [(i, v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0][1]
        if like is not None and info.task == "segmentation":
            full = [v for _, v in tensors if v.ndim == like.ndim and tuple(v.shape[2:]) == tuple(like.shape[2:])]
            if len(full) == 1:
                return full[0]
        shapes = ", ".join(f"{i}: {tuple(v.shape)}" for i, v in tensors)
        raise ModelError(f"the network returned {len(out)} outputs ({shapes}); declare which one is the "
                         "prediction with output_index in the model's metadata")
    raise ModelError(f"the network returned a {type(out).__name__}, not a tensor")


def _tensor(v, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise ModelError(f"the network's {what} is a {type(v).__name__}, not a tensor")
    return v


class _Predictor(nn.Module):
    """The network as the rest of the chain needs it: one tensor out, never shared with autograd
    state that a later in-place write could spoil.

    MONAI's sliding-window inference accumulates each window's output into its result buffer in
    place after weighting (``*=``); a network whose graph ends in softmax/sigmoid saved that very
    tensor for its backward, so the in-place write breaks back-propagation. Only a windowed or
    resampled output goes on to such code, and there it is cloned first (one copy of a window).
    """

    def __init__(self, net: nn.Module, info: ModelInfo):
        super().__init__()
        # not a registered submodule: NativeInputModel owns the network (one copy in state_dict)
        object.__setattr__(self, "_net", net)
        self.info = info
        self.detach_safe = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = select_output(self._net(z), self.info, like=z)
        return out.clone() if self.detach_safe and out.requires_grad else out


class NativeInputModel(nn.Module):
    """``native image -> [channel order] -> Normalize -> [resample] -> network [sliding window] -> [resample back]``.

    What the attacks see: a differentiable function of the image in its own intensities, its own
    channel order and on its own grid. Channel selection/reordering (to the model's declared
    inputs), resampling (``F.interpolate``) and MONAI's sliding-window inference are all
    differentiable, so the perturbation is computed for the image the user loaded.
    """

    def __init__(self, net: nn.Module, info: ModelInfo, *, sliding_window: bool = True, overlap: float = 0.25):
        super().__init__()
        self.net = net
        self.info = info
        self.predictor = _Predictor(net, info)
        self.normalize = Normalize(info)
        self.sliding_window = sliding_window
        self.overlap = overlap
        self.input_spacing: tuple[float, ...] | None = None
        self.channel_order: tuple[int, ...] | None = None
        self.image_channels: int | None = None
        self.bias = None  # the fixed N4 fields (info.bias_correction, Liu's preprocessing)

    def prepare_image(self, x: torch.Tensor) -> None:
        """Called with each clean image before it is attacked (``1 C *spatial``, its own channels):
        a model with N4 correction fits the image's bias field here, then holds it fixed."""
        if self.info.bias_correction == "n4":
            from .preprocess import BiasField

            if self.bias is None:
                self.bias = BiasField()
            with torch.no_grad():
                self.bias.prepare(self.select_channels(x))

    def set_input_spacing(self, spacing) -> None:
        """Voxel size of the images about to be passed (from their geometry); None to forget."""
        self.input_spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def set_input_geometry(self, geometry, kind: str | None = None) -> None:
        """Grid of the images about to be passed (an :class:`~napari_medadv.core.io.Geometry`) and the
        reader ``kind`` that made them; None to forget. This wrapper uses the spacing; wrappers that
        follow a framework's own axis conventions (nnU-Net's) also use the affine and the kind."""
        self.set_input_spacing(None if geometry is None else geometry.spacing)

    def set_channel_order(self, order, n_image_channels: int | None = None) -> None:
        """Image channel fed to each model input (:class:`~.channels.ChannelMapping` ``order``);
        None (or the identity) feeds the image as it is."""
        if order is None or (tuple(order) == tuple(range(len(order))) and n_image_channels in (None, len(order))):
            self.channel_order, self.image_channels = None, None
            return
        self.channel_order = tuple(int(i) for i in order)
        self.image_channels = n_image_channels

    def expected_image_channels(self) -> int | None:
        """Image channels this wrapper reads while a channel order is set (the attacks check it)."""
        return self.image_channels if self.channel_order is not None else None

    def _resample_size(self, shape) -> tuple[int, ...] | None:
        if self.info.spacing is None or self.input_spacing is None:
            return None
        if len(self.input_spacing) != len(shape):
            return None
        ratio = [a / b for a, b in zip(self.input_spacing, self.info.spacing)]
        if all(abs(r - 1) < 0.05 for r in ratio):
            return None
        return tuple(max(1, round(n * r)) for n, r in zip(shape, ratio))

    def select_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The model's inputs from the image's channels (a differentiable gather)."""
        if self.channel_order is None or x.shape[1] != (self.image_channels or x.shape[1]):
            return x
        if self.channel_order == tuple(range(x.shape[1])):
            return x
        return x[:, list(self.channel_order)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        z = self.select_channels(x)
        if self.info.bias_correction == "n4":
            if self.bias is None:
                self.prepare_image(x[:1])
            z = self.bias.apply(z)
        z = self.normalize(z)
        mode = "bilinear" if z.ndim == 4 else "trilinear"
        if self.info.task == "classification":
            roi = self.info.roi_size
            if roi is not None and tuple(z.shape[2:]) != tuple(roi):
                z = F.interpolate(z, size=tuple(roi), mode=mode, align_corners=False, antialias=z.ndim == 4)
            return self.predictor(z)
        size = tuple(self.info.resize_to) if self.info.resize_to else self._resample_size(z.shape[2:])
        if size is None or size == tuple(z.shape[2:]):
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

            self.predictor.detach_safe = True
            try:
                return sliding_window_inference(z, roi_size=roi, sw_batch_size=1, predictor=self.predictor,
                                                overlap=self.overlap, mode="gaussian")
            finally:
                self.predictor.detach_safe = False
        return self.predictor(z)


@dataclass
class LoadedModel:
    """A ready-to-use model: the native-input module, its declaration and where it came from."""

    module: NativeInputModel
    info: ModelInfo
    spec: str
    checksum: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: image channels (names or indices) to feed the model's inputs, in the model's order; None:
    #: match by name (see :mod:`.channels`)
    channel_map: list | None = None
    #: output channels, known after the first forward pass
    n_outputs: int | None = None

    def to(self, device: str | torch.device) -> LoadedModel:
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    # --------------------------------------------------------------- checks and conversions
    def match_channels(self, image_names, source: str = "image") -> ChannelMapping:
        """Pair the image's channels with the model's inputs (:func:`.channels.match_channels`)."""
        try:
            return match_channels(image_names, self.info.channel_names, self.info.in_channels, self.channel_map)
        except ChannelMismatch as exc:
            raise ChannelMismatch(f"{source}: {self.spec}: {exc}", exc.image_names, exc.model_names) from None

    def check_image(self, array: np.ndarray, source: str = "image", channel_names=None) -> ChannelMapping:
        """Raise a clear ModelError when an image (``C *spatial``) does not fit the model; return
        the channel mapping that makes it fit."""
        if array.ndim != self.info.spatial_dims + 1:
            raise ModelError(
                f"{source}: the model {self.spec} takes {self.info.spatial_dims}-D images with "
                f"{self.info.in_channels} channel(s); got an array of shape {tuple(array.shape)}"
            )
        names = list(channel_names) if channel_names is not None else [f"channel{c}" for c in range(array.shape[0])]
        if len(names) != array.shape[0]:
            raise ModelError(f"{source}: {len(names)} channel names for {array.shape[0]} channels")
        if channel_names is None and self.channel_map is None and array.shape[0] != self.info.in_channels:
            declared = f" ({', '.join(self.info.channel_names)})" if self.info.channel_names else ""
            raise ModelError(
                f"{source}: the model {self.spec} expects {self.info.in_channels} channel(s){declared} "
                f"but the image has {array.shape[0]}"
            )
        mapping = (self.match_channels(names, source) if channel_names is not None or self.channel_map is not None
                   else ChannelMapping(tuple(range(len(names))), tuple(names), None, "file order"))
        d = self.info.size_divisible
        if d > 1 and any(s % d for s in array.shape[1:]) and self.info.roi_size is None:
            raise ModelError(f"{source}: every spatial size must be a multiple of {d}; got {tuple(array.shape[1:])}")
        return mapping

    def to_batch(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=self.device)[None]

    @torch.no_grad()
    def forward(self, array_or_batch) -> torch.Tensor:
        x = array_or_batch if isinstance(array_or_batch, torch.Tensor) else self.to_batch(array_or_batch)
        self.module.eval()
        try:
            out = self.module(x.to(self.device))
        except ModelError as exc:  # e.g. an ambiguous tuple output: say which model
            raise ModelError(f"{self.spec}: {exc}") from None
        self.n_outputs = int(out.shape[1])
        return out

    def activation(self) -> str:
        """The ``activation`` argument the attacks/losses need for this model's outputs."""
        return {"softmax": "softmax", "sigmoid": "sigmoid", "probabilities": "none"}[self.info.output]

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        if self.info.output == "softmax":
            return torch.softmax(output, 1)
        if self.info.output == "sigmoid":
            return torch.sigmoid(output)
        return output

    def _sigmoid_layout(self, n_outputs: int) -> list[str] | None:
        """Region names when the output channels are (BraTS) regions; None for a softmax/label output."""
        if self.info.output == "softmax":
            return None
        if self.info.output == "probabilities" and not self.info.region_names:
            return None
        return self.info.sigmoid_regions(n_outputs)

    def to_label_map(self, output: torch.Tensor) -> np.ndarray:
        """Segmentation output ``B K *spatial`` -> label values ``B *spatial`` (numpy)."""
        if self.info.task != "segmentation":
            raise ModelError(f"{self.spec} is a classifier; it has no label map")
        n_out = int(output.shape[1])
        regions = self._sigmoid_layout(n_out)
        if regions is not None:
            if len(regions) != n_out:
                raise ModelError(f"{self.spec}: the model declares regions {regions} but outputs {n_out} channels")
            probs = self.probabilities(output)
            paint = self.info.label_values if self.info.region_labels else None
            return regions_to_labels(probs.cpu().numpy() > 0.5, regions, paint)
        if self.info.output == "sigmoid":
            # independent channels 1..K without region names: channel k is label k+1 where its
            # probability passes 0.5 (the most probable one where several do), else background
            probs = self.probabilities(output)
            best = channel_argmax(probs)  # indices, first maximum as torch's (slab-wise: fast on CPU)
            fg = probs.amax(1) > 0.5
            values = np.asarray(self.info.label_values or list(range(1, n_out + 1)))
            if len(values) == n_out + 1:  # declared with the background value first
                values = values[1:]
            return np.where(fg.cpu().numpy(), values[best.cpu().numpy()], 0)
        values = small_labels(np.asarray(self.info.output_labels(n_out)))
        if values.dtype == np.uint8 and n_out <= 255:  # the arg-max writes the label values itself
            return channel_argmax(output, values).cpu().numpy()
        return values[channel_argmax(output).cpu().numpy()]

    def label_map_to_target(self, labels: np.ndarray | torch.Tensor, n_outputs: int | None = None) -> torch.Tensor:
        """Ground-truth label values -> what the loss compares outputs with (``B *spatial``).

        Softmax models get class indices; sigmoid models get multi-hot channels (regions, or one
        channel per foreground label). Unknown label values raise ModelError naming them.
        """
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.ndim == self.info.spatial_dims:
            lab = lab[None]
        if self.info.output == "sigmoid" or self.info.region_names:
            n_out = n_outputs or self._output_channels()
            names = self._sigmoid_layout(n_out) if n_out else (self.info.region_names or list(BRATS_REGION_NAMES))
            if names is not None:
                hot = labels_to_regions(lab, names, self.info.region_table())
                return torch.as_tensor(hot, dtype=torch.float32, device=self.device)
            values = list(self.info.label_values or range(1, n_out + 1))
            if len(values) == n_out + 1:
                values = values[1:]
            unknown = sorted(set(np.unique(lab).tolist()) - set(values) - {0})
            if unknown:
                raise ModelError(f"label values {unknown} are not among the model's labels {[0, *values]}")
            hot = np.stack([lab == v for v in values], 1).astype(np.float32)
            return torch.as_tensor(hot, device=self.device)
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

    def _output_channels(self) -> int | None:
        """Output channels of a sigmoid model, from the declaration (None when not declared)."""
        if self.info.region_names:
            return len(self.info.region_names)
        if self.info.label_names:
            return len([k for k in self.info.label_names if k != "0"])
        if self.info.label_values:
            return len([v for v in self.info.label_values if v != 0])
        return self.n_outputs or 3  # undeclared sigmoid segmentation: the BraTS TC/WT/ET convention

    def label_value_to_index(self, value: int) -> int:
        """A label *value* (e.g. BraTS 4) -> the output index the attacks target."""
        values = self.info.label_values
        if values is None:
            return int(value)
        if value not in values:
            raise ModelError(f"label {value} is not one of the model's labels {values}")
        return values.index(value)


REGION_LABELS = BRATS_REGIONS


def labels_to_regions(labels: np.ndarray, names: Sequence[str], table=None) -> np.ndarray:
    """Label map ``B *spatial`` -> multi-hot region channels ``B R *spatial``; ``table`` maps each region
    name to its label values (default: BraTS's WT/TC/ET)."""
    table = REGION_LABELS if table is None else table
    out = []
    for n in names:
        if n not in table:
            raise ModelError(f"unknown region {n!r}; known: {sorted(table)}")
        out.append(np.isin(labels, table[n]))
    return np.stack(out, 1).astype(np.float32)


def regions_to_labels(regions: np.ndarray, names: Sequence[str], paint: Sequence[int] | None = None) -> np.ndarray:
    """Binary region channels ``B R *spatial`` -> a label map. Default: BraTS labels, WT→2, TC→1, ET→4
    (nested); with ``paint``, channel ``i`` is painted ``paint[i]`` in channel order (nnU-Net's
    ``regions_class_order``)."""
    values = [int(v) for v in paint] if paint is not None else [1, 2, 4]
    out = np.zeros((regions.shape[0],) + regions.shape[2:], dtype=small_labels(np.asarray([0, *values])).dtype)
    if paint is not None:
        for i, value in enumerate(paint):
            out[regions[:, i]] = int(value)
        return out
    idx = {n: i for i, n in enumerate(names)}
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
