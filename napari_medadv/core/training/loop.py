"""The training loops of the demo models and their defended variants: one optimiser loop
(:func:`fit`), the batches it draws (3-D volumes, axial slices, radiographs) and the held-out
scores (Dice per BraTS region, AUC per finding)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..brats import BRATS_LABELS
from ..metrics import dice_regions
from ..models.base import NativeInputModel
from ..models.demo import SliceWise

Log = Callable[[str], None]

#: label values of the glioma demo models, in the order of their output channels
GLIOMA_LABELS = list(BRATS_LABELS)


def _to_index(seg: np.ndarray) -> np.ndarray:
    idx = np.zeros_like(seg)
    for i, v in enumerate(GLIOMA_LABELS):
        idx[seg == v] = i
    return idx


def fit(module: nn.Module, tr: dict, steps_per_epoch: int, batches: Callable, loss_of: Callable, log: Log) -> None:
    """The one training loop: Adam + one-cycle schedule, ``steps_per_epoch`` batches per epoch.

    ``batches()`` yields the batches of one epoch; ``loss_of(batch)`` returns the loss tensor.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tr["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tr["lr"], total_steps=tr["epochs"] * steps_per_epoch)
    module.train()
    for epoch in range(tr["epochs"]):
        losses = []
        for batch in batches():
            loss = loss_of(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        log(f"epoch {epoch + 1}/{tr['epochs']}: loss {np.mean(losses):.4f}")
    module.eval()


def _epoch_indices(rng: np.random.Generator, n: int, batch: int):
    order = rng.permutation(n)
    for s in range(max(1, n // batch)):
        yield order[s * batch : (s + 1) * batch]


def _train_slicewise(model: NativeInputModel, data, tr: dict, rng: np.random.Generator, log: Log) -> None:
    """2-D training on axial slices of the normalised volumes (Liu et al. train their 2D-UNet on
    slices too); batches draw 60 % of their slices from slices that contain tumour."""
    from monai.losses import DiceCELoss  # monai takes seconds to import: only when training

    net2d = model.net.net
    axis = model.net.axis
    slices_img, slices_seg, tumour = [], [], []
    with torch.no_grad():
        for img, seg in data:
            z = model.normalize(torch.from_numpy(img)[None])[0].numpy()  # C X Y Z
            idx = _to_index(seg)
            for k in range(z.shape[axis]):
                slices_img.append(np.take(z, k, axis=axis))
                s = np.take(idx, k, axis=axis)
                slices_seg.append(s)
                tumour.append(bool(s.any()))
    slices_img = np.stack(slices_img).astype(np.float32)
    slices_seg = np.stack(slices_seg)
    tumour = np.flatnonzero(tumour)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    steps = max(1, len(data) * 4)

    def batches():
        for _ in range(steps):
            n_t = int(tr["batch"] * 0.6)
            pick = np.concatenate([rng.choice(tumour, n_t), rng.integers(0, len(slices_img), tr["batch"] - n_t)])
            x, y = slices_img[pick].copy(), slices_seg[pick].copy()
            flip = rng.random(len(pick)) < 0.5
            x[flip] = x[flip][:, :, ::-1]
            y[flip] = y[flip][:, ::-1]
            yield torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))[:, None]

    fit(net2d, tr, steps, batches, lambda b: loss_fn(net2d(b[0]), b[1]), log)
    model.eval()


def train_segmentation(model: NativeInputModel, data, tr: dict, rng: np.random.Generator, log: Log) -> None:
    """Train a glioma segmentation model on ``(image, labels)`` cases: 3-D batches, or axial slices
    for a slice-wise 2-D network; MONAI's Dice + cross-entropy loss."""
    from monai.losses import DiceCELoss  # monai takes seconds to import: only when training

    if isinstance(model.net, SliceWise):
        return _train_slicewise(model, data, tr, rng, log)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def batches():
        yield from segmentation_batches(data, tr, rng)

    fit(model, tr, max(1, len(data) // tr["batch"]), batches, lambda b: loss_fn(model(b[0]), b[1]), log)


def segmentation_batches(data, tr: dict, rng: np.random.Generator):
    """One epoch of 3-D training batches ``(B C X Y Z float32, B 1 X Y Z class indices)``:
    random left-right flips and per-channel intensity scaling (also used by the defenses)."""
    for idx in _epoch_indices(rng, len(data), tr["batch"]):
        imgs, segs = [], []
        for i in idx:
            img, seg = data[i]
            if rng.random() < 0.5:  # left-right flip (axis 0 is x in RAS-ordered phantoms)
                img, seg = img[:, ::-1], seg[::-1]
            scale = rng.uniform(0.9, 1.1, size=(img.shape[0],) + (1,) * (img.ndim - 1))
            imgs.append(np.ascontiguousarray(img * scale, dtype=np.float32))
            segs.append(np.ascontiguousarray(_to_index(seg)))
        yield torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(segs))[:, None]


def train_classifier(model: NativeInputModel, data, tr: dict, rng: np.random.Generator, log: Log) -> None:
    """Train a multi-label classifier on ``(image, 0/1 labels)`` cases with binary cross-entropy."""
    loss_fn = nn.BCEWithLogitsLoss()

    def batches():
        for idx in _epoch_indices(rng, len(data), tr["batch"]):
            yield (torch.from_numpy(np.stack([data[i][0] for i in idx])),
                   torch.from_numpy(np.stack([data[i][1] for i in idx])))

    fit(model, tr, max(1, len(data) // tr["batch"]), batches, lambda b: loss_fn(model(b[0]), b[1]), log)


@torch.no_grad()
def evaluate_glioma(model: nn.Module, cases) -> dict:
    """Mean Dice per BraTS region on (image, labels) cases, using label values."""
    model.eval()
    scores = {"WT": [], "TC": [], "ET": []}
    for img, seg in cases:
        out = model(torch.from_numpy(np.ascontiguousarray(img))[None])
        pred = np.asarray(GLIOMA_LABELS)[out.argmax(1)[0].numpy()]
        for k, v in dice_regions(pred, seg).items():
            scores[k].append(v)
    return {k: round(float(np.mean(v)), 4) for k, v in scores.items()}


@torch.no_grad()
def evaluate_cxr(model: nn.Module, cases) -> dict:
    """AUC per finding (and mean) on (image, labels) cases."""
    from scipy.stats import mannwhitneyu  # scipy: only when evaluating, not at `medadv` start-up

    model.eval()
    probs = torch.sigmoid(model(torch.from_numpy(np.stack([c[0] for c in cases])))).numpy()
    labels = np.stack([c[1] for c in cases])
    out = {}
    for j in range(labels.shape[1]):
        pos, neg = probs[labels[:, j] == 1, j], probs[labels[:, j] == 0, j]
        if len(pos) and len(neg):
            # AUC = Mann-Whitney U / (n_pos n_neg), computed by scipy rather than by hand
            out[f"auc_{j}"] = round(float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))), 4)
    out["auc_mean"] = round(float(np.mean(list(out.values()))), 4) if out else float("nan")
    return out
