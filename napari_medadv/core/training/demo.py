"""Training of the shipped demo models (``medadv train demo-unet3d|demo-unet2d|demo-cxr``).

Each model is trained end to end *through* :class:`NativeInputModel` (normalisation included), on
phantoms generated on the fly from training seeds (>= ``seeds.TRAIN_SEED_START`` in
:mod:`napari_medadv.core.data.seeds`, disjoint from the shipped held-out cases), on the CPU in
minutes. The result is a state dict of the inner network plus a JSON file with the
:class:`ModelInfo`, the architecture and the training record (seed, sizes, time, held-out scores).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.seeds import CXR_HELDOUT_SEEDS, GLIOMA_HELDOUT_SEEDS, TRAIN_SEED_START
from ..files import atomic_write, write_json
from ..models.base import ModelInfo, NativeInputModel
from ..models.demo import build_architecture, demo_paths
from .loop import GLIOMA_LABELS, Log, evaluate_cxr, evaluate_glioma, train_classifier, train_segmentation

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
    from ..data import glioma  # the generators import scipy: not at `medadv` start-up

    channels, seg, _ = glioma.make_glioma_case(seed)
    img = np.stack([channels[c] for c in glioma.GLIOMA_CHANNELS]).astype(np.float32)
    return img, seg.astype(np.int64)


def cxr_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(1-channel float32 radiograph ``C H W``, float32 0/1 label per finding) of one phantom case."""
    from ..data import cxr  # the generators import scipy: not at `medadv` start-up

    img, labels = cxr.make_cxr_case(seed)
    return img[None].astype(np.float32), np.array([labels[f] for f in cxr.CXR_FINDINGS], dtype=np.float32)


def training_seeds(seed: int, n_cases: int) -> list[int]:
    """The phantom seeds of ``n_cases`` training cases for training seed ``seed`` (never held out)."""
    return [TRAIN_SEED_START + seed * 10_000 + i for i in range(n_cases)]


def train_demo(name: str, out_dir: str | Path | None = None, *, seed: int = 0, n_cases: int | None = None,
               epochs: int | None = None, log: Log = print) -> dict:
    """Train demo model ``name`` and write ``NAME.pt`` + ``NAME.json`` into ``out_dir``."""
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
    seeds = training_seeds(seed, tr["n_cases"])
    if info.task == "segmentation":
        data = [glioma_arrays(s) for s in seeds]
        log(f"generated {len(data)} training phantoms in {time.perf_counter() - t0:.0f} s")
        train_segmentation(model, data, tr, rng, log)
        heldout = evaluate_glioma(model, [glioma_arrays(s) for s in GLIOMA_HELDOUT_SEEDS])
    else:
        data = [cxr_arrays(s) for s in seeds]
        log(f"generated {len(data)} training radiographs in {time.perf_counter() - t0:.0f} s")
        train_classifier(model, data, tr, rng, log)
        heldout = evaluate_cxr(model, [cxr_arrays(s) for s in CXR_HELDOUT_SEEDS])
    elapsed = time.perf_counter() - t0
    log(f"held-out: {heldout}  ({elapsed:.0f} s in all)")
    record = {
        "seed": seed, "training_seeds": [seeds[0], seeds[-1]], **tr, "seconds": round(elapsed, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "heldout": heldout,
    }
    return write_trained(name, out_dir, net, cfg, info, record)


def write_trained(name: str, out_dir: str | Path | None, net: nn.Module, cfg: dict, info: ModelInfo,
                  record: dict) -> dict:
    """Write ``NAME.pt`` (the network's state dict) and ``NAME.json`` (architecture from ``cfg``,
    ``info``, the training ``record``) into ``out_dir`` (default: the current folder); returns
    the record with the two paths."""
    meta = {"arch": cfg["arch"], "arch_kwargs": cfg["arch_kwargs"], "info": info.to_dict(), "training": record}
    out = Path(out_dir) if out_dir is not None else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    pt, js = demo_paths(name, out)
    atomic_write(pt, lambda f: torch.save(net.state_dict(), f))
    write_json(js, meta)
    return {"weights": str(pt), "metadata": str(js), **record}
