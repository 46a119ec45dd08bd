"""Tiny, hand-weighted models for fast study/defense tests (registered as the ``tiny:`` scheme)."""

from __future__ import annotations

import torch
from torch import nn

from napari_medadv.core.models.base import ModelInfo
from napari_medadv.core.models.registry import register_scheme

SEG_INFO = {"task": "segmentation", "spatial_dims": 3, "in_channels": 4, "output": "softmax",
            "normalization": "zscore-nonzero", "channel_names": ["t1", "t1ce", "t2", "flair"],
            "label_values": [0, 1, 2, 4], "name": "tiny:seg"}


def tiny_segmenter(variant: int = 0) -> nn.Module:
    """1x1x1 conv on z-scored channels: necrosis ~ T2 - T1, oedema ~ FLAIR, enhancing ~ T1Gd,
    then a 3x3x3 box smoothing (so the input gradient is spatially mixed)."""
    conv = nn.Conv3d(4, 4, 1)
    smooth = nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False)
    w = torch.zeros(4, 4)
    w[1] = torch.tensor([-1.5, 0.0, 1.5, 0.0])  # t1, t1ce, t2, flair
    w[2] = torch.tensor([0.0, 0.0, 0.5, 2.0])
    w[3] = torch.tensor([0.0, 2.5, 0.0, 0.0])
    b = torch.tensor([0.0, -2.0, -2.5, -3.0]) + 0.1 * variant
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None, None])
        conv.bias.copy_(b)
        smooth.weight.fill_(1.0 / 27)
    return nn.Sequential(conv, smooth)


def _load(value, *, weights=None, trust_code=False, info=None):
    variant = int(value) if value.isdigit() else 0
    return tiny_segmenter(variant).eval(), ModelInfo.from_dict({**SEG_INFO, "name": f"tiny:{value}"}), f"tiny-{value}"


register_scheme("tiny", _load)


CLS_INFO = {"task": "classification", "spatial_dims": 2, "in_channels": 1, "output": "sigmoid",
            "normalization": "minmax", "class_names": ["a", "b", "c"], "name": "tiny:cls"}


class TinyClassifier(nn.Module):
    """Multi-label a/b/c on 16 x 16 images: a = bright top half, b = bright bottom half,
    c = bright overall (hand-set weights; ``variant`` shifts the biases)."""

    def __init__(self, variant: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 16)
        w = torch.zeros(3, 1, 16, 16)
        w[0, 0, :8] = 8.0 / 128
        w[1, 0, 8:] = 8.0 / 128
        w[2, 0] = 6.0 / 256
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.tensor([-3.0, -3.0, -3.5]) + 0.3 * variant)

    def forward(self, x):
        return self.conv(x).flatten(1)


def tiny_classifier_loader(value, *, weights=None, trust_code=False, info=None):
    variant = int(value) if value.isdigit() else 0
    return TinyClassifier(variant).eval(), ModelInfo.from_dict({**CLS_INFO, "name": f"tinycls:{value}"}), f"tinycls-{value}"


def make_small_cases(root, names=("glioma_001", "glioma_002", "glioma_003"), size: int = 32):
    """Shipped glioma cases cropped to ``size``^3 around the tumour (BraTS folders under ``root``)."""
    import numpy as np

    from napari_medadv.core.data.glioma import read_brats_case, write_brats_case
    from napari_medadv.core.data.paths import sample_data_dir

    src = sample_data_dir() / "glioma"
    for cid in names:
        channels, seg, affine = read_brats_case(src / cid, cid)
        c = np.round(np.argwhere(seg > 0).mean(0)).astype(int)
        lo = [int(np.clip(c[i] - size // 2, 0, seg.shape[i] - size)) for i in range(3)]
        sl = tuple(slice(lo[i], lo[i] + size) for i in range(3))
        aff = affine.copy()
        aff[:3, 3] = affine[:3, :3] @ np.array(lo) + affine[:3, 3]
        write_brats_case(root / cid, cid, {k: v[sl] for k, v in channels.items()}, seg[sl], aff)
    return root


BIN_INFO = {"task": "segmentation", "spatial_dims": 3, "in_channels": 4, "output": "softmax",
            "normalization": "zscore-nonzero", "channel_names": ["T1", "T1c", "T2", "FLAIR"],
            "label_values": [0, 1], "label_names": {"1": "tumour"}, "name": "tinybin"}


def tiny_binary_loader(value, *, weights=None, trust_code=False, info=None):
    """A binary (tumour / background) model that is no BraTS model: FLAIR-bright = tumour."""
    conv = nn.Conv3d(4, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 3] = 2.0
        conv.bias.copy_(torch.tensor([0.0, -2.0]))
    return conv.eval(), ModelInfo.from_dict({**BIN_INFO, "name": f"tinybin:{value}"}), f"tinybin-{value}"


register_scheme("tinybin", tiny_binary_loader)


def save_torchscript(folder, variant: int = 0):
    """``tiny:variant`` as a TorchScript file with its JSON sidecar (loadable in any process,
    e.g. Dask workers, which do not know the ``tiny:`` scheme). Returns the ``.pt`` path."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pt = folder / f"tiny{variant}.pt"
    torch.jit.script(tiny_segmenter(variant).eval()).save(str(pt))
    pt.with_suffix(".json").write_text(json.dumps({**SEG_INFO, "name": f"tiny{variant}"}))
    return pt


class _Round(nn.Module):
    """Quantise the (z-scored) input to whole numbers: a non-differentiable step (gradient 0)."""

    def forward(self, x):
        return torch.round(x)


class _AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode (a model that is random at inference)."""

    def forward(self, x):
        return nn.functional.dropout(x, 0.3, training=True)


def masked_loader(value, *, weights=None, trust_code=False, info=None):
    """``masked:round`` / ``masked:dropout``: tiny:0 behind a rounding step (gradient masking) or an
    always-on dropout (random at inference), for the sanity checks."""
    first = {"round": _Round(), "dropout": _AlwaysDropout()}[value]
    net = nn.Sequential(first, tiny_segmenter(0)).eval()
    return net, ModelInfo.from_dict({**SEG_INFO, "name": f"masked:{value}"}), f"masked-{value}"


register_scheme("masked", masked_loader)
