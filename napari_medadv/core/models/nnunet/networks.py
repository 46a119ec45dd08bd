"""nnU-Net v2's two U-Nets in plain PyTorch: ``PlainConvUNet`` and ``ResidualEncoderUNet``.

The same modules, built in the same order and under the same attribute names as in
``dynamic_network_architectures`` (the package nnU-Net builds its networks with), so that a
``checkpoint_final.pth`` trained by nnU-Net loads with ``load_state_dict(strict=True)`` and computes
the same function. Two details of that package are kept on purpose because the checkpoints hold
them: every conv block registers its modules twice (``conv``/``norm``/``nonlin`` and again inside
``all_modules``), and the decoder keeps a reference to the encoder (``decoder.encoder.*`` keys).
``tests/core/models/test_nnunet.py`` checks key-for-key and output equality against the package.

Why not depend on the package: its wheel requires ``timm`` (only its transformer architectures
use it), which pulls ``torchvision`` and with it a CUDA build of torch. The two U-Nets below are
what nnU-Net's planners (default and ResEnc presets) write into ``plans.json``; any other
``network_class_name`` is refused with a clear error.

The operators named in the plans (``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``, e.g.
``"torch.nn.modules.instancenorm.InstanceNorm3d"``) are resolved to classes of ``torch.nn`` only;
nothing named in a plans file is ever imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ModelError

#: arch_kwargs each architecture takes (nnU-Net's planners write these)
_COMMON = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder",
           "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin",
           "nonlin_kwargs", "deep_supervision"}
ARCH_KWARGS = {
    "PlainConvUNet": _COMMON | {"n_conv_per_stage", "nonlin_first"},
    "ResidualEncoderUNet": _COMMON | {"n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"},
}
_OP_KINDS = {
    "conv_op": (nn.Conv2d, nn.Conv3d),
    "norm_op": (nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm),
    "dropout_op": (nn.modules.dropout._DropoutNd,),
    "nonlin": (nn.Module,),
}


def resolve_op(kind: str, name: str | None) -> type[nn.Module] | None:
    """``"torch.nn.modules.conv.Conv3d"`` -> ``nn.Conv3d``; only classes of ``torch.nn`` are accepted."""
    if name is None:
        return None
    if not isinstance(name, str) or not name.startswith("torch.nn."):
        raise ModelError(f"plans: {kind} {name!r} is not a torch.nn class (only those are built, nothing is imported)")
    cls = getattr(nn, name.rsplit(".", 1)[-1], None)
    if not (isinstance(cls, type) and issubclass(cls, _OP_KINDS[kind])):
        raise ModelError(f"plans: {kind} {name!r} is not a torch.nn {kind.replace('_', ' ')} class")
    return cls


def _as_list(conv_op: type, value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * (3 if issubclass(conv_op, nn.Conv3d) else 2)


def _per_stage(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


class ConvDropoutNormReLU(nn.Module):
    """conv -> [dropout] -> [norm] -> [nonlin] (norm and nonlin swapped with ``nonlin_first``)."""

    def __init__(self, conv_op, in_ch: int, out_ch: int, kernel, stride, conv_bias: bool, ops: dict,
                 nonlin_first: bool = False, dropout: bool = True, nonlin: bool = True):
        super().__init__()
        kernel, stride = _as_list(conv_op, kernel), _as_list(conv_op, stride)
        self.stride = stride
        self.conv = conv_op(in_ch, out_ch, kernel, stride, padding=[(k - 1) // 2 for k in kernel], dilation=1,
                            bias=conv_bias)
        seq: list[nn.Module] = [self.conv]
        if dropout and ops["dropout_op"] is not None:
            self.dropout = ops["dropout_op"](**(ops["dropout_op_kwargs"] or {}))
            seq.append(self.dropout)
        if ops["norm_op"] is not None:
            self.norm = ops["norm_op"](out_ch, **(ops["norm_op_kwargs"] or {}))
            seq.append(self.norm)
        if nonlin and ops["nonlin"] is not None:
            self.nonlin = ops["nonlin"](**(ops["nonlin_kwargs"] or {}))
            seq.append(self.nonlin)
        if nonlin_first and ops["norm_op"] is not None and nonlin and ops["nonlin"] is not None:
            seq[-1], seq[-2] = seq[-2], seq[-1]
        self.all_modules = nn.Sequential(*seq)

    def forward(self, x):
        return self.all_modules(x)


class StackedConvBlocks(nn.Module):
    def __init__(self, n: int, conv_op, in_ch: int, out_ch: int, kernel, stride, conv_bias: bool, ops: dict,
                 nonlin_first: bool = False):
        super().__init__()
        self.convs = nn.Sequential(
            ConvDropoutNormReLU(conv_op, in_ch, out_ch, kernel, stride, conv_bias, ops, nonlin_first),
            *[ConvDropoutNormReLU(conv_op, out_ch, out_ch, kernel, 1, conv_bias, ops, nonlin_first)
              for _ in range(1, n)])

    def forward(self, x):
        return self.convs(x)


def _skip(conv_op, in_ch: int, out_ch: int, stride, ops: dict) -> nn.Module | None:
    """ResNet-D shortcut: average pooling where strided, then a 1x1 conv + norm where the width changes."""
    stride = _as_list(conv_op, stride)
    strided = any(s != 1 for s in stride)
    if not strided and in_ch == out_ch:
        return None
    seq: list[nn.Module] = []
    if strided:
        seq.append((nn.AvgPool3d if issubclass(conv_op, nn.Conv3d) else nn.AvgPool2d)(stride, stride))
    if in_ch != out_ch:
        seq.append(ConvDropoutNormReLU(conv_op, in_ch, out_ch, 1, 1, False, ops, dropout=False, nonlin=False))
    return nn.Sequential(*seq)


class BasicBlockD(nn.Module):
    def __init__(self, conv_op, in_ch: int, out_ch: int, kernel, stride, conv_bias: bool, ops: dict):
        super().__init__()
        self.conv1 = ConvDropoutNormReLU(conv_op, in_ch, out_ch, kernel, stride, conv_bias, ops)
        self.conv2 = ConvDropoutNormReLU(conv_op, out_ch, out_ch, kernel, 1, conv_bias, ops, dropout=False,
                                         nonlin=False)
        if ops["nonlin"] is not None:
            self.nonlin2 = ops["nonlin"](**(ops["nonlin_kwargs"] or {}))
        skip = _skip(conv_op, in_ch, out_ch, stride, ops)
        if skip is not None:
            self.skip = skip

    def forward(self, x):
        residual = self.skip(x) if hasattr(self, "skip") else x
        out = self.conv2(self.conv1(x)) + residual
        return self.nonlin2(out) if hasattr(self, "nonlin2") else out


class BottleneckD(nn.Module):
    def __init__(self, conv_op, in_ch: int, mid_ch: int, out_ch: int, kernel, stride, conv_bias: bool, ops: dict):
        super().__init__()
        self.conv1 = ConvDropoutNormReLU(conv_op, in_ch, mid_ch, 1, 1, conv_bias, ops, dropout=False)
        self.conv2 = ConvDropoutNormReLU(conv_op, mid_ch, mid_ch, kernel, stride, conv_bias, ops)
        self.conv3 = ConvDropoutNormReLU(conv_op, mid_ch, out_ch, 1, 1, conv_bias, ops, dropout=False, nonlin=False)
        if ops["nonlin"] is not None:
            self.nonlin3 = ops["nonlin"](**(ops["nonlin_kwargs"] or {}))
        skip = _skip(conv_op, in_ch, out_ch, stride, ops)
        if skip is not None:
            self.skip = skip

    def forward(self, x):
        residual = self.skip(x) if hasattr(self, "skip") else x
        out = self.conv3(self.conv2(self.conv1(x))) + residual
        return self.nonlin3(out) if hasattr(self, "nonlin3") else out


class StackedResidualBlocks(nn.Module):
    def __init__(self, n: int, conv_op, in_ch: int, out_ch: int, kernel, stride, conv_bias: bool, ops: dict,
                 bottleneck: int | None = None):
        super().__init__()
        if bottleneck is None:
            blocks = [BasicBlockD(conv_op, in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1,
                                  conv_bias, ops) for i in range(n)]
        else:
            blocks = [BottleneckD(conv_op, in_ch if i == 0 else out_ch, bottleneck, out_ch, kernel,
                                  stride if i == 0 else 1, conv_bias, ops) for i in range(n)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class _Encoder(nn.Module):
    """Stages as in nnU-Net's encoders: ``stages[s]`` runs at stride ``strides[s]``; returns every skip."""

    def __init__(self, conv_op, features: Sequence[int], kernels: Sequence, strides: Sequence, conv_bias: bool,
                 ops: dict):
        super().__init__()
        self.conv_op, self.output_channels, self.kernel_sizes = conv_op, list(features), list(kernels)
        self.strides = [_as_list(conv_op, s) for s in strides]
        self.conv_bias, self.ops = conv_bias, ops

    def forward(self, x):
        if getattr(self, "stem", None) is not None:
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class PlainConvEncoder(_Encoder):
    def __init__(self, in_ch: int, n_stages: int, features, conv_op, kernels, strides, n_conv, conv_bias, ops,
                 nonlin_first: bool = False):
        super().__init__(conv_op, features, kernels, strides, conv_bias, ops)
        stages = []
        for s in range(n_stages):
            stages.append(nn.Sequential(StackedConvBlocks(n_conv[s], conv_op, in_ch, features[s], kernels[s],
                                                          strides[s], conv_bias, ops, nonlin_first)))
            in_ch = features[s]
        self.stages = nn.Sequential(*stages)


class ResidualEncoder(_Encoder):
    def __init__(self, in_ch: int, n_stages: int, features, conv_op, kernels, strides, n_blocks, conv_bias, ops,
                 bottleneck: Sequence[int | None], stem_channels: int | None = None):
        super().__init__(conv_op, features, kernels, strides, conv_bias, ops)
        stem_channels = features[0] if stem_channels is None else stem_channels
        self.stem = StackedConvBlocks(1, conv_op, in_ch, stem_channels, kernels[0], 1, conv_bias, ops)
        in_ch = stem_channels
        stages = []
        for s in range(n_stages):
            stages.append(StackedResidualBlocks(n_blocks[s], conv_op, in_ch, features[s], kernels[s], strides[s],
                                                conv_bias, ops, bottleneck[s]))
            in_ch = features[s]
        self.stages = nn.Sequential(*stages)


class UNetDecoder(nn.Module):
    """Transposed conv up, concatenate the skip, convs; the 1x1 segmentation layer of the last stage."""

    def __init__(self, encoder: _Encoder, num_classes: int, n_conv: Sequence[int], nonlin_first: bool = False):
        super().__init__()
        self.encoder = encoder  # registered, as in nnU-Net: the checkpoints hold decoder.encoder.* too
        conv_op = encoder.conv_op
        transp = nn.ConvTranspose3d if issubclass(conv_op, nn.Conv3d) else nn.ConvTranspose2d
        feats, stages, transpconvs, seg_layers = encoder.output_channels, [], [], []
        for s in range(1, len(feats)):
            below, skip, stride = feats[-s], feats[-(s + 1)], encoder.strides[-s]
            transpconvs.append(transp(below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(StackedConvBlocks(n_conv[s - 1], conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)],
                                            1, encoder.conv_bias, encoder.ops, nonlin_first))
            seg_layers.append(conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips):
        x = skips[-1]
        for s in range(len(self.stages)):
            x = self.stages[s](torch.cat((self.transpconvs[s](x), skips[-(s + 2)]), 1))
        return self.seg_layers[-1](x)  # deep supervision is off at inference


class NnUNetNet(nn.Module):
    """encoder + decoder; ``forward`` returns the full-resolution logits only."""

    def __init__(self, encoder: _Encoder, decoder: UNetDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build_network(class_name: str, arch_kwargs: dict, in_channels: int, num_classes: int) -> NnUNetNet:
    """The network a plans file describes (``configurations[c]["architecture"]``), untrained."""
    short = str(class_name).rsplit(".", 1)[-1]
    if short not in ARCH_KWARGS:
        raise ModelError(f"plans: architecture {class_name!r} is not supported; napari-medadv builds nnU-Net's "
                         f"{' and '.join(ARCH_KWARGS)} (the default and ResEnc planners' networks)")
    unknown = sorted(set(arch_kwargs) - ARCH_KWARGS[short])
    if unknown:
        raise ModelError(f"plans: {short} arguments {unknown} are not supported")
    kw = dict(arch_kwargs)
    ops = {k: resolve_op(k, kw.get(k)) for k in ("conv_op", "norm_op", "dropout_op", "nonlin")}
    ops["norm_op_kwargs"], ops["dropout_op_kwargs"] = kw.get("norm_op_kwargs"), kw.get("dropout_op_kwargs")
    ops["nonlin_kwargs"] = kw.get("nonlin_kwargs")
    conv_op, n = ops["conv_op"], int(kw["n_stages"])
    if conv_op is None:
        raise ModelError("plans: the architecture has no conv_op")
    features = _per_stage(kw["features_per_stage"], n)
    kernels, strides = _per_stage(kw["kernel_sizes"], n), _per_stage(kw["strides"], n)
    dec = _per_stage(kw["n_conv_per_stage_decoder"], n - 1)
    bias = bool(kw.get("conv_bias", False))
    if short == "PlainConvUNet":
        first = bool(kw.get("nonlin_first", False))
        enc = PlainConvEncoder(in_channels, n, features, conv_op, kernels, strides,
                               _per_stage(kw["n_conv_per_stage"], n), bias, ops, first)
        return NnUNetNet(enc, UNetDecoder(enc, num_classes, dec, first))
    block = str(kw.get("block") or "BasicBlockD").rsplit(".", 1)[-1]
    if block not in ("BasicBlockD", "BottleneckD"):
        raise ModelError(f"plans: residual block {kw.get('block')!r} is not supported (BasicBlockD, BottleneckD)")
    bottleneck = _per_stage(kw.get("bottleneck_channels"), n) if block == "BottleneckD" else [None] * n
    if block == "BottleneckD" and any(b is None for b in bottleneck):
        raise ModelError("plans: BottleneckD needs bottleneck_channels")
    enc = ResidualEncoder(in_channels, n, features, conv_op, kernels, strides, _per_stage(kw["n_blocks_per_stage"], n),
                          bias, ops, bottleneck, kw.get("stem_channels"))
    return NnUNetNet(enc, UNetDecoder(enc, num_classes, dec))
