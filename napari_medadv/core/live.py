"""Live ε: FGSM's fast path on one image and one model, with readouts that cost little next to the
forward pass (the Attack dock's slider, the Plots dock's ε sweep, ``benchmarks/bench_real_size.py``).

:class:`LiveEps` prepares once (one forward + one backward, then the clean side of every readout:
the clean label map as ``uint8`` indices, the ground truth's, the Dice of clean vs ground truth,
each channel's range and FGSM's headroom table). Each ε then costs one forward pass for the image
and the segmentation (:meth:`LiveEps.outcome`), plus a binary search and one or two ``bincount``
passes for the readouts (:meth:`LiveEps.readouts`); SSIM, which needs filtered passes over the
image, comes last and separately (:meth:`LiveEps.add_ssim`), so a front end can show everything
else first and mark SSIM as pending.
"""

from __future__ import annotations

import numpy as np
import torch

from .attacks import AttackResult, FGSM
from .io import ImageData
from .models.base import LoadedModel
from .outcome import AttackOutcome
from .pipeline import content_roi, prepare_input
from .scoring import dice_table, fill_ssim, fill_ssim_steps, label_values, outcome_metrics, segmentation_dice
from .readouts import (DiceTable, FgsmQuality, SegmentationReadouts, channel_ranges, computed_quality,
                       quality_summary)


class OutcomeReadouts:
    """Readouts of many outcomes on one image and model (live ε frames, the steps of a running
    attack): the clean side — clean and ground-truth index maps, their Dice, each channel's
    range — is built once; each outcome then costs one or two ``bincount`` passes and the image
    quality (analytic for FGSM's image at ε when ``quality`` is given, else one pass)."""

    def __init__(self, image: ImageData, model: LoadedModel, labels: np.ndarray | None, roi: np.ndarray | None,
                 seg_clean: np.ndarray | None, quality: FgsmQuality | None = None):
        self.image = image
        self.model = model
        self.labels = None if labels is None else np.asarray(labels)
        self.roi = roi
        self.roi_note = "whole image" if roi is None else f"mask ({int(np.count_nonzero(roi))} voxels)"
        self.ranges = channel_ranges(image.array)
        self.quality = quality
        self.seg_clean = seg_clean
        self._seg = None  # clean side of the Dice readouts (segmentation models)

    # ------------------------------------------------------------------ readouts
    def segmentation_readouts(self, o: AttackOutcome) -> tuple[dict, int]:
        """The Dice blocks and changed-voxel count of ``o``; the clean side is built at the first
        (more labels than a ``uint8`` table holds: the definition's mask per label, every time)."""
        if self._seg is None:
            self._seg = (SegmentationReadouts(dice_table(o), self.seg_clean, self.labels)
                         if DiceTable.holds(label_values(o)) else segmentation_dice)
        return self._seg(o.seg_adv) if isinstance(self._seg, SegmentationReadouts) else self._seg(o)

    def image_quality(self, o: AttackOutcome) -> dict:
        """The ``image_quality`` block of ``o`` without SSIM (pending): analytic for FGSM's image
        at ε (no pass over the image), computed on the images otherwise."""
        eps = float(o.result.eps)
        if (o.attack == "fgsm" and o.adversarial is not None and self.quality is not None
                and self.quality.covers(eps)):
            return self.quality.at(eps)
        if o.difference_sums is not None:  # the attack's tracked step computed them on this iterate
            sse, linf, l0 = o.difference_sums
            return quality_summary(self.image.channel_names, self.ranges, sse[0].tolist(), linf[0].tolist(),
                                   int(np.prod(o.adversarial.shape[1:])), int(l0[0]))
        return computed_quality(torch.from_numpy(self.image.array), torch.from_numpy(o.adversarial),
                                self.image.channel_names, self.ranges)

    def readouts(self, o: AttackOutcome) -> AttackOutcome:
        """Fill ``o.metrics`` as :func:`run_attack` does, except SSIM, which stays ``None``
        (pending) until :meth:`add_ssim`."""
        seg = self.segmentation_readouts(o) if self.model.info.task == "segmentation" else None
        o.metrics = outcome_metrics(o, quality=self.image_quality(o), segmentation=seg)
        o.metrics["roi"] = self.roi_note
        return o

    def add_ssim(self, o: AttackOutcome) -> AttackOutcome:
        """Fill the pending SSIM figures of ``o.metrics`` (one filtered pass per channel)."""
        return fill_ssim(o, self.ranges)

    def add_ssim_steps(self, o: AttackOutcome):
        """:meth:`add_ssim` as a generator that yields between slabs and returns ``o``."""
        return fill_ssim_steps(o, self.ranges)

    def add_metrics(self, o: AttackOutcome) -> AttackOutcome:
        """Fill ``o.metrics`` completely (the readouts, then SSIM)."""
        return self.add_ssim(self.readouts(o))

    @staticmethod
    def ssim_pending(metrics: dict) -> bool:
        return metrics.get("image_quality", {}).get("ssim", 0.0) is None


class LiveEps(OutcomeReadouts):
    """FGSM's fast ε path on an image: ``prepare`` once, then each ε costs one forward pass."""

    def __init__(self, image: ImageData, model: LoadedModel, labels: np.ndarray | None = None, roi="auto"):
        if isinstance(roi, str):
            roi = content_roi(image)
        x, self.channel_mapping = prepare_input(image, model)
        lab = None
        if labels is not None:
            lab = model.label_map_to_target(labels, model.n_outputs or model.forward(x).shape[1])
        self.fgsm = FGSM(model.module, eps=0.05, activation=model.activation(), roi=roi).prepare(x, lab)
        seg_clean = None
        if model.info.task == "segmentation":
            seg_clean = model.to_label_map(self.fgsm.clean_output)[0]
        super().__init__(image, model, labels, roi, seg_clean)
        self.quality = FgsmQuality(self.fgsm, image.channel_names, self.ranges)

    def at(self, eps: float) -> tuple[np.ndarray, torch.Tensor]:
        adv, out = self.fgsm.predict_at_eps(eps)
        return adv[0].detach().cpu().numpy(), out

    def outcome(self, eps: float, *, seed: int = 0, metrics: bool = True) -> AttackOutcome:
        """The :class:`AttackOutcome` at ``eps`` for one forward pass (the clean output comes from
        :meth:`FGSM.prepare`'s forward); ``metrics=False`` leaves ``metrics`` for the caller
        (:meth:`readouts` then :meth:`add_ssim`, or :meth:`add_metrics`), e.g. to update images
        first and readouts after."""
        adv, out = self.at(eps)
        fgsm = self.fgsm
        ctx = fgsm._cache["ctx"]
        clean_out = fgsm.clean_output
        result = AttackResult(
            attack="fgsm", clean=ctx.x, adversarial=torch.as_tensor(adv)[None], eps=float(eps),
            eps_native=fgsm.native_eps(eps), params={**fgsm.get_params(), "eps": float(eps)},
            n_forward=ctx.n_forward + 1, n_backward=ctx.n_backward,
        )
        o = AttackOutcome(image=self.image, model=self.model, attack="fgsm", params=result.params, seed=seed,
                          adversarial=adv.astype(np.float32, copy=False), result=result,
                          clean_output=clean_out, adv_output=out, labels=self.labels,
                          channel_mapping=self.channel_mapping)
        if self.model.info.task == "segmentation":
            o.seg_clean = self.seg_clean
            o.seg_adv = self.model.to_label_map(out)[0]
        else:
            o.probs_clean = self.model.probabilities(clean_out)[0].cpu().numpy()
            o.probs_adv = self.model.probabilities(out)[0].cpu().numpy()
        if metrics:
            self.add_metrics(o)
        return o
