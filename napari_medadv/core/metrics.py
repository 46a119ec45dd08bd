"""Metrics for segmentation, image quality, perturbation size and classifier robustness.

Inputs are numpy arrays or torch tensors; results are plain Python floats (JSON-ready).

Conventions (documented once, used everywhere):

* **Dice of an absent structure**: when a label/region is empty in *both* masks, Dice is 1.0
  (the two agree that it is absent); empty in one only gives 0.0. This is MONAI's
  ``compute_dice(..., ignore_empty=False)`` behaviour, which is what computes it here.
* **BraTS regions**: whole tumor WT = {1, 2, 4}, tumor core TC = {1, 4}, enhancing ET = {4}.
* **Image-quality reference**: PSNR/SSIM/RMSE compare the perturbed image with the clean one.
  ``data_range`` defaults to ``clean.max() - clean.min()`` (per image, all channels), the range ε
  is a fraction of for single-channel data.
* **L0** counts changed *pixels/voxels* (spatial positions where any channel changed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .brats import BRATS_REGIONS  # noqa: F401 (the one definition; dice_regions default)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _t(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x))


# --------------------------------------------------------------------------- segmentation


def _dice_masks(pred_masks: list[torch.Tensor], ref_masks: list[torch.Tensor]) -> list[float]:
    from monai.metrics import compute_dice

    if not pred_masks:
        return []
    p = torch.stack(pred_masks)[None].float()  # 1 K *spatial (one channel per label/region)
    r = torch.stack(ref_masks)[None].float()
    d = compute_dice(p, r, include_background=True, ignore_empty=False)
    return [float(v) for v in d[0]]


def dice_per_label(pred, ref, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice for each label value of two label maps of the same shape.

    ``labels`` defaults to every non-zero value present in either map.
    """
    p, r = _t(pred), _t(ref)
    if p.shape != r.shape:
        raise ValueError(f"label maps differ in shape: {tuple(p.shape)} vs {tuple(r.shape)}")
    if labels is None:
        labels = sorted(set(torch.unique(p).tolist()) | set(torch.unique(r).tolist()) - {0})
        labels = [v for v in labels if v != 0]
    labels = [int(v) for v in labels]
    vals = _dice_masks([p == v for v in labels], [r == v for v in labels])
    return dict(zip(labels, vals))


def dice_regions(pred, ref, regions: Mapping[str, Sequence[int]] = BRATS_REGIONS) -> dict[str, float]:
    """Dice of unions of labels (default: the BraTS WT/TC/ET regions)."""
    p, r = _t(pred), _t(ref)
    if p.shape != r.shape:
        raise ValueError(f"label maps differ in shape: {tuple(p.shape)} vs {tuple(r.shape)}")
    names = list(regions)
    pm = [torch.isin(p, torch.tensor(list(regions[n]), dtype=p.dtype)) for n in names]
    rm = [torch.isin(r, torch.tensor(list(regions[n]), dtype=r.dtype)) for n in names]
    return dict(zip(names, _dice_masks(pm, rm)))


def foreground_dice(pred, ref) -> float:
    """Dice of the union of all non-zero labels (the "whole tumor" of any label set)."""
    p, r = _t(pred) != 0, _t(ref) != 0
    return _dice_masks([p], [r])[0]


def foreground_dice_fast(pred: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """:func:`foreground_dice` per sample of ``B *spatial`` tensors, by counting on their device.

    Written out (the Dice of two masks is three counts) because MONAI's ``compute_dice`` wants
    float one-hot channels: the per-iteration tracking of an attack calls this at every step on
    full volumes. 1 when both are empty, as ``compute_dice(ignore_empty=False)``; tested equal.
    """
    out = []
    # whole-tensor count_nonzero per sample: a bool sum, or a count along a dimension, runs a
    # reduction kernel that is 25× slower (90 ms against 4 ms for a BraTS-size pair on 2 cores)
    for p, r in zip(pred != 0, ref != 0):
        inter = int(torch.count_nonzero(p & r))
        denom = int(torch.count_nonzero(p)) + int(torch.count_nonzero(r))
        out.append(2.0 * inter / denom if denom else 1.0)
    return out


def channel_argmax(output: torch.Tensor, values=None, chunk: int = 1 << 18) -> torch.Tensor:
    """``output.argmax(1)`` as ``uint8`` (first maximum on ties, as torch's), for up to 255 channels;
    with ``values`` (one per channel, 0..255) the label value of the arg-max instead of its index.

    Written out because torch's arg-max over a non-last axis of few channels is slow on CPU (1.7 s
    for a 4×240×240×155 output on 2 cores, against 0.15 s for these K - 1 comparisons). The
    comparisons run over slabs of ``chunk`` voxels, so each channel's slab is read from memory once
    and compared in cache, and the label value is written in the same pass (no lookup pass after).
    More channels, CUDA tensors or outputs with NaN take torch's.
    """
    b, k = int(output.shape[0]), int(output.shape[1])
    vals = list(range(k)) if values is None else [int(v) for v in values]
    if values is not None and (len(vals) != k or not all(0 <= v <= 255 for v in vals)):
        raise ValueError(f"need {k} label values in 0..255, got {vals}")
    if k > 255 or output.is_cuda:
        return _mapped_argmax(output, vals)
    flat = output.reshape(b, k, -1)  # a view of a contiguous output
    n = int(flat.shape[2])
    idx = torch.empty((b, n), dtype=torch.uint8, device=output.device)
    step = max(1, min(n, chunk // max(b, 1)))
    best = torch.empty((b, step), dtype=output.dtype)
    gt = torch.empty((b, step), dtype=torch.bool)
    nan = torch.zeros((), dtype=torch.bool)
    for s in range(0, n, step):
        w = min(n, s + step) - s
        ib, bb, gb = idx[:, s:s + w], best[:, :w], gt[:, :w]
        ib.fill_(vals[0])
        bb.copy_(flat[:, 0, s:s + w])
        for c in range(1, k):
            cur = flat[:, c, s:s + w]
            torch.gt(cur, bb, out=gb)
            ib.masked_fill_(gb, vals[c])
            torch.maximum(bb, cur, out=bb)
        nan |= torch.isnan(bb).any()  # maximum propagates NaN: one check per slab suffices
    if bool(nan):
        return _mapped_argmax(output, vals)
    return idx.reshape((b,) + tuple(output.shape[2:]))


def argmax_nonzero(output: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """``output.argmax(1) != 0`` (bool, ``B *spatial``): where a channel after the first holds the
    (first) maximum, i.e. the foreground of a softmax-style output.

    What per-iteration tracking needs for its foreground Dice, without the label map: the largest
    of channels ``1..K-1`` compared once with channel 0, in slabs as :func:`channel_argmax` (K - 1
    passes over each slab in cache against its 3(K - 1)): 32 ms instead of 110 ms for a
    4×240×240×155 output on 2 cores. CUDA tensors and outputs with NaN take torch's arg-max."""
    b, k = int(output.shape[0]), int(output.shape[1])
    if k < 2:
        return torch.zeros((b,) + tuple(output.shape[2:]), dtype=torch.bool, device=output.device)
    if output.is_cuda:
        return output.argmax(1) != 0
    flat = output.reshape(b, k, -1)
    n = int(flat.shape[2])
    fg = torch.empty((b, n), dtype=torch.bool)
    step = max(1, min(n, chunk // max(b, 1)))
    best = torch.empty((b, step), dtype=output.dtype)
    nan = torch.zeros((), dtype=torch.bool)
    for s in range(0, n, step):
        w = min(n, s + step) - s
        bb = best[:, :w]
        bb.copy_(flat[:, 1, s:s + w])
        for c in range(2, k):
            torch.maximum(bb, flat[:, c, s:s + w], out=bb)
        torch.gt(bb, flat[:, 0, s:s + w], out=fg[:, s:s + w])
        nan |= torch.isnan(bb).any() | torch.isnan(flat[:, 0, s:s + w]).any()
    if bool(nan):
        return output.argmax(1) != 0
    return fg.reshape((b,) + tuple(output.shape[2:]))


def foreground_overlap(output: torch.Tensor, ref_fg: torch.Tensor, chunk: int = 1 << 18
                       ) -> tuple[list[int], list[int]]:
    """Per sample of a ``B K *spatial`` output: how many voxels its arg-max puts in the foreground
    (a channel after the first, as :func:`argmax_nonzero`) and how many of them ``ref_fg`` (bool,
    ``B *spatial``) holds too — the two counts of a foreground Dice that change with the output.

    The arg-max and both counts in one pass over slabs of ``chunk`` voxels: per-iteration tracking
    needs the counts, not the mask (:func:`argmax_nonzero` writes a full-size mask, then
    :func:`foreground_dice_fast` compares both label maps with 0 again and ands them: 90 ms for a
    BraTS-size output on 2 cores against about 40 ms here). Equal to those (tested); CUDA tensors
    and outputs with NaN take torch's arg-max."""
    b, k = int(output.shape[0]), int(output.shape[1])
    ref = ref_fg.reshape(b, -1)
    if k < 2:
        return [0] * b, [0] * b
    if output.is_cuda:
        fg = (output.argmax(1) != 0).reshape(b, -1)
        return ([int(torch.count_nonzero(f)) for f in fg],
                [int(torch.count_nonzero(f & r)) for f, r in zip(fg, ref.to(fg.device))])
    flat = output.reshape(b, k, -1)
    n = int(flat.shape[2])
    if int(ref.shape[1]) != n:
        raise ValueError(f"the reference has {int(ref.shape[1])} voxels per sample, the output {n}")
    step = max(1, min(n, chunk // max(b, 1)))
    best = torch.empty((b, step), dtype=output.dtype)
    fg = torch.empty((b, step), dtype=torch.bool)
    both = torch.empty((b, step), dtype=torch.bool)
    pred_n, inter = [0] * b, [0] * b
    nan = torch.zeros((), dtype=torch.bool)
    for s in range(0, n, step):
        w = min(n, s + step) - s
        bb, fb, ab = best[:, :w], fg[:, :w], both[:, :w]
        bb.copy_(flat[:, 1, s:s + w])
        for c in range(2, k):
            torch.maximum(bb, flat[:, c, s:s + w], out=bb)
        torch.gt(bb, flat[:, 0, s:s + w], out=fb)
        torch.logical_and(fb, ref[:, s:s + w], out=ab)
        for i in range(b):  # whole-tensor counts (see foreground_dice_fast)
            pred_n[i] += int(torch.count_nonzero(fb[i]))
            inter[i] += int(torch.count_nonzero(ab[i]))
        nan |= torch.isnan(bb).any() | torch.isnan(flat[:, 0, s:s + w]).any()
    if bool(nan):
        fg_all = (output.argmax(1) != 0).reshape(b, -1)
        return ([int(torch.count_nonzero(f)) for f in fg_all],
                [int(torch.count_nonzero(f & r)) for f, r in zip(fg_all, ref)])
    return pred_n, inter


def dice_from_counts(pred_n: int, ref_n: int, inter: int) -> float:
    """Dice of two masks from their sizes and overlap; 1 when both are empty (MONAI's
    ``ignore_empty=False``)."""
    denom = pred_n + ref_n
    return 2.0 * inter / denom if denom else 1.0


def _mapped_argmax(output: torch.Tensor, vals: list[int]) -> torch.Tensor:
    am = output.argmax(1)
    if vals == list(range(len(vals))):
        return am.to(torch.uint8 if len(vals) <= 256 else torch.int64)
    return torch.tensor(vals, dtype=torch.uint8, device=output.device)[am]


# --------------------------------------------------------------------------- image quality


def _range(clean: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        return float(data_range)
    rng = float(clean.max() - clean.min())
    return rng if rng > 0 else 1.0


def rmse(clean, perturbed) -> float:
    c, p = _np(clean).astype(np.float64), _np(perturbed).astype(np.float64)
    if c.shape != p.shape:
        raise ValueError(f"images differ in shape: {c.shape} vs {p.shape}")
    return float(np.sqrt(np.mean((c - p) ** 2)))


def psnr(clean, perturbed, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    c = _np(clean).astype(np.float64)
    err = rmse(c, perturbed)
    if err == 0:
        return float("inf")
    return float(20.0 * np.log10(_range(c, data_range) / err))


def psnr_channels(clean, perturbed) -> float:
    """PSNR of a multi-channel image ``C *spatial``, each channel on its own range (max - min of the
    clean channel; 1 for a constant one): ``10 log10(1 / mean_c(MSE_c / range_c²))``.

    Averaging the normalised MSEs rather than the per-channel PSNRs keeps the figure finite
    whenever any channel changed (a perturbation that leaves a channel untouched would make the
    mean of PSNRs infinite); ``inf`` only for identical images.
    """
    c = _np(clean).astype(np.float64)
    p = _np(perturbed).astype(np.float64)
    if c.shape != p.shape:
        raise ValueError(f"images differ in shape: {c.shape} vs {p.shape}")
    nmse = []
    for ch in range(c.shape[0]):
        rng = float(c[ch].max() - c[ch].min()) or 1.0
        nmse.append(float(np.mean((c[ch] - p[ch]) ** 2)) / rng ** 2)
    mse = float(np.mean(nmse))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def difference_sums(clean: torch.Tensor, perturbed: torch.Tensor, chunk: int = 1 << 15
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of ``d = perturbed - clean`` (``B C *spatial`` tensors): per sample and channel the sum of
    ``d²`` in float64 (``B C``) and the largest ``|d|`` (``B C``), and per sample the number of
    voxels where any channel changed (``B``, L0).

    Written as slabs of ``chunk`` voxels because the plain tensor expressions (``d``, ``d²``, a
    float64 copy, ``|d|``, ``d != 0``: each a full-size temporary) make seven passes and as many
    fresh page-faulted allocations: 0.31 s for a BraTS-size 4×240×240×155 pair on 2 cores, against
    0.05 s here, where each slab is subtracted, widened to float64 and summed while it is in cache.
    The float64 sums are those of the plain expression up to summation order (tested). CUDA
    tensors take the plain expressions (no cache to fit, one kernel each)."""
    b, c = int(clean.shape[0]), int(clean.shape[1])
    x = clean.detach().reshape(b, c, -1)
    y = perturbed.detach().reshape(b, c, -1)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(clean.shape)} vs {tuple(perturbed.shape)}")
    work = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    if x.is_cuda or y.is_cuda:
        d = y.to(work) - x.to(work)
        sse = d.square().sum(2, dtype=torch.float64)
        ad = d.abs()
        linf = ad.amax(2).double() if d.shape[2] else torch.zeros((b, c), dtype=torch.float64, device=d.device)
        l0 = torch.count_nonzero(ad.amax(1), dim=1) if c else torch.zeros(b, dtype=torch.int64)
        return sse.cpu().numpy(), linf.cpu().numpy(), l0.cpu().numpy()
    n = int(x.shape[2])
    step = max(1, min(n, chunk))
    sse = np.zeros((b, c))
    linf = torch.zeros((b, c), dtype=torch.float64)
    l0 = np.zeros(b, dtype=np.int64)
    buf = torch.empty((c, step), dtype=work)
    wide = torch.empty((c, step), dtype=torch.float64) if work != torch.float64 else None
    most = torch.empty((c,), dtype=work)
    for i in range(b):
        for s in range(0, n, step):
            w = min(n, s + step) - s
            d = buf[:, :w]
            d.copy_(y[i, :, s:s + w])  # then subtract in the working type (int16 - int16 could wrap)
            d.sub_(x[i, :, s:s + w])
            dd = d if wide is None else wide[:, :w].copy_(d)
            for ch in range(c):
                sse[i, ch] += float(torch.dot(dd[ch], dd[ch]))
            d.abs_()
            torch.amax(d, 1, out=most)
            torch.maximum(linf[i], most.double(), out=linf[i])
            if c:
                l0[i] += int(torch.count_nonzero(torch.amax(d, 0)))
    return sse, linf.numpy(), l0


def psnr_channels_fast(clean: torch.Tensor, perturbed: torch.Tensor, ranges: torch.Tensor,
                       sums: tuple | None = None) -> list[float]:
    """:func:`psnr_channels` per sample of ``B C *spatial`` tensors (:func:`difference_sums`: float32
    slabs, float64 sums); ``ranges``: each sample's and channel's clean max - min, ``B C``;
    ``sums``: the :func:`difference_sums` of these two tensors when the caller has them."""
    sse, _, _ = sums if sums is not None else difference_sums(clean, perturbed)
    n = int(np.prod(clean.shape[2:])) if clean.ndim > 2 else 1
    rng = ranges.detach().cpu().double().numpy() if isinstance(ranges, torch.Tensor) else np.asarray(ranges, float)
    nmse = (sse / n / rng.reshape(sse.shape) ** 2).mean(1)
    return [float("inf") if v == 0 else float(10.0 * np.log10(1.0 / v)) for v in nmse.tolist()]


def ssim(clean, perturbed, data_range: float | None = None, spatial_dims: int | None = None) -> float:
    """Structural similarity (Gaussian window σ = 1.5, 11 wide, K1 = 0.01, K2 = 0.03).

    Accepts ``*spatial``, ``C *spatial`` or ``B C *spatial``; 2-D and 3-D. The formula and
    window are MONAI's ``SSIMMetric`` (valid-mode Gaussian filtering, mean over the map), per
    channel and averaged; the filtering is done separably (see :func:`_ssim_map`). ``spatial_dims``
    is inferred as the number of trailing axes larger than 1 when not given (2 for ``H W`` /
    ``C H W``, 3 for volumes).
    """
    steps = ssim_steps(clean, perturbed, data_range, spatial_dims)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


#: voxels of input per SSIM slab: slabs that fit the cache made a BraTS channel 3x faster than
#: the whole volume at once (0.40 s vs 1.2 s on 2 cores) and are the steps of :func:`ssim_steps`
SSIM_SLAB = 1 << 20


def ssim_steps(clean, perturbed, data_range: float | None = None, spatial_dims: int | None = None):
    """:func:`ssim` as a generator: it yields (None) after each slab of the first spatial axis and
    returns the SSIM, so a caller can do other work between two slabs.

    Valid-mode filtering makes the map's rows ``a..b`` depend on the input rows ``a..b+win-1``
    only, so the slabs' maps are exactly the whole map's; their sums are taken in float64."""
    c = _t(clean).float()
    p = _t(perturbed).float()
    if c.shape != p.shape:
        raise ValueError(f"images differ in shape: {tuple(c.shape)} vs {tuple(p.shape)}")
    if spatial_dims is None:
        spatial_dims = 3 if c.ndim >= 4 or (c.ndim == 3 and min(c.shape) > 4) else 2
    while c.ndim < spatial_dims + 2:
        c, p = c[None], p[None]
    c = c.reshape(-1, 1, *c.shape[-spatial_dims:])
    p = p.reshape(-1, 1, *p.shape[-spatial_dims:])
    smallest = min(c.shape[2:])
    win = min(11, smallest if smallest % 2 else smallest - 1)
    if win < 3:
        raise ValueError(f"SSIM needs every spatial axis >= 3 voxels, got {tuple(c.shape[2:])}")
    rng = _range(_np(clean), data_range)
    n_rows = c.shape[2] - win + 1  # rows of the map along the first spatial axis
    plane = int(np.prod(c.shape[3:]))
    rows = max(8, SSIM_SLAB // plane - (win - 1))
    total = torch.zeros(c.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for a in range(0, n_rows, rows):
            b = min(a + rows, n_rows)
            m = _ssim_map(p[:, :, a:b + win - 1], c[:, :, a:b + win - 1], rng, win, spatial_dims)
            total += m.flatten(1).sum(1, dtype=torch.float64).cpu()
            if b < n_rows:
                yield None
    count = n_rows * int(np.prod([s - win + 1 for s in c.shape[3:]]))
    return float((total / count).mean())


def _ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float, win: int, spatial_dims: int,
              sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """MONAI's ``compute_ssim_and_cs`` SSIM map with the Gaussian window applied axis by axis.

    Written out because MONAI convolves with the full 11 x 11 x 11 kernel (1331 multiply-adds
    per voxel and map, ~1.4 s per demo volume, a third of a study case); its Gaussian kernel is
    the outer product of 1-D Gaussians, so three 1-D passes (33) give the same numbers
    (tested against ``monai.metrics.SSIMMetric`` to float32 rounding).
    """
    dist = torch.arange(start=(1 - win) / 2, end=(1 + win) / 2, step=1)
    g = torch.exp(-torch.pow(dist / sigma, 2) / 2)
    g = (g / g.sum()).to(x)
    conv = getattr(F, f"conv{spatial_dims}d")
    n = x.shape[0]
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # n 5 *spatial: all five maps in one pass
    for axis in range(spatial_dims):
        shape = [1] * spatial_dims
        shape[axis] = win
        stack = conv(stack, g.reshape(1, 1, *shape).expand(5, 1, *shape), groups=5)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = stack.split(1, dim=1)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    sigma_x = mu_xx - mu_x * mu_x
    sigma_y = mu_yy - mu_y * mu_y
    sigma_xy = mu_xy - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    return ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs.reshape(n, 1, *cs.shape[2:])


def perturbation_norms(clean, perturbed, channel_axis: int | None = 0, atol: float = 0.0) -> dict:
    """L0 (count and fraction of changed pixels/voxels), L2 and L∞ of ``perturbed - clean``.

    ``channel_axis`` is the axis holding channels (a pixel counts as changed when any of its
    channels changed); ``None`` treats every element as a pixel.
    """
    c, p = _np(clean).astype(np.float64), _np(perturbed).astype(np.float64)
    if c.shape != p.shape:
        raise ValueError(f"images differ in shape: {c.shape} vs {p.shape}")
    d = p - c
    changed = np.abs(d) > atol
    if channel_axis is not None and d.ndim > 1:
        changed = changed.any(axis=channel_axis)
    n = changed.size
    return {
        "l0": int(changed.sum()),
        "l0_fraction": float(changed.sum() / n) if n else 0.0,
        "l2": float(np.sqrt((d**2).sum())),
        "linf": float(np.abs(d).max()) if d.size else 0.0,
    }


def image_quality(clean, perturbed, data_range: float | None = None, channel_axis: int | None = 0) -> dict:
    """PSNR, SSIM, RMSE and the perturbation norms in one dict (for metrics.json/readouts)."""
    out = {
        "psnr": psnr(clean, perturbed, data_range),
        "ssim": ssim(clean, perturbed, data_range),
        "rmse": rmse(clean, perturbed),
    }
    out.update(perturbation_norms(clean, perturbed, channel_axis=channel_axis))
    return out


# --------------------------------------------------------------------------- classifiers


def top1_accuracy(scores, labels) -> float:
    """Fraction of samples whose arg-max class equals ``labels`` (indices, or multi-hot → any hit)."""
    s = _np(scores)
    y = _np(labels)
    pred = s.argmax(1)
    if y.ndim == 2:
        return float(np.mean(y[np.arange(len(pred)), pred] > 0))
    return float(np.mean(pred == y))


def _topk(v: np.ndarray, k: int) -> np.ndarray:
    # stable descending sort: ties among the *scores* are broken by the lower label index
    return np.argsort(-v, axis=1, kind="stable")[:, :k]


def k_accuracy_per_sample(scores, reference, k: int) -> np.ndarray:
    """Ghamizi et al. 2023, definition 1: ``|argsort_k(ŷ) ∩ argsort_k(ȳ)| / k`` for each sample.

    ``reference`` is the ground truth ȳ (multi-hot or probabilities) — or, to measure how much
    an attack changed the prediction, the clean prediction.

    **Tie rule.** Definition 1 takes "the indices of the top k elements" of ȳ, which is not
    unique when ȳ is binary: every finding of an image with several findings ties at 1, every
    other label at 0. The definition is read as "*a* top-k set of ȳ": any k labels that no
    label outside them exceeds. Of those sets the one sharing most labels with the prediction's
    top k is taken — i.e. labels of ȳ strictly above its k-th largest value all count, and of
    the labels tied *at* the k-th value as many as the prediction has in its top k (up to the
    places left). So for k = 1 the score is 1 exactly when the top predicted label is one of
    the findings — the standard (multi-label) top-1 accuracy, as the paper says definition 2
    gives for k = 1 (:func:`top1_accuracy`), whatever the label order. An image without any
    finding (ȳ all zeros) has every label tied and scores 1. Ties among the predicted scores
    (continuous, rarely tied) are broken by the lower label index.
    """
    s, r = _np(scores).astype(np.float64), _np(reference).astype(np.float64)
    if s.shape != r.shape or s.ndim != 2:
        raise ValueError(f"scores and reference must both be (n, M); got {s.shape} and {r.shape}")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be in 1..{s.shape[1]}, got {k}")
    pred = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(pred, _topk(s, k), True, axis=1)
    kth = -np.sort(-r, axis=1)[:, k - 1 : k]  # the k-th largest reference value per sample
    above, tied = r > kth, r == kth
    sure = (pred & above).sum(1)
    places = k - above.sum(1)  # how many of the tied labels a top-k set of ȳ holds
    shared = sure + np.minimum(places, (pred & tied).sum(1))
    return shared / k


def k_accuracy(scores, reference, k: int) -> float:
    """Ghamizi definition 2: the mean of :func:`k_accuracy_per_sample` over the inputs.

    Evaluated on adversarial outputs this is the *k-robust accuracy*.
    """
    return float(k_accuracy_per_sample(scores, reference, k).mean())


def operating_thresholds(scores, labels) -> np.ndarray:
    """Per-label operating thresholds, as Cohen et al. (torchxrayvision) calibrate their models and
    Ghamizi et al. 2023 use for MLACC ("different thresholds are used for each label as proposed
    by Cohen et al."): the threshold of the ROC point that maximises ``TPR − FPR`` (Youden's J),
    from ``sklearn.metrics.roc_curve`` on ``(n, M)`` scores against the binary ``(n, M)`` labels.

    A label whose column holds only one class (no ROC curve) gets 0.5. Scores ≥ the threshold
    are positive.
    """
    from sklearn.metrics import roc_curve  # deferred: only MLACC needs scikit-learn

    s, y = _np(scores).astype(np.float64), _np(labels)
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores and labels must both be (n, M); got {s.shape} and {y.shape}")
    y = y > 0.5
    out = np.full(s.shape[1], 0.5)
    for j in range(s.shape[1]):
        if y[:, j].all() or not y[:, j].any():
            continue
        fpr, tpr, thr = roc_curve(y[:, j], s[:, j])
        best = int(np.argmax(tpr - fpr))
        out[j] = min(float(thr[best]), float(s[:, j].max()))  # roc_curve's first threshold is inf
    return out


def multilabel_accuracy_per_sample(scores, reference, thresholds=0.5) -> np.ndarray:
    """Multi-label accuracy (MLACC) of each sample: the fraction of labels on which the
    thresholded prediction ``ŷ_i ≥ τ_i`` agrees with the binary reference ``ȳ_i`` (Hamming
    accuracy, the per-label agreement of multi-label evaluation, Song et al. 2018 as cited by
    Ghamizi et al. 2023), with one threshold τ_i per label (:func:`operating_thresholds`) or one
    for all. A real-valued reference (e.g. the risk target ``C(ŷ*)``) is binarised at 0.5.
    """
    s, r = _np(scores).astype(np.float64), _np(reference).astype(np.float64)
    if s.shape != r.shape or s.ndim != 2:
        raise ValueError(f"scores and reference must both be (n, M); got {s.shape} and {r.shape}")
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != s.shape[1]):
        raise ValueError(f"thresholds must be one number or one per label ({s.shape[1]}), got shape {t.shape}")
    return ((s >= t) == (r >= 0.5)).mean(1)


def multilabel_accuracy(scores, reference, thresholds=0.5) -> float:
    """MLACC over the inputs: the mean of :func:`multilabel_accuracy_per_sample`."""
    return float(multilabel_accuracy_per_sample(scores, reference, thresholds).mean())


def success_rate(clean_scores, adv_scores) -> float:
    """Fraction of samples whose top-1 prediction changed under attack."""
    c, a = _np(clean_scores), _np(adv_scores)
    return float(np.mean(c.argmax(1) != a.argmax(1)))


def cooccurrence_matrix(multihot) -> np.ndarray:
    """Label co-occurrence counts ``C[i, j] = #samples with labels i and j`` from ``(n, M)``."""
    y = (_np(multihot) > 0).astype(np.float64)
    if y.ndim != 2:
        raise ValueError(f"expected an (n_samples, n_labels) multi-hot matrix, got shape {y.shape}")
    return y.T @ y


def inverse_cooccurrence(multihot=None, *, counts=None) -> np.ndarray:
    """Normalised inverse co-occurrence matrix C of Ghamizi et al. 2023 (section 5).

    ``C[i, j] = 1 - P(j | i)`` with ``P(j | i) = counts[i, j] / counts[i, i]`` — the higher the
    value, the less likely label j appears with label i. The diagonal is 0 (a label surely
    co-occurs with itself) and a label never seen has row 1 off the diagonal. The paper gives
    no formula for "normalised"; conditioning on the row label keeps every entry in [0, 1] and
    makes rows comparable across label frequencies.
    """
    cnt = cooccurrence_matrix(multihot) if counts is None else _np(counts).astype(np.float64)
    diag = np.diag(cnt).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(diag[:, None] > 0, cnt / diag[:, None], 0.0)
    inv = 1.0 - np.clip(cond, 0.0, 1.0)
    np.fill_diagonal(inv, 0.0)
    return inv


def risk(adv_scores, clean_scores, inv_cooc) -> float:
    """RISK of Ghamizi et al. 2023: ``mean_x M(x*) · C(ŷ*)``.

    ``adv_scores`` are the adversarial probabilities ``M(x*)``; ``ŷ*`` is the most probable
    label of the clean prediction and ``C(ŷ*)`` its row of the inverse co-occurrence matrix.
    """
    a, c, inv = _np(adv_scores), _np(clean_scores), _np(inv_cooc)
    if a.shape != c.shape or a.ndim != 2 or inv.shape != (a.shape[1], a.shape[1]):
        raise ValueError(
            f"need adv/clean scores (n, M) and C (M, M); got {a.shape}, {c.shape}, {inv.shape}"
        )
    rows = inv[c.argmax(1)]
    return float(np.mean((a * rows).sum(1)))


def logits_of(output, kind: str) -> np.ndarray:
    """The logits RISK is computed from (Ghamizi: "a vectorial product between the predicted
    logits of the adversarial example and the target"): a model's raw output when it is logits
    (``kind`` ``"sigmoid"``/``"softmax"``: activated afterwards), else — a model that outputs
    probabilities — the sigmoid logit ``log(p / (1 - p))`` of each probability (p clipped to
    ``[1e-7, 1 - 1e-7]``)."""
    x = _np(output).astype(np.float64)
    if kind in ("sigmoid", "softmax"):
        return x
    p = np.clip(x, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def classifier_metrics(probs_clean, probs_adv, *, reference=None, logits_adv=None, risk_target=None,
                       thresholds=0.5) -> dict:
    """Ghamizi et al. 2023's per-image classifier figures for metrics.json (one image, ``M`` labels).

    ``reference``: the binary ground truth ȳ (``M``), else the clean prediction thresholded at
    ``thresholds``. Gives the k-accuracy for k = 1 and 3 (definition 1, :func:`k_accuracy_per_sample`),
    MLACC with the per-label ``thresholds`` (:func:`multilabel_accuracy_per_sample`), MSE and BCE of
    the adversarial probabilities against the clean ones and, for a risk-targeted attack
    (``risk_target`` = ``C(ŷ*)``), RISK from the logits (the paper) and from the probabilities,
    and MLACC against the target ("how close the output is to the target output").
    """
    pc = _np(probs_clean).astype(np.float64).reshape(1, -1)
    pa = _np(probs_adv).astype(np.float64).reshape(1, -1)
    m = pc.shape[1]
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (m,))
    if reference is None:
        ref, ref_name = (pc >= thr).astype(np.float64), "clean prediction (thresholded)"
    else:
        ref, ref_name = _np(reference).astype(np.float64).reshape(1, -1), "ground truth"
    out: dict = {"reference": ref_name}
    for k in (1, 3):
        if k <= m:
            out[f"k{k}_accuracy"] = float(k_accuracy_per_sample(pa, ref, k)[0])
    out["mlacc"] = float(multilabel_accuracy_per_sample(pa, ref, thr)[0])
    out["mlacc_thresholds"] = [float(t) for t in thr]
    q = np.clip(pa, 1e-7, 1 - 1e-7)
    out["mse"] = float(np.mean((pa - pc) ** 2))
    out["bce"] = float(np.mean(-(pc * np.log(q) + (1 - pc) * np.log(1 - q))))
    if risk_target is not None:
        t = _np(risk_target).astype(np.float64).reshape(1, -1)
        z = pa if logits_adv is None else _np(logits_adv).astype(np.float64).reshape(1, -1)
        out["risk"] = {"logits": float((z * t).sum()), "probabilities": float((pa * t).sum()),
                       "from_logits": logits_adv is not None}
        out["mlacc_vs_risk_target"] = float(multilabel_accuracy_per_sample(pa, t, thr)[0])
    return out
