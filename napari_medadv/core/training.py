"""Training of the shipped demo models (``medadv train demo-unet3d|demo-unet2d|demo-cxr``).

Each model is trained end to end *through* :class:`NativeInputModel` (normalisation included), on
phantoms generated on the fly from training seeds (>= ``phantoms.TRAIN_SEED_START``, disjoint from
the shipped held-out cases), on the CPU in minutes. The result is a state dict of the inner
network plus a JSON file with the :class:`ModelInfo`, the architecture and the training record
(seed, sizes, time, held-out scores).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_write, write_json
from .io import BRATS_LABELS
from .models.base import ModelInfo, NativeInputModel
from .models.demo import build_architecture, demo_paths

Log = Callable[[str], None]

GLIOMA_LABELS = list(BRATS_LABELS)

DEMO_CONFIGS = {
    "unet3d": {
        "arch": "monai.UNet",
        "arch_kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "channels": [8, 16, 32, 64],
                        "strides": [2, 2, 2], "num_res_units": 1},
        "info": {"task": "segmentation", "spatial_dims": 3, "in_channels": 4, "output": "softmax",
                 "normalization": "zscore-nonzero", "channel_names": ["t1", "t1ce", "t2", "flair"],
                 "label_values": GLIOMA_LABELS, "roi_size": [64, 80, 64], "spacing": [2.5, 2.5, 2.5],
                 "name": "demo:unet3d", "description": "3-D UNet (MONAI), glioma phantoms, labels 0/1/2/4"},
        "train": {"n_cases": 48, "epochs": 30, "batch": 2, "lr": 3e-3},
    },
    "unet2d": {
        "arch": "monai.UNet-slicewise",
        "arch_kwargs": {"spatial_dims": 2, "in_channels": 4, "out_channels": 4, "channels": [16, 32, 64, 128],
                        "strides": [2, 2, 2], "num_res_units": 1, "slice_axis": -1},
        "info": {"task": "segmentation", "spatial_dims": 3, "in_channels": 4, "output": "softmax",
                 "normalization": "zscore-nonzero", "channel_names": ["t1", "t1ce", "t2", "flair"],
                 "label_values": GLIOMA_LABELS, "spacing": [2.5, 2.5, 2.5],
                 "name": "demo:unet2d",
                 "description": "2-D UNet (MONAI) applied slice by slice (axial), glioma phantoms, labels 0/1/2/4"},
        "train": {"n_cases": 32, "epochs": 12, "batch": 32, "lr": 3e-3},
    },
    "cxr": {
        "arch": "monai.DenseNet",
        "arch_kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_features": 16,
                        "growth_rate": 8, "block_config": [4, 4, 4], "bn_size": 2,
                        "global_pool": "max"},
        "info": {"task": "classification", "spatial_dims": 2, "in_channels": 1, "output": "sigmoid",
                 "normalization": "minmax", "channel_names": ["radiograph"], "class_names": ["nodule", "opacity"],
                 "roi_size": [256, 256], "name": "demo:cxr",
                 "description": "small DenseNet (MONAI), multi-label nodule/opacity on synthetic findings"},
        "train": {"n_cases": 960, "epochs": 10, "batch": 16, "lr": 2e-3},
    },
}


def glioma_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(4-channel float32 image ``C X Y Z``, label map) of one phantom case."""
    from . import phantoms

    channels, seg, _ = phantoms.make_glioma_case(seed)
    img = np.stack([channels[c] for c in phantoms.GLIOMA_CHANNELS]).astype(np.float32)
    return img, seg.astype(np.int64)


def cxr_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from . import phantoms

    img, labels = phantoms.make_cxr_case(seed)
    return img[None].astype(np.float32), np.array([labels[f] for f in phantoms.CXR_FINDINGS], dtype=np.float32)


def _to_index(seg: np.ndarray) -> np.ndarray:
    idx = np.zeros_like(seg)
    for i, v in enumerate(GLIOMA_LABELS):
        idx[seg == v] = i
    return idx


def train_demo(name: str, out_dir: str | Path | None = None, *, seed: int = 0, n_cases: int | None = None,
               epochs: int | None = None, log: Log = print) -> dict:
    """Train demo model ``name`` and write ``NAME.pt`` + ``NAME.json`` into ``out_dir``."""
    from . import phantoms

    if name not in DEMO_CONFIGS:
        raise ValueError(f"unknown demo model {name!r}; choose one of {', '.join(DEMO_CONFIGS)}")
    cfg = json.loads(json.dumps(DEMO_CONFIGS[name]))  # deep copy
    tr = cfg["train"]
    if n_cases is not None:
        tr["n_cases"] = int(n_cases)
    if epochs is not None:
        tr["epochs"] = int(epochs)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    info = ModelInfo.from_dict(cfg["info"])
    net = build_architecture(cfg["arch"], cfg["arch_kwargs"])
    model = NativeInputModel(net, info, sliding_window=False)
    t0 = time.perf_counter()
    seeds = [phantoms.TRAIN_SEED_START + seed * 10_000 + i for i in range(tr["n_cases"])]
    if info.task == "segmentation":
        data = [glioma_arrays(s) for s in seeds]
        log(f"generated {len(data)} training phantoms in {time.perf_counter() - t0:.0f} s")
        _train_segmentation(model, data, tr, rng, log)
        heldout = evaluate_glioma(model, [glioma_arrays(s) for s in phantoms.GLIOMA_HELDOUT_SEEDS])
    else:
        data = [cxr_arrays(s) for s in seeds]
        log(f"generated {len(data)} training radiographs in {time.perf_counter() - t0:.0f} s")
        _train_classifier(model, data, tr, rng, log)
        heldout = evaluate_cxr(model, [cxr_arrays(s) for s in phantoms.CXR_HELDOUT_SEEDS])
    elapsed = time.perf_counter() - t0
    log(f"held-out: {heldout}  ({elapsed:.0f} s in all)")
    record = {
        "seed": seed, "training_seeds": [seeds[0], seeds[-1]], **tr, "seconds": round(elapsed, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "heldout": heldout,
    }
    meta = {"arch": cfg["arch"], "arch_kwargs": cfg["arch_kwargs"], "info": info.to_dict(), "training": record}
    out = Path(out_dir) if out_dir is not None else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    pt, js = demo_paths(name, out)
    atomic_write(pt, lambda f: torch.save(net.state_dict(), f))
    write_json(js, meta)
    return {"weights": str(pt), "metadata": str(js), **record}


def _fit(module: nn.Module, tr: dict, steps_per_epoch: int, batches: Callable, loss_of: Callable, log: Log) -> None:
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
    from monai.losses import DiceCELoss

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

    _fit(net2d, tr, steps, batches, lambda b: loss_fn(net2d(b[0]), b[1]), log)
    model.eval()


def _train_segmentation(model: NativeInputModel, data, tr: dict, rng: np.random.Generator, log: Log) -> None:
    from monai.losses import DiceCELoss

    from .models.demo import SliceWise

    if isinstance(model.net, SliceWise):
        return _train_slicewise(model, data, tr, rng, log)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def batches():
        yield from segmentation_batches(data, tr, rng)

    _fit(model, tr, max(1, len(data) // tr["batch"]), batches, lambda b: loss_fn(model(b[0]), b[1]), log)


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


def _train_classifier(model: NativeInputModel, data, tr: dict, rng: np.random.Generator, log: Log) -> None:
    loss_fn = nn.BCEWithLogitsLoss()

    def batches():
        for idx in _epoch_indices(rng, len(data), tr["batch"]):
            yield (torch.from_numpy(np.stack([data[i][0] for i in idx])),
                   torch.from_numpy(np.stack([data[i][1] for i in idx])))

    _fit(model, tr, max(1, len(data) // tr["batch"]), batches, lambda b: loss_fn(model(b[0]), b[1]), log)


@torch.no_grad()
def evaluate_glioma(model: nn.Module, cases) -> dict:
    """Mean Dice per BraTS region on (image, labels) cases, using label values."""
    from .metrics import dice_regions

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
    from scipy.stats import mannwhitneyu

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
