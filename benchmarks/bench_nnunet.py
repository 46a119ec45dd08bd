"""nnU-Net v2 models (``nnunet:``): the wrapped model against nnU-Net's own ``nnUNetPredictor``.

A result folder with nnU-Net's default 3-D U-Net shape (PlainConvUNet, 32..320 features, instance
norm, random weights; ``tests/core/models/_nnunet_folders.py``) and a 4-channel MR case that needs
cropping and resampling. Prints, from one run (medians of interleaved repeats):

* our forward ÷ nnU-Net's ``predict_single_npy_array`` on the same image (stock nnU-Net: float16
  tile accumulation, and autocast on CUDA; ours is float32 throughout);
* our forward + backward (what one attack step costs; each network call checkpointed) ÷ our forward;
* the probability difference against nnU-Net (max, mean) and the share of voxels with the same label.

Measured on 2 busy CPU cores (defaults, three runs): forward 0.88-1.17x nnU-Net's time, forward +
backward 3.0-4.4x a forward; against stock nnU-Net max 0.22, mean 1e-4, labels equal on 99.98 % of
voxels (float16 rounding near tile corners; 2.6e-6 with nnU-Net's tile accumulators in float32).

    python benchmarks/bench_nnunet.py [--device cuda] [--patch 128] [--size 160 160 128] [--folds 1] [--tta]

Needs nnunetv2 (``pip install --no-deps`` as in ``.ci/run``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core" / "models"))
from _nnunet_folders import make_result_folder  # noqa: E402

from napari_medadv.core.models import load_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nnunet_predictor(root: Path, folds, tta: bool, device: torch.device):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, ds = json.loads((root / "plans.json").read_text()), json.loads((root / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    ckpts = [torch.load(root / f"fold_{f}" / "checkpoint_final.pth", weights_only=False) for f in folds]
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(ds["channel_names"]),
                                 pm.get_label_manager(ds).num_segmentation_heads, allow_init=False,
                                 deep_supervision=False)
    pr = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, perform_everything_on_device=device.type == "cuda",
                         device=device, allow_tqdm=False)
    pr.manual_initialization(net, pm, cm, [c["network_weights"] for c in ckpts], ds, "nnUNetTrainer",
                             ckpts[0]["inference_allowed_mirroring_axes"])
    return pr


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--size", type=int, nargs=3, default=[96, 96, 80])
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    n_stages = 1 + int(np.log2(args.patch // 4))
    folds = tuple(range(args.folds))
    root = make_result_folder(Path(tempfile.mkdtemp()) / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                              channels=("T1", "T1ce", "T2", "Flair"), schemes=("ZScoreNormalization",) * 4,
                              use_mask=(True,) * 4, patch=(args.patch,) * 3, spacing=(1.2, 1.0, 1.0),
                              folds=folds, n_stages=n_stages,
                              features=[min(32 * 2 ** i, 320) for i in range(n_stages)])  # nnU-Net's widths
    rng = np.random.default_rng(0)
    img = np.zeros((4, *args.size), np.float32)
    s = [slice(n // 8, n - n // 8) for n in args.size]
    img[(slice(None), *s)] = rng.normal(400, 100, size=img[(slice(None), *s)].shape)
    spacing = (1.0, 1.0, 1.0)
    model = load_model(f"nnunet:{root}" + ("" if args.tta else ":notta"), device=device)
    model.module.set_input_spacing(spacing)
    pred = nnunet_predictor(root, folds, args.tta, device)
    x = model.to_batch(img)
    t_ours, t_theirs, t_grad = [], [], []
    for _ in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = model.forward(x)
        _sync(device)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, probs = pred.predict_single_npy_array(img.transpose(0, 3, 2, 1), {"spacing": list(spacing)}, None, None,
                                                 True)
        t_theirs.append(time.perf_counter() - t0)
        xg = x.clone().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        torch.log_softmax(model.module(xg), 1)[:, 1].sum().backward()
        _sync(device)
        t_grad.append(time.perf_counter() - t0)
    ours = torch.softmax(out, 1)[0].cpu().numpy()
    theirs = probs.transpose(0, 3, 2, 1)
    diff = np.abs(ours - theirs)
    agree = float((ours.argmax(0) == theirs.argmax(0)).mean())
    med = statistics.median
    print(f"nnU-Net 3d_fullres PlainConvUNet ({n_stages} stages), patch {args.patch}^3, image 4x{args.size}, "
          f"{len(folds)} fold(s), mirroring {'on' if args.tta else 'off'}, {device}")
    print(f"our forward / nnUNetPredictor:       {med(t_ours) / med(t_theirs):.2f}  "
          f"({med(t_ours):.2f} s / {med(t_theirs):.2f} s)")
    print(f"our forward+backward / our forward:  {med(t_grad) / med(t_ours):.2f}")
    print(f"|probability difference|:            max {diff.max():.2e}, mean {diff.mean():.1e}; labels agree on "
          f"{agree:.2%} of voxels (stock nnU-Net sums tiles in float16)")


if __name__ == "__main__":
    main()
