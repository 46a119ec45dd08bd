"""Readouts that cost little next to a forward pass, for the live ε path at real size.

:func:`~napari_medadv.core.scoring.outcome_metrics` is the reference (MONAI's Dice, float64
image quality) and stays the definition; the classes here give the same numbers with less work
for a stream of outcomes on one image and one model:

* :class:`DiceTable`: Dice per label, foreground Dice and the BraTS regions from one confusion
  matrix, i.e. one ``bincount`` over a joint code of ``uint8`` label-index maps, instead of one masked
  pass per label and region. Written by hand because MONAI's ``compute_dice`` takes one one-hot
  channel per label or region (several full-volume float tensors per block: 3.9 s per live update
  at BraTS size); tested equal to :mod:`~napari_medadv.core.metrics`.
* :class:`FgsmQuality`: PSNR, RMSE, L0, L2 and L∞ of FGSM's image at any ε without touching the
  image. FGSM's change at a voxel is ``clip(x + ε·w·s) - x``, so its magnitude is
  ``min(ε·w, h)`` with ``h`` the voxel's headroom towards the bound in the direction ``s``; the
  headrooms smaller than ``w`` are sorted once (with cumulative squares) and each ε is a binary
  search. The figures equal the ones computed on the float32 image to float32 rounding.
* :func:`quality_summary`: the ``image_quality`` block of metrics.json from per-channel sums, used
  by both the computed and the analytic path so they cannot drift apart in form.

SSIM needs the image (a filtered pass per channel): it is left out of the fast readouts
(``None`` = pending) and filled in afterwards (:meth:`~napari_medadv.core.live.LiveEps.add_ssim`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .metrics import difference_sums


# --------------------------------------------------------------------------- image quality


def quality_summary(names: Sequence[str], ranges: Sequence[float], sse: Sequence[float],
                    linf: Sequence[float], n_voxels: int, l0: int,
                    ssim: Sequence[float | None] | None = None) -> dict:
    """metrics.json's ``image_quality`` block from per-channel sums.

    ``ranges``: each clean channel's max - min (1 for a constant one); ``sse``: each channel's sum
    of squared changes; ``linf``: each channel's largest change; ``n_voxels``: voxels per channel;
    ``l0``: voxels where any channel changed; ``ssim``: per-channel SSIM, ``None`` while pending.
    The image-level PSNR is :func:`~napari_medadv.core.metrics.psnr_channels`'
    ``10 log10(1 / mean_c(MSE_c / range_c²))``.
    """
    ssim = list(ssim) if ssim is not None else [None] * len(names)
    per = {}
    nmse = []
    for name, rng, s, li, ss in zip(names, ranges, sse, linf, ssim):
        mse = float(s) / n_voxels
        rmse = float(np.sqrt(mse))
        per[name] = {"psnr": float("inf") if rmse == 0 else float(20.0 * np.log10(rng / rmse)),
                     "ssim": ss, "rmse": rmse, "linf": float(li),
                     "linf_fraction_of_range": float(li) / rng}
        nmse.append(mse / rng ** 2)
    finite = [p["psnr"] for p in per.values() if np.isfinite(p["psnr"])]
    mean_nmse = float(np.mean(nmse))
    pending = any(s is None for s in ssim)
    total = n_voxels
    return {
        "psnr": float("inf") if mean_nmse == 0 else float(10.0 * np.log10(1.0 / mean_nmse)),
        "psnr_mean_of_channels": float(np.mean(finite)) if finite else float("inf"),
        "ssim": None if pending else float(np.mean(ssim)),
        "rmse": float(np.mean([p["rmse"] for p in per.values()])),
        "l0": int(l0),
        "l0_fraction": float(l0 / total) if total else 0.0,
        "l2": float(np.sqrt(float(np.sum(sse)))),
        "linf": float(max(linf)) if len(linf) else 0.0,
        "per_channel": per,
    }


def channel_ranges(image: np.ndarray) -> list[float]:
    """Each channel's max - min (1 for a constant channel), as the quality figures use it."""
    return [float(image[c].max() - image[c].min()) or 1.0 for c in range(image.shape[0])]


class FgsmQuality:
    """Analytic image-quality figures of :class:`~napari_medadv.core.attacks.FGSM`'s image at any ε.

    Built from a prepared FGSM (its cached gradient sign, ROI and clamp bounds) in one pass over
    the image; :meth:`at` then costs a binary search per channel. Exact for ``0 <= ε <= 1``
    (beyond, the headroom table would need the uncapped headrooms: :meth:`covers` says False and
    callers compute on the image).
    """

    def __init__(self, fgsm, names: Sequence[str], ranges: Sequence[float]):
        ctx = fgsm._cache["ctx"]
        x = ctx.x
        # the change at ε = 1 is min(w, h) at every voxel the sign and the ROI move: the same
        # arithmetic as at_eps, so clamping, the ROI and float32 follow FGSM exactly
        full = (fgsm.at_eps(1.0) - x).abs()[0].float()  # C *spatial
        width = ctx.range.width.reshape(-1)[: x.shape[1]].double().cpu().numpy()
        self.names = list(names)
        self.ranges = [float(r) for r in ranges]
        self.width = width
        self.n_voxels = int(np.prod(x.shape[2:]))
        moved = full > 0
        self.l0 = int(moved.any(0).sum())
        # float32 cannot represent a change smaller than half an ulp of the value it is added to
        self._tiny = (x[0].abs().flatten(1).amax(1).double().cpu().numpy() * np.finfo(np.float32).eps * 4)
        self.count, self.partial, self.cumsq, self.hmax = [], [], [], []
        for c in range(x.shape[1]):
            h = full[c][moved[c]]
            n = int(h.numel())
            w32 = float(torch.tensor(width[c], dtype=torch.float32))
            short = torch.sort(h[h < w32]).values.double().cpu().numpy() if n else np.zeros(0)
            self.count.append(n)
            self.partial.append(short)
            self.cumsq.append(np.concatenate([[0.0], np.cumsum(short ** 2)]))
            self.hmax.append(float(h.max()) if n else 0.0)

    def covers(self, eps: float) -> bool:
        """Whether :meth:`at` is exact at ``eps``: within the headroom table and large enough to
        show in float32 (a change below the values' rounding step leaves voxels unchanged)."""
        if not 0.0 <= eps <= 1.0:
            return False
        return eps == 0.0 or all(eps * w > t or n == 0 for w, t, n in zip(self.width, self._tiny, self.count))

    def sums(self, eps: float) -> tuple[list[float], list[float], int]:
        """Per-channel sum of squared changes and largest change, and L0, at ``eps``."""
        sse, linf = [], []
        for c, w in enumerate(self.width):
            t = eps * w
            n = self.count[c]
            if n == 0 or t == 0:
                sse.append(0.0)
                linf.append(0.0)
                continue
            short = self.partial[c]
            k = int(np.searchsorted(short, t, side="left"))  # these clamp before reaching ε·w
            sse.append(float(self.cumsq[c][k] + (n - k) * t * t))
            linf.append(min(t, self.hmax[c]))
        return sse, linf, (self.l0 if eps > 0 else 0)

    def at(self, eps: float, ssim: Sequence[float | None] | None = None) -> dict:
        """The ``image_quality`` block at ``eps`` (SSIM pending unless given)."""
        sse, linf, l0 = self.sums(eps)
        return quality_summary(self.names, self.ranges, sse, linf, self.n_voxels, l0, ssim)


def computed_quality(clean: torch.Tensor, adv: torch.Tensor, names: Sequence[str], ranges: Sequence[float],
                     ssim: Sequence[float | None] | None = None) -> dict:
    """The ``image_quality`` block computed on the images (``C *spatial`` tensors): one pass in
    float32 slabs with float64 sums (:func:`~napari_medadv.core.metrics.difference_sums`), for
    attacks without an analytic form."""
    sse, linf, l0 = difference_sums(clean[None], adv[None])
    n = int(np.prod(clean.shape[1:])) if clean.ndim > 1 else 1
    return quality_summary(names, ranges, sse[0].tolist(), linf[0].tolist(), n, int(l0[0]), ssim)


# --------------------------------------------------------------------------- Dice


class DiceTable:
    """Dice of every label, the foreground and (optionally) the BraTS regions from one confusion
    matrix over paired label-index maps.

    ``labels``: the label values to report (0 ignored); ``regions``: name -> label values, or None;
    ``names``: label value -> display name.
    Label values map to small indices (0 = background, one per reported or region value, and one
    "other non-zero" bucket), so a pair of maps is one ``bincount``. Small values (all below
    :attr:`DENSE_MAX`, BraTS' 0..4) are their own index: a model's ``uint8`` label map is then an
    index map as it is, with no lookup pass. Dice of masks ``P`` and ``R`` is
    ``2|P∩R| / (|P| + |R|)``, 1 when both are empty (MONAI's ``ignore_empty=False``).
    """

    DENSE_MAX = 29  # values 0..29 index themselves: three maps' joint code (k³ ≤ 31³) fits int16
    MAX_VALUES = 254  # reported and region values a table holds (uint8 indices: 0, these, "other")

    def __init__(self, labels: Sequence[int], regions: Mapping[str, Sequence[int]] | None = None,
                 names: Mapping[int, str] | None = None):
        self.labels = [int(v) for v in labels if int(v) != 0]
        self.regions = dict(regions) if regions else None
        self.names = {int(k): str(v) for k, v in (names or {}).items()}
        values = list(self.labels)
        for members in (self.regions or {}).values():
            values += [int(v) for v in members if int(v) != 0 and int(v) not in values]
        self.dense = all(0 < v <= self.DENSE_MAX for v in values)
        self.values = list(range(max(values, default=0) + 1)) if self.dense else [0, *values]
        self.other = len(self.values)  # index of any other non-zero value
        self.k = self.other + 1
        if self.k > self.MAX_VALUES + 1:
            raise ValueError(f"{len(self.values)} label values: the confusion table keeps at most {self.MAX_VALUES}")
        self._index = {v: i for i, v in enumerate(self.values)}

    @classmethod
    def holds(cls, labels: Sequence[int]) -> bool:
        """Whether a table of these label values fits ``uint8`` indices (beyond, one mask per label)."""
        return len({int(v) for v in labels} - {0}) < cls.MAX_VALUES

    def indices(self, label_map: np.ndarray) -> np.ndarray:
        """Label values -> ``uint8`` indices of this table (a dense table's ``uint8`` map within
        range is returned as it is, not copied)."""
        a = np.asarray(label_map)
        if self.dense and a.dtype == np.uint8 and (a.size == 0 or int(a.max()) < self.other):
            return a
        if a.dtype.kind in "ui" and a.size and 0 <= int(a.min()) and int(a.max()) < 1 << 16:
            # a lookup table over the value range: one gather, no sorting
            lut = np.full(int(a.max()) + 1, self.other, np.uint8)
            lut[0] = 0
            for v, i in self._index.items():
                if v < lut.size:
                    lut[v] = i
            return lut[a]
        uniq, inv = np.unique(a, return_inverse=True)
        lut = np.array([self._index.get(int(v), self.other) if v != 0 else 0 for v in uniq], np.uint8)
        return lut[inv].reshape(a.shape)

    def code(self, first: np.ndarray, rest: np.ndarray, n_rest: int = 1) -> np.ndarray:
        """One joint code per voxel, ``first · k^n_rest + rest``, from an index map and another
        index map (``n_rest = 1``) or a code of ``n_rest`` maps, in the smallest signed type."""
        first, rest = np.asarray(first), np.asarray(rest)
        if first.shape != rest.shape:
            raise ValueError(f"label maps differ in shape: {first.shape} vs {rest.shape}")
        span = self.k ** (n_rest + 1)
        dtype = np.int16 if span <= 1 << 15 else np.int32 if span <= 1 << 31 else np.int64
        out = first.astype(dtype)
        out *= dtype(self.k ** n_rest)
        out += rest
        return out

    def joint(self, code: np.ndarray, n_maps: int) -> np.ndarray:
        """Counts of a joint code of ``n_maps`` index maps, shaped ``k × … × k``. torch's
        ``bincount`` takes the small integer types as they are (numpy's converts to int64 first:
        4 ms against 40 ms for 9 M voxels)."""
        counts = torch.bincount(torch.from_numpy(np.ascontiguousarray(code).reshape(-1)),
                                minlength=self.k ** n_maps)
        return counts.numpy().reshape((self.k,) * n_maps)

    def confusion(self, pred_idx: np.ndarray, ref_idx: np.ndarray) -> np.ndarray:
        """``K x K`` counts: rows the prediction's index, columns the reference's."""
        return self.joint(self.code(pred_idx, ref_idx), 2)

    @staticmethod
    def _dice(conf: np.ndarray, idx: list[int]) -> float:
        inter = float(conf[np.ix_(idx, idx)].sum())
        denom = float(conf[idx, :].sum() + conf[:, idx].sum())
        return 1.0 if denom == 0 else 2.0 * inter / denom

    def block(self, conf: np.ndarray) -> dict:
        """The Dice block of metrics.json (as ``scoring._dice_block`` writes it)."""
        out = {"per_label": {str(v): self._dice(conf, [self._index[v]]) for v in self.labels},
               "label_names": {str(v): self.names.get(v, str(v)) for v in self.labels},
               "foreground": self._dice(conf, list(range(1, self.k)))}
        if self.regions is not None:
            out["regions"] = {n: self._dice(conf, [self._index[int(v)] for v in members if int(v) != 0])
                              for n, members in self.regions.items()}
        return out

    @staticmethod
    def changed(conf: np.ndarray) -> int:
        """Voxels whose index differs between the two maps."""
        return int(conf.sum() - np.trace(conf))


class SegmentationReadouts:
    """The Dice blocks of metrics.json for adversarial label maps against one clean map (and the
    ground truth when given), one ``bincount`` of a joint code each; the clean side (index maps,
    the joint clean × ground-truth code, the constant clean-vs-ground-truth block) is built once."""

    def __init__(self, table: DiceTable, seg_clean: np.ndarray, labels: np.ndarray | None = None):
        self.table = table
        self.clean = table.indices(seg_clean)
        self.clean_gt = self.gt_block = None
        if labels is not None:
            self.clean_gt = table.code(self.clean, table.indices(labels))
            self.gt_block = table.block(table.joint(self.clean_gt, 2))

    def __call__(self, seg_adv: np.ndarray) -> tuple[dict, int]:
        """``(Dice blocks, voxels whose table index changed)`` of ``seg_adv``: both confusion
        matrices are margins of one count over (adversarial, clean, ground truth)."""
        table = self.table
        adv = table.indices(seg_adv)
        if self.clean_gt is None:
            conf = table.confusion(adv, self.clean)
            return {"clean_vs_adversarial": table.block(conf)}, table.changed(conf)
        counts = table.joint(table.code(adv, self.clean_gt, 2), 3)
        conf = counts.sum(2)
        return ({"clean_vs_adversarial": table.block(conf), "ground_truth_vs_clean": self.gt_block,
                 "ground_truth_vs_adversarial": table.block(counts.sum(1))}, table.changed(conf))

