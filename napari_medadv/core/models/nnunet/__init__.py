"""``nnunet:DIR[:FOLDS][:notta]`` — nnU-Net v2 models, with nnU-Net's whole inference inside the wrapped model.

``DIR`` is a trained model folder (``nnUNetTrainer__nnUNetPlans__3d_fullres``: ``plans.json``,
``dataset.json``, ``fold_N/checkpoint_final.pth``); ``FOLDS`` is ``0``, ``0,1,2`` or ``all``
(default: every ``fold_N`` with a checkpoint, ensembled as nnU-Net does); ``notta`` turns nnU-Net's
mirroring test-time augmentation off (it is on by default, as in ``nnUNetv2_predict``). The
``weights`` argument of :func:`~napari_medadv.core.models.load_model` (``--weights``) names another
checkpoint file inside each fold, e.g. ``checkpoint_best.pth``.

Nothing from the folder is executed: the networks are built from the plans by
:mod:`.networks` (nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet``), the checkpoints are read
with ``torch.load(weights_only=True)``, so the scheme needs no ``trust_code``.

>>> from napari_medadv.core.models import load_model
>>> model = load_model("nnunet:Dataset137_BraTS2021/nnUNetTrainer__nnUNetPlans__3d_fullres:0")  # doctest: +SKIP
"""

from __future__ import annotations

import re

from ...errors import ModelError
from ..adapters import load_weights_strict
from ..base import ModelInfo
from ..registry import register_scheme
from .folder import NORMALIZATIONS, READERS, NnUNetFolder, read_folder
from .inference import NnUNetModel, Plan
from .networks import build_network
from .resample import resampler

__all__ = ["NnUNetModel", "load_nnunet"]

_BRATS_ALIASES = {"WT": ("wt", "whole tumor", "whole tumour"), "TC": ("tc", "tumor core", "tumour core"),
                  "ET": ("et", "enhancing tumor", "enhancing tumour", "enhancing")}


def _brats_region(name: str) -> str | None:
    low = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    return next((r for r, al in _BRATS_ALIASES.items() if low in al), None)


def _region_fields(folder: NnUNetFolder) -> dict:
    """ModelInfo fields of a region-based model: BraTS's WT/TC/ET (nested, named so) become the
    BraTS regions the rest of napari-medadv knows (labels 1, 2, 4); any other regions keep nnU-Net's
    label values and ``regions_class_order``."""
    regions, paint = folder.labels.regions, folder.labels.region_values
    mapped = [_brats_region(n) for n, _ in regions]
    sets = {m: set(v) for m, (_, v) in zip(mapped, regions)}
    if (sorted(filter(None, mapped)) == ["ET", "TC", "WT"]
            and sets["ET"] and sets["ET"] < sets["TC"] < sets["WT"]):
        return {"output": "sigmoid", "region_names": mapped}
    names = [n for n, _ in regions]
    return {"output": "sigmoid", "region_names": names, "region_labels": {n: list(v) for n, v in regions},
            "label_values": list(paint), "label_names": {str(c): n for c, (n, _) in zip(paint, regions)}}


def _image_dims(folder: NnUNetFolder) -> int:
    """2 for a 2-D dataset (nnU-Net reads it as one slice), else 3 (a 2d configuration then runs
    slice by slice over a volume)."""
    if len(folder.config["patch_size"]) == 3:
        return 3
    shape = folder.plans.get("original_median_shape_after_transp") or [0]
    two_d = folder.plans.get("image_reader_writer") == "NaturalImage2DIO" or int(shape[0]) == 1
    return 2 if two_d else 3


def build_plan(folder: NnUNetFolder) -> Plan:
    c, plans, src = folder.config, folder.plans, folder.root / "plans.json"
    schemes = tuple(str(s) for s in c.get("normalization_schemes", []))
    n = len(folder.channel_names)
    if len(schemes) != n or any(s not in NORMALIZATIONS for s in schemes):
        raise ModelError(f"{src}: normalization_schemes {list(schemes)} must name one of {list(NORMALIZATIONS)} "
                         f"for each of the {n} channels")
    use_mask = c.get("use_mask_for_norm", [False] * n)
    if not isinstance(use_mask, list) or len(use_mask) != n:
        raise ModelError(f"{src}: use_mask_for_norm must have one entry per channel ({n}); got {use_mask!r}")
    intensity = tuple(folder.intensity.get(str(i)) for i in range(n))
    for i, s in enumerate(schemes):
        need = ("mean", "std", "percentile_00_5", "percentile_99_5")
        if s == "CTNormalization" and not all(k in (intensity[i] or {}) for k in need):
            raise ModelError(f"{src}: channel {i} uses CTNormalization but the plans (or dataset_fingerprint.json) "
                             f"give no foreground intensity properties {list(need)} for it")
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in READERS:
        raise ModelError(f"{src}: image_reader_writer {reader!r} is not supported; known: {list(READERS)}")
    return Plan(
        patch_size=tuple(int(p) for p in c["patch_size"]), spacing=tuple(float(s) for s in c["spacing"]),
        transpose_forward=tuple(int(t) for t in plans.get("transpose_forward", (0, 1, 2))),
        transpose_backward=tuple(int(t) for t in plans.get("transpose_backward", (0, 1, 2))),
        schemes=schemes, use_mask=tuple(bool(m) for m in use_mask),
        intensity=intensity,
        resample_data=resampler(c.get("resampling_fn_data", "resample_data_or_seg_to_shape"),
                                c.get("resampling_fn_data_kwargs")),
        resample_probabilities=resampler(c.get("resampling_fn_probabilities", "resample_data_or_seg_to_shape"),
                                         c.get("resampling_fn_probabilities_kwargs", {"order": 1})),
        reader=reader, image_dims=_image_dims(folder), mirror_axes=folder.mirror_axes,
        regions=folder.labels.regions is not None, n_outputs=folder.labels.n_outputs,
    )


def build_info(folder: NnUNetFolder, plan: Plan) -> ModelInfo:
    dataset = str(folder.plans.get("dataset_name") or folder.dataset.get("name") or folder.root.parent.name)
    fields: dict = {"output": "softmax", "label_values": list(range(len(folder.labels.names))),
                    "label_names": {str(k): v for k, v in folder.labels.names.items()}}
    if folder.labels.regions:
        fields = _region_fields(folder)
    folds = ",".join(folder.folds)
    tta = ", mirroring" if folder.use_mirroring and plan.mirror_axes else ""
    extra = {"source": "nnunet", "folder": str(folder.root), "dataset": dataset, "trainer": folder.trainer,
             "plans": folder.plans.get("plans_name"), "configuration": folder.configuration,
             "folds": list(folder.folds), "patch_size": list(plan.patch_size), "spacing": list(plan.spacing),
             "transpose_forward": list(plan.transpose_forward), "normalization_schemes": list(plan.schemes),
             "use_mask_for_norm": list(plan.use_mask), "image_reader_writer": plan.reader,
             "use_mirroring": folder.use_mirroring, "mirror_axes": plan.mirror_axes}
    return ModelInfo(
        task="segmentation", spatial_dims=plan.image_dims, in_channels=len(folder.channel_names),
        normalization="none", channel_names=list(folder.channel_names),
        name=f"nnU-Net {dataset} {folder.configuration} fold{'s' if len(folder.folds) > 1 else ''} {folds}",
        description=(f"{folder.trainer or 'nnU-Net'} / {folder.plans.get('plans_name', 'plans')}; nnU-Net's "
                     f"preprocessing, sliding window{tta} and fold ensemble inside the model"),
        extra=extra, **fields)


def load_nnunet(value: str, *, weights: str | None = None, trust_code: bool = False,
                info: ModelInfo | None = None):
    """Registry loader for ``nnunet:``; returns the ready :class:`NnUNetModel` (the registry keeps it)."""
    from .folder import checkpoints_checksum

    if weights is not None and ("/" in str(weights) or "\\" in str(weights)):
        raise ModelError(f"nnunet:{value}: --weights names the checkpoint file inside each fold_N "
                         f"(e.g. checkpoint_best.pth), not a path; got {weights}")
    folder = read_folder(value, weights)
    plan = build_plan(folder)
    arch = folder.config["architecture"]
    nets = []
    for fold, state, path in zip(folder.folds, folder.weights, folder.checkpoints):
        try:
            net = build_network(arch.get("network_class_name", ""), arch.get("arch_kwargs", {}),
                                len(folder.channel_names), plan.n_outputs)
        except ModelError as exc:
            raise ModelError(f"{folder.root / 'plans.json'}: {exc}") from None
        load_weights_strict(net, state, path)
        nets.append(net.eval())
    info = info or build_info(folder, plan)
    return NnUNetModel(nets, plan, info, use_mirroring=folder.use_mirroring), info, checkpoints_checksum(
        folder.checkpoints)


register_scheme("nnunet", load_nnunet)
