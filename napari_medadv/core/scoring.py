"""The figures of metrics.json for an :class:`~napari_medadv.core.outcome.AttackOutcome`: Dice
per label and BraTS region, image quality (PSNR, SSIM, RMSE, norms), classifier probabilities.

:func:`outcome_metrics` computed on its own is the definition (MONAI's Dice, float64 image
quality); :func:`measured_metrics` gives the same figures from the fast passes of
:mod:`~napari_medadv.core.readouts` and is what a finished attack records."""

from __future__ import annotations

import numpy as np
import torch

from . import metrics as M
from .brats import BRATS_REGIONS
from .models.base import LoadedModel
from .outcome import AttackOutcome
from .readouts import DiceTable, SegmentationReadouts, channel_ranges, computed_quality


def _dice_block(pred: np.ndarray, ref: np.ndarray, label_values, model: LoadedModel, n_outputs: int) -> dict:
    """Dice per label (named by the model's ``label_names``), foreground Dice, and the BraTS
    tumour regions WT/TC/ET only for a model that declares BraTS labels or regions."""
    info = model.info
    labels = [int(v) for v in label_values if int(v) != 0]
    out = {"per_label": {str(k): v for k, v in M.dice_per_label(pred, ref, labels).items()},
           "label_names": {str(k): info.label_name(k) for k in labels},
           "foreground": M.foreground_dice(pred, ref)}
    if info.brats_regions(n_outputs):
        out["regions"] = M.dice_regions(pred, ref)
    return out


def label_values(o: AttackOutcome) -> list[int]:
    """Label values the model can output (with 0), for per-label Dice."""
    info = o.model.info
    n_out = int(o.clean_output.shape[1])
    if info.sigmoid_regions(n_out) is not None:
        return info.region_label_values(n_out)
    if info.output == "sigmoid":
        values = list(info.label_values or range(1, n_out + 1))
        return sorted({0, *(values[1:] if len(values) == n_out + 1 else values)})
    if info.label_values is not None:
        return list(info.label_values)
    if info.output in ("softmax", "probabilities"):
        return list(range(n_out))
    return sorted(set(np.unique(o.seg_clean).tolist()) | {0})


def dice_table(o: AttackOutcome) -> DiceTable:
    """The :class:`~napari_medadv.core.readouts.DiceTable` of ``o``'s model: its label values,
    names, and the BraTS regions when it declares them (as :func:`_dice_block` reports them)."""
    info = o.model.info
    values = label_values(o)
    regions = BRATS_REGIONS if info.brats_regions(int(o.clean_output.shape[1])) else None
    return DiceTable(values, regions, {v: info.label_name(v) for v in values if v != 0})


def measured_metrics(o: AttackOutcome, *, quality: dict | None = None) -> dict:
    """:func:`outcome_metrics` of a finished outcome, the figures from the fast passes that the live
    readouts use (tested equal to the definition): Dice from one ``bincount`` of the joint label
    code instead of MONAI's one-hot masks per label and region, image quality from float32 passes
    with float64 sums and SSIM in slabs (:func:`measured_image_quality`) — 1.9 s instead of 8.7 s at BraTS size. ``quality``: the
    ``image_quality`` block when already known (a transfer outcome has the same two images)."""
    segmentation = None
    if o.model.info.task == "segmentation" and DiceTable.holds(label_values(o)):
        dice, _ = SegmentationReadouts(dice_table(o), o.seg_clean, o.labels)(o.seg_adv)
        segmentation = dice, int(np.count_nonzero(o.seg_clean != o.seg_adv))  # label values, not table indices
    # else (a classifier, or more labels than a uint8 table holds): outcome_metrics' own definition
    if quality is None or quality.get("ssim", 0.0) is None:  # none given, or one with SSIM pending
        quality = measured_image_quality(o.image.array, o.adversarial, o.image.channel_names)
    o.metrics = outcome_metrics(o, quality=quality, segmentation=segmentation)
    return o.metrics


def image_quality_per_channel(clean: np.ndarray, adv: np.ndarray, names) -> dict:
    """PSNR/SSIM/RMSE per channel on that channel's own range, the image-level aggregates, and the norms.

    The image-level PSNR is :func:`~napari_medadv.core.metrics.psnr_channels`, from the mean over
    channels of the range-normalised MSE (``10 log10(1 / mean_c(MSE_c / range_c²))``): finite whenever any channel changed, unlike the
    mean of per-channel PSNRs, which is infinite as soon as one channel is untouched (a model that
    reads only some channels). ``psnr_mean_of_channels`` keeps the per-channel mean (finite
    channels only) for comparison; SSIM and RMSE are channel means.
    """
    per = {}
    for c, name in enumerate(names):
        rng = float(clean[c].max() - clean[c].min()) or 1.0
        per[name] = {"psnr": M.psnr(clean[c], adv[c], rng), "ssim": M.ssim(clean[c], adv[c], rng),
                     "rmse": M.rmse(clean[c], adv[c]), "linf": float(np.abs(adv[c] - clean[c]).max()),
                     "linf_fraction_of_range": float(np.abs(adv[c] - clean[c]).max() / rng)}
    finite = [p["psnr"] for p in per.values() if np.isfinite(p["psnr"])]
    # psnr_channels' formula from the per-channel RMSEs already computed (no second pass over
    # the voxels: at BraTS size each pass costs about 0.1 s per channel)
    nmse = float(np.mean([(p["rmse"] / (float(clean[c].max() - clean[c].min()) or 1.0)) ** 2
                          for c, p in enumerate(per.values())]))
    agg = {"psnr": float("inf") if nmse == 0 else float(10.0 * np.log10(1.0 / nmse)),
           "psnr_mean_of_channels": float(np.mean(finite)) if finite else float("inf"),
           "ssim": float(np.mean([p["ssim"] for p in per.values()])),
           "rmse": float(np.mean([p["rmse"] for p in per.values()]))}
    norms = M.perturbation_norms(clean, adv, channel_axis=0)
    return {**agg, **norms, "per_channel": per}


def measured_image_quality(clean: np.ndarray, adv: np.ndarray, names, ranges=None) -> dict:
    """:func:`image_quality_per_channel`'s block from float32 passes with float64 sums
    (:func:`~napari_medadv.core.readouts.computed_quality`) and SSIM in slabs: the same figures
    (tested); 2.9 s instead of 7.5 s at BraTS size. ``ranges``: each channel's max - min when known."""
    ranges = channel_ranges(clean) if ranges is None else ranges
    ssim = [M.ssim(clean[c], adv[c], ranges[c]) for c in range(len(names))]
    return computed_quality(torch.from_numpy(clean), torch.from_numpy(adv), names, ranges, ssim)


def fill_ssim(o: AttackOutcome, ranges=None) -> AttackOutcome:
    """Fill SSIM where ``o.metrics`` left it pending (``None``: the live path computes it last);
    ``ranges``: each channel's max - min when the caller has them cached."""
    for _ in fill_ssim_steps(o, ranges):
        pass
    return o


def fill_ssim_steps(o: AttackOutcome, ranges=None):
    """:func:`fill_ssim` as a generator yielding between slabs (:func:`~napari_medadv.core.metrics.ssim_steps`),
    so a front end can run a newer slider move before the SSIM of an older one is done; the
    figures are written once all channels are (a half-filled block is never seen)."""
    q = o.metrics.get("image_quality")
    if not q or q.get("ssim", 0.0) is not None:
        return o
    clean = o.image.array
    values = []
    for c in range(len(o.image.channel_names)):
        rng = ranges[c] if ranges is not None else (float(clean[c].max() - clean[c].min()) or 1.0)
        values.append((yield from M.ssim_steps(clean[c], o.adversarial[c], rng)))
        yield None
    for name, v in zip(o.image.channel_names, values):
        q["per_channel"][name]["ssim"] = v
    q["ssim"] = float(np.mean(values))
    return o


def outcome_metrics(o: AttackOutcome, *, quality: dict | None = None,
                    segmentation: tuple[dict, int] | None = None) -> dict:
    """metrics.json content: Dice vs ground truth/clean, image quality, ε, probabilities.

    ``quality`` (the ``image_quality`` block) and ``segmentation`` (the Dice blocks and the count
    of changed voxels) may come precomputed, e.g. from the live path's incremental readouts
    (:mod:`~napari_medadv.core.readouts`); by default they are computed here, which is their
    definition."""
    out: dict = {
        "attack": o.attack,
        "eps": o.result.eps,
        "eps_native": dict(zip(o.image.channel_names, o.result.eps_native[0])),
        "image_quality": (quality if quality is not None
                          else image_quality_per_channel(o.image.array, o.adversarial, o.image.channel_names)),
        "model_calls": {"forward": o.result.n_forward, "backward": o.result.n_backward},
        "cancelled": o.result.cancelled,
        "seconds": round(o.seconds, 3),
    }
    if o.channel_mapping is not None:
        out["channels"] = o.channel_mapping.describe()
    if o.vulnerability is not None:
        out["vulnerability"] = o.vulnerability.describe()
    if o.result.success is not None:
        out["success"] = o.result.success[0]
    if "l0" in o.result.extra:
        out["dgde_l0"] = o.result.extra["l0"][0]
        target = o.params.get("max_pixels")
        if target is not None:  # a pixel target asked for: say whether the search got there
            out["dgde_pixel_target_met"] = out["dgde_l0"] is not None and out["dgde_l0"] <= int(target)
    if o.model.info.task == "segmentation":
        dice, changed = segmentation if segmentation is not None else segmentation_dice(o)
        out["dice"] = dice
        out["reference"] = "ground truth" if o.labels is not None else "clean prediction"
        out["segmentation_changed_voxels"] = int(changed)
    else:
        names = o.model.info.class_names or [str(i) for i in range(len(o.probs_clean))]
        out["probabilities"] = {
            n: {"clean": float(c), "adversarial": float(a), "change": float(a - c),
                "decision_flipped": bool((c >= 0.5) != (a >= 0.5))}
            for n, c, a in zip(names, o.probs_clean, o.probs_adv)
        }
        out["top1_changed"] = bool(np.argmax(o.probs_clean) != np.argmax(o.probs_adv))
        out["classifier"] = _classifier_block(o)
    return out


def _classifier_block(o: AttackOutcome) -> dict:
    """k-accuracy (k = 1, 3), MLACC, MSE/BCE and, for risk-targeted PGD, RISK (Ghamizi et al. 2023).

    MLACC's per-label thresholds: the model's ``info.extra["thresholds"]`` when it declares them,
    else 0.5 (torchxrayvision's released models map each label's operating threshold to 0.5)."""
    info = o.model.info
    thr = (info.extra or {}).get("thresholds", 0.5)
    lab = None if o.labels is None else np.asarray(o.labels, dtype=np.float64).ravel()
    ref = lab if lab is not None and lab.size == len(o.probs_clean) else None
    target = o.result.extra.get("risk_target")
    block = M.classifier_metrics(o.probs_clean, o.probs_adv, reference=ref, thresholds=thr,
                               logits_adv=M.logits_of(o.adv_output[0].detach().cpu().numpy(), info.output),
                               risk_target=None if target is None else target[0])
    block["thresholds_from"] = "model" if "thresholds" in (info.extra or {}) else "0.5 for every label"
    if "cooccurrence_source" in o.result.extra:
        block["cooccurrence_source"] = o.result.extra["cooccurrence_source"]
    return block


def segmentation_dice(o: AttackOutcome) -> tuple[dict, int]:
    """The Dice blocks of metrics.json (clean vs adversarial; and each against the ground truth when
    given) and the number of voxels whose label changed."""
    values = label_values(o)
    n_out = int(o.clean_output.shape[1])
    dice = {"clean_vs_adversarial": _dice_block(o.seg_adv, o.seg_clean, values, o.model, n_out)}
    if o.labels is not None:
        dice["ground_truth_vs_clean"] = _dice_block(o.seg_clean, o.labels, values, o.model, n_out)
        dice["ground_truth_vs_adversarial"] = _dice_block(o.seg_adv, o.labels, values, o.model, n_out)
    return dice, int(np.count_nonzero(o.seg_clean != o.seg_adv))
