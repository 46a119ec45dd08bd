"""The project's demo models: architectures, the ``demo:`` loader and where their weights live.

Weights are plain state dicts (``torch.load(..., weights_only=True)``) next to a JSON file that
holds the :class:`ModelInfo`, the architecture (one of the known builders below — never code
from the file) and how the model was trained. ``medadv train demo-unet3d`` etc. rebuild them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..data.paths import demo_models_dir
from ..errors import ModelError
from .base import ModelInfo, file_checksum
from .registry import register_scheme


class SliceWise(nn.Module):
    """Apply a 2-D network to every slice of a volume: ``B C X Y Z -> B K X Y Z``.

    Slices are taken along ``axis`` (default the last, axial for RAS-ordered volumes) and run
    as one batch, so a 2-D model is attacked on the whole volume with one intensity range —
    as Liu et al. evaluate their 2D-UNet on combined slice predictions.
    """

    def __init__(self, net: nn.Module, axis: int = -1, multiple: int = 8):
        super().__init__()
        self.net = net
        self.axis = axis
        self.multiple = multiple

    def _net_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The UNet needs sizes divisible by its total stride: pad (replicate) and crop back."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.net(x)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # already 2-D
            return self._net_padded(x)
        ax = self.axis % x.ndim
        moved = x.movedim(ax, 1)  # B S C H W
        b, s = moved.shape[:2]
        out = self._net_padded(moved.reshape(b * s, *moved.shape[2:]))
        return out.reshape(b, s, *out.shape[1:]).movedim(1, ax)


def build_architecture(arch: str, kwargs: dict) -> nn.Module:
    """Known architectures only (so a JSON file can never make us run arbitrary code)."""
    from monai.networks import nets

    if arch == "monai.UNet":
        return nets.UNet(**kwargs)
    if arch == "monai.UNet-slicewise":
        kw = dict(kwargs)
        axis = kw.pop("slice_axis", -1)
        return SliceWise(nets.UNet(**kw), axis=axis)
    if arch == "monai.DenseNet":
        kw = dict(kwargs)
        pool = kw.pop("global_pool", "avg")
        net = nets.DenseNet(**kw)
        if pool == "max":
            # MONAI's DenseNet always averages its last feature map. A 1-cm nodule covers a
            # few of its 16 x 16 cells, so averaging dilutes it ~100-fold and the classifier
            # never learns it; global max pooling (multiple-instance style, parameter-free, so
            # the state dict is unchanged) lets a local finding decide its class.
            net.class_layers.pool = nn.AdaptiveMaxPool2d(1) if kw.get("spatial_dims", 2) == 2 else nn.AdaptiveMaxPool3d(1)
        elif pool != "avg":
            raise ModelError(f"monai.DenseNet: global_pool must be 'avg' or 'max', got {pool!r}")
        return net
    raise ModelError(f"unknown demo architecture {arch!r}")


DEMO_MODELS = {
    "unet3d": "3-D UNet (MONAI) on 4-channel glioma phantoms — labels 0/1/2/4",
    "unet2d": "2-D UNet (MONAI) applied slice by slice to 4-channel glioma phantoms",
    "cxr": "chest-radiograph multi-label classifier (small MONAI DenseNet): nodule, opacity",
    # defended variants of unet3d (napari_medadv.core.training.defenses; `medadv train demo-unet3d --defense ...`)
    "unet3d-distill": "3-D UNet, defensive distillation (Liu et al. 2021, eq. 7)",
    "unet3d-adv": "3-D UNet, FGSM adversarial training (Liu et al. 2021, eq. 9)",
    "unet3d-noise": "3-D UNet, uniform L-inf noise augmentation (baseline defense)",
}


def demo_paths(name: str, folder: str | Path | None = None) -> tuple[Path, Path]:
    folder = Path(folder) if folder is not None else demo_models_dir()
    return folder / f"{name}.pt", folder / f"{name}.json"


def load_demo(value: str, *, weights=None, trust_code=False, info=None, folder=None):
    """``demo:NAME`` loader (registered below)."""
    if value not in DEMO_MODELS:
        raise ModelError(f"unknown demo model {value!r}; choose one of {', '.join(DEMO_MODELS)}")
    pt, meta_path = demo_paths(value, folder)
    if weights is not None:
        pt = Path(weights)
    if not pt.is_file() or not meta_path.is_file():
        raise ModelError(
            f"demo:{value}: weights {pt} or metadata {meta_path} missing; rebuild them with "
            f"`medadv train demo-{value}`"
        )
    return _load_files(pt, meta_path)


def load_trained(value: str, *, weights=None, trust_code=False, info=None):
    """``trained:PATH`` loader: a model written by ``medadv train`` (``NAME.pt`` + ``NAME.json``,
    PATH either of them), e.g. one model of a distillation temperature sweep. No trust needed: the
    JSON names one of the demo architectures (built here, no code from the file) and the weights
    are loaded with ``weights_only=True``."""
    path = Path(value)
    stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    pt, meta_path = Path(weights) if weights else stem.with_suffix(".pt"), stem.with_suffix(".json")
    if not pt.is_file() or not meta_path.is_file():
        raise ModelError(f"trained:{value}: needs {pt.name} and {meta_path.name} side by side (as `medadv train` "
                         "writes them)")
    return _load_files(pt, meta_path)


def _load_files(pt: Path, meta_path: Path):
    try:
        meta = json.loads(meta_path.read_text())
        arch, arch_kwargs = meta["arch"], meta["arch_kwargs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{meta_path}: cannot read model metadata ({type(exc).__name__}: {exc})") from None
    try:
        net = build_architecture(arch, arch_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{meta_path}: architecture {arch!r} cannot be built ({exc})") from None
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # corrupt file, wrong keys: one line naming the file
        raise ModelError(f"{pt}: cannot load weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    net.eval()
    return net, ModelInfo.from_dict(meta["info"]), file_checksum(pt)


register_scheme("demo", load_demo)
register_scheme("trained", load_trained)
