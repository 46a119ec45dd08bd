"""Reading an nnU-Net v2 result folder: the spec, ``plans.json``, ``dataset.json``, the checkpoints.

Layout (what ``nnUNetv2_train`` writes, and what ``nnUNetv2_export_model_to_zip`` ships)::

    Dataset137_BraTS2021/nnUNetTrainer__nnUNetPlans__3d_fullres/   <- DIR
        plans.json  dataset.json  dataset_fingerprint.json
        fold_0/checkpoint_final.pth  fold_1/checkpoint_final.pth  ...

Checkpoints are read with ``torch.load(weights_only=True)``. nnU-Net's checkpoints hold, besides
tensors, its training log (numpy float scalars) and ``init_args`` (a ``torch.device``); exactly the
numpy scalar types are allow-listed (:data:`CHECKPOINT_SAFE_GLOBALS`) for that one load, and any
other pickled type is refused with the file and the type named.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ModelError
from ..adapters import read_json_object

FOLD_TOKEN = re.compile(r"^(\d+|all)(,(\d+|all))*$")
OPTIONS = {"tta": True, "notta": False}
CHECKPOINT = "checkpoint_final.pth"
NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
READERS = ("SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient", "NaturalImage2DIO",
           "Tiff3DIO")
REORIENTING_READERS = ("SimpleITKIOWithReorient", "NibabelIOWithReorient")  # to RAS before reading


def _numpy_scalar_globals() -> list:
    """numpy scalars and their dtypes, under both module names (numpy 1 pickles say numpy.core)."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    out: list = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            out.append(cls)
    return out


#: what an nnU-Net checkpoint holds beyond tensors and plain containers: its training log's numpy
#: scalars (``torch.device`` in ``init_args`` is allowed by ``weights_only`` already)
CHECKPOINT_SAFE_GLOBALS = _numpy_scalar_globals()


@dataclass
class Spec:
    root: Path
    folds: list[str] | None
    use_mirroring: bool = True


def parse_spec(value: str) -> Spec:
    """``DIR[:FOLDS][:tta|:notta]``, FOLDS = ``0`` / ``0,1,4`` / ``all`` (default: every ``fold_N``)."""
    parts = str(value).split(":")
    mirroring = True
    if len(parts) > 1 and parts[-1].lower() in OPTIONS:
        mirroring = OPTIONS[parts.pop().lower()]
    folds = None
    if len(parts) > 1 and FOLD_TOKEN.match(parts[-1]):
        folds = parts.pop().split(",")
    root = ":".join(parts)
    if not root:
        raise ModelError("nnunet: give the result folder, e.g. nnunet:nnUNetTrainer__nnUNetPlans__3d_fullres:0")
    return Spec(Path(root).expanduser(), folds, mirroring)


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelError(f"{path.parent}: not an nnU-Net result folder — {path.name} ({what}) is missing")
    return read_json_object(path, what)


def find_folds(root: Path, folds: list[str] | None, checkpoint: str) -> list[tuple[str, Path]]:
    """``[(fold, checkpoint path)]``: the folds asked for, or every ``fold_N`` holding a checkpoint
    (nnU-Net's auto-detection: ``fold_all`` only when named)."""
    if not root.is_dir():
        raise ModelError(f"{root}: nnU-Net result folder not found" if not root.exists()
                         else f"{root}: an nnU-Net model is a result folder (plans.json, dataset.json, fold_N/)")
    if folds is None:
        found = sorted((p for p in root.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()),
                       key=lambda p: int(p.name[5:]))
        out = [(p.name[5:], p / checkpoint) for p in found if (p / checkpoint).is_file()]
        if not out:
            have = sorted(p.name for p in root.iterdir())
            hint = " (fold_all is used only when named: nnunet:DIR:all)" if (root / "fold_all").is_dir() else ""
            raise ModelError(f"{root}: no fold_N/{checkpoint} found{hint}; the folder holds {have}")
        return out
    out = []
    for f in folds:
        path = root / f"fold_{f}" / checkpoint
        if not path.is_file():
            raise ModelError(f"{path}: checkpoint of fold {f} not found")
        out.append((f, path))
    return out


def _unsupported_global(exc: BaseException) -> str | None:
    text = str(exc)
    m = re.search(r"GLOBAL\s+([\w.]+)", text) or re.search(r"Unsupported global:?\s+([\w.]+)", text)
    return m.group(1) if m else None


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint via ``torch.load(weights_only=True)`` with only numpy scalars allow-listed."""
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        glob = _unsupported_global(exc)
        if glob:
            raise ModelError(
                f"{path}: refused — the checkpoint contains pickled Python objects of type {glob}, beyond the "
                "tensors, numbers, strings and numpy scalars an nnU-Net checkpoint holds (read with "
                "torch.load(weights_only=True), which never runs code from the file)") from None
        raise ModelError(f"{path}: not a readable nnU-Net checkpoint (corrupt or truncated?): {exc}") from None
    except Exception as exc:  # damaged files raise RuntimeError/EOFError/ValueError/...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{path}: not a readable nnU-Net checkpoint (corrupt or truncated?): "
                         f"{type(exc).__name__}: {first}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise ModelError(f"{path}: not an nnU-Net checkpoint (no 'network_weights'; "
                         f"found {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})")
    bad = [str(k) for k, v in ckpt["network_weights"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{path}: network_weights holds entries that are not tensors: {bad[:5]}")
    return ckpt


def checkpoints_checksum(paths: list[Path]) -> str:
    """SHA-256 of one checkpoint; for several, of their SHA-256 digests joined in fold order."""
    digests = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return "sha256:" + digests[0]
    return "sha256:" + hashlib.sha256(",".join(digests).encode()).hexdigest()


def configuration_name(root: Path, ckpts: list[dict]) -> str:
    names = {str((c.get("init_args") or {}).get("configuration")) for c in ckpts
             if isinstance(c.get("init_args"), dict) and (c.get("init_args") or {}).get("configuration")}
    if len(names) > 1:
        raise ModelError(f"{root}: the folds were trained with different configurations {sorted(names)}")
    if names:
        return names.pop()
    m = re.fullmatch(r".+__.+__(.+)", root.name)  # Trainer__Plans__configuration
    if m:
        return m.group(1)
    raise ModelError(f"{root}: cannot tell the configuration (neither the checkpoints' init_args nor a folder "
                     "name like nnUNetTrainer__nnUNetPlans__3d_fullres say it)")


def resolve_configuration(plans: dict, name: str, source: Path) -> dict:
    """``plans["configurations"][name]`` with ``inherits_from`` resolved, in the current plans format."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        raise ModelError(f"{source}: configuration {name!r} not in the plans "
                         f"(it has {sorted(configs) if isinstance(configs, dict) else 'none'})")
    chain, conf = [name], dict(configs[name])
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in chain or parent not in configs:
            raise ModelError(f"{source}: configuration {name!r} inherits from {parent!r}, which cannot be resolved")
        chain.append(parent)
        conf = {**configs[parent], **conf}
    if conf.get("previous_stage"):
        raise ModelError(f"{source}: {name} is a cascade stage (it needs the segmentation of "
                         f"{conf['previous_stage']}); use a 3d_fullres, 3d_lowres or 2d model")
    if "architecture" not in conf:
        conf["architecture"] = legacy_architecture(conf, source)
    return conf


def legacy_architecture(conf: dict, source: Path) -> dict:
    """Plans written before nnU-Net 2.3 (``UNet_class_name`` etc.) -> the ``architecture`` entry, as
    nnU-Net's ``ConfigurationManager`` rebuilds it."""
    try:
        cls = conf["UNet_class_name"]
        n = len(conf["n_conv_per_stage_encoder"])
        dim = len(conf["patch_size"])
        kw = {
            "n_stages": n,
            "features_per_stage": [min(conf["UNet_base_num_features"] * 2 ** i, conf["unet_max_num_features"])
                                   for i in range(n)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": conf["conv_kernel_sizes"], "strides": conf["pool_op_kernel_sizes"],
            ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): conf["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"], "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        }
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{source}: the configuration has no 'architecture' entry and is not in the old "
                         f"plans format either (missing {exc})") from None
    return {"network_class_name": cls, "arch_kwargs": kw}


@dataclass
class Labels:
    """dataset.json ``labels`` as nnU-Net's LabelManager reads them."""

    names: dict[int, str]                      # label value -> name (softmax models)
    regions: list[tuple[str, tuple[int, ...]]] | None = None  # (name, label values) per sigmoid output
    region_values: list[int] | None = None      # regions_class_order: label painted for each region

    @property
    def n_outputs(self) -> int:
        return len(self.regions) if self.regions else len(self.names)


def read_labels(dataset: dict, source: Path) -> Labels:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise ModelError(f"{source}: dataset.json 'labels' must map names to values with background = 0")
    items = [(k, v) for k, v in labels.items() if k != "ignore"]
    is_region = any(isinstance(v, (list, tuple)) and len(v) > 1 for _, v in items)
    if not is_region:
        names = {int(v): str(k) for k, v in items}
        if sorted(names) != list(range(len(names))):
            raise ModelError(f"{source}: dataset.json labels must be consecutive 0..K-1 (nnU-Net's rule); got "
                             f"{sorted(names)}")
        return Labels(names)
    regions = []
    for k, v in items:
        vals = tuple(int(i) for i in (v if isinstance(v, (list, tuple)) else [v]))
        if set(vals) != {0}:
            regions.append((str(k), vals))
    order = dataset.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(regions):
        raise ModelError(f"{source}: a region-based dataset.json needs regions_class_order with one label per "
                         f"region ({len(regions)}); got {order!r}")
    return Labels({0: "background"}, regions, [int(c) for c in order])


@dataclass
class NnUNetFolder:
    """Everything read from a result folder."""

    root: Path
    plans: dict
    dataset: dict
    configuration: str
    config: dict
    labels: Labels
    channel_names: list[str]
    intensity: dict[str, dict]
    folds: list[str]
    checkpoints: list[Path]
    weights: list[dict[str, torch.Tensor]]
    mirror_axes: tuple[int, ...] | None
    trainer: str
    use_mirroring: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _channel_names(dataset: dict, source: Path) -> list[str]:
    ch = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(ch, dict) or not ch:
        raise ModelError(f"{source}: dataset.json needs 'channel_names' (e.g. {{\"0\": \"T1\", \"1\": \"T2\"}})")
    try:
        return [str(v) for _, v in sorted(ch.items(), key=lambda kv: int(kv[0]))]
    except ValueError:
        raise ModelError(f"{source}: dataset.json channel_names keys must be 0, 1, ...") from None


def _intensity(plans: dict, root: Path) -> dict[str, dict]:
    props = plans.get("foreground_intensity_properties_per_channel",
                      plans.get("foreground_intensity_properties_by_modality"))
    if not isinstance(props, dict) and (root / "dataset_fingerprint.json").is_file():
        props = read_json(root / "dataset_fingerprint.json", "dataset fingerprint").get(
            "foreground_intensity_properties_per_channel")
    return props if isinstance(props, dict) else {}


def read_folder(value: str, checkpoint: str | None = None) -> NnUNetFolder:
    """Parse ``value`` (the spec without ``nnunet:``) and read the folder and its checkpoints."""
    spec = parse_spec(value)
    root = spec.root
    found = find_folds(root, spec.folds, checkpoint or CHECKPOINT)
    plans = read_json(root / "plans.json", "nnU-Net plans")
    dataset = read_json(root / "dataset.json", "nnU-Net dataset description")
    ckpts = [load_checkpoint(p) for _, p in found]
    name = configuration_name(root, ckpts)
    config = resolve_configuration(plans, name, root / "plans.json")
    channels = _channel_names(dataset, root / "dataset.json")
    axes = ckpts[0].get("inference_allowed_mirroring_axes")
    return NnUNetFolder(
        root=root, plans=plans, dataset=dataset, configuration=name, config=config,
        labels=read_labels(dataset, root / "dataset.json"), channel_names=channels,
        intensity=_intensity(plans, root), folds=[f for f, _ in found],
        checkpoints=[p for _, p in found], weights=[c["network_weights"] for c in ckpts],
        mirror_axes=None if axes is None else tuple(int(a) for a in axes),
        trainer=str(ckpts[0].get("trainer_name", "")), use_mirroring=spec.use_mirroring,
    )
