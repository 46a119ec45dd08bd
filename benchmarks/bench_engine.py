"""Engine benchmarks: every figure is a ratio of two timings taken in the same run (ours / reference).

    python benchmarks/bench_engine.py            # ~3-5 min on 2 CPU cores
    python benchmarks/bench_engine.py --quick    # smaller sizes, < 1 min (smoke test)
    python benchmarks/bench_engine.py --device cuda   # on a GPU (benchmarks/gpu_check.sh)

Timings are paired and interleaved (A, B, A, B, ...) and the median of each is used, so a
background load affects both sides alike. Goals (from the engine issue) are printed beside each
ratio. Nothing here is asserted: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from napari_medadv.core.attacks import DGDE, FGSM, IFGSM, PGD
from napari_medadv.core.attacks.base import _Context
from napari_medadv.core.losses import SoftDiceLoss

DEVICE = torch.device("cpu")  # --device


def _sync() -> None:
    if DEVICE.type == "cuda":  # kernels run asynchronously: time what they did, not their launch
        torch.cuda.synchronize(DEVICE)


def paired(fa, fb, repeats: int, warmup: int = 1) -> tuple[float, float]:
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fa()
        _sync()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        _sync()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def unet(spatial_dims: int, in_ch: int, out_ch: int, channels=(16, 32, 64, 128)):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=spatial_dims, in_channels=in_ch, out_channels=out_ch, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=1).eval().to(DEVICE)


def fwd_bwd(model, x, y, loss):
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    (g,) = torch.autograd.grad(loss(out, y).sum(), xr)
    return g


class SmallCNN(nn.Module):
    def __init__(self, in_ch=3, n=10, width=32):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, n)

    def forward(self, x):
        return self.head(self.f(x).flatten(1))


def bench_gradient_paths(q: bool) -> dict:
    size = 96 if q else 160
    model = unet(2, 4, 4)
    x = torch.randn(2, 4, size, size, device=DEVICE)
    y = torch.randint(0, 4, (2, size, size), device=DEVICE)
    loss = SoftDiceLoss()
    reps = 3 if q else 7
    t_ours, t_ref = paired(lambda: FGSM(model, eps=0.05, loss=loss)(x, y), lambda: fwd_bwd(model, x, y, loss), reps)
    out = {"fgsm_over_fwd_bwd": t_ours / t_ref, "fgsm_s": t_ours, "fwd_bwd_s": t_ref}
    n = 5
    t_ours, t_ref = paired(lambda: IFGSM(model, eps=0.05, steps=n, loss=loss)(x, y),
                           lambda: [fwd_bwd(model, x, y, loss) for _ in range(n)], max(2, reps // 2))
    out["ifgsm_over_n_fwd_bwd"] = t_ours / t_ref
    atk = FGSM(model, eps=0.05, loss=loss).prepare(x, y)
    with torch.no_grad():
        t_tick, t_fwd = paired(lambda: atk.predict_at_eps(0.02), lambda: model(x), reps * 3)
    out["fast_eps_tick_over_forward"] = t_tick / t_fwd
    out["fast_eps_tick_s"] = t_tick
    out["shape"] = list(x.shape)
    return out


def bench_vs_torchattacks(q: bool) -> dict:
    try:
        import torchattacks
    except ImportError:
        return {"skipped": "torchattacks not installed (pip install --no-deps torchattacks)"}
    torch.manual_seed(0)
    model = SmallCNN().eval().to(DEVICE)
    n = 16 if q else 32
    x = torch.rand(n, 3, 64, 64, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)
    reps = 3 if q else 7
    ours = FGSM(model, eps=8 / 255, loss="ce", data_range=(0, 1))
    theirs = torchattacks.FGSM(model, eps=8 / 255)
    a, b = paired(lambda: ours(x, y), lambda: theirs(x, y), reps)
    out = {"fgsm_over_torchattacks": a / b}
    ours = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, loss="ce", data_range=(0, 1), seed=0)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)
    a, b = paired(lambda: ours(x, y), lambda: theirs(x, y), max(2, reps // 2))
    out["pgd_over_torchattacks"] = a / b
    return out


def bench_dgde(q: bool) -> dict:
    """Candidate throughput of DGDE's batched evaluation vs one forward per candidate, at 224²."""
    from napari_medadv.core.attacks.dgde import _Search

    torch.manual_seed(0)
    model = SmallCNN(in_ch=1, n=1, width=8).eval().to(DEVICE)
    x = torch.rand(1, 1, 224, 224, device=DEVICE)
    n_cand = 64 if q else 256
    pix = torch.arange(224 * 224)
    sets = torch.stack([pix[torch.randperm(pix.numel())[:5000]] for _ in range(n_cand)]).to(DEVICE)
    values = ((torch.rand(n_cand, 5000, 1) - 0.5) * 0.6).to(DEVICE)
    out = {}

    def throughput(bs):
        atk = DGDE(model, amplitude=0.3, population=32, batch_size=bs, activation="sigmoid", data_range=(0, 1), seed=0)
        ctx = _Context(atk, x, None, None)
        s = _Search(atk, ctx, x, ctx.range.lo[0].reshape(1, 1), ctx.range.hi[0].reshape(1, 1),
                    ctx.eps[0].reshape(1, 1), 0)
        s._setup_criterion()
        s.evaluate(sets[:4], values[:4])  # warm-up
        _sync()
        t = time.perf_counter()
        s.evaluate(sets, values)
        _sync()
        return n_cand / (time.perf_counter() - t), s.batch_size

    # interleaved repeats, median of each (one pass each was at the mercy of background load)
    runs = {1: [], 32: [], None: []}
    for _ in range(3):
        for bs in runs:
            runs[bs].append(throughput(bs))
    loop = statistics.median(r[0] for r in runs[1])
    full = statistics.median(r[0] for r in runs[32])
    auto = statistics.median(r[0] for r in runs[None])
    bs_auto = runs[None][0][1]
    out["dgde_batched_over_loop_candidates_per_s"] = full / loop
    out["dgde_auto_over_loop_candidates_per_s"] = auto / loop
    out.update({"loop_cand_per_s": loop, "batch32_cand_per_s": full, "auto_cand_per_s": auto,
                "auto_batch_size_cpu": bs_auto})
    return out


_MEM_CHILD = r"""
import resource, sys, gc, torch
sys.path.insert(0, {root!r})
from benchmarks.bench_engine import unet, fwd_bwd
from napari_medadv.core.attacks import FGSM
from napari_medadv.core.losses import SoftDiceLoss
torch.set_num_threads(2)
size = {size}
model = unet(3, 4, 4, channels=(8, 16, 32))
x = torch.randn(1, 4, size, size, size)
y = torch.randint(0, 4, (1, size, size, size))
gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {which!r} == "ours":
    FGSM(model, eps=0.05, loss=SoftDiceLoss())(x, y)
else:
    fwd_bwd(model, x, y, SoftDiceLoss())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024)
"""


def bench_memory_cuda(q: bool) -> dict:
    """Peak GPU memory of FGSM ÷ that of one forward + input-gradient backward (same process)."""
    size = 64 if q else 128
    model = unet(3, 4, 4, channels=(8, 16, 32))
    x = torch.randn(1, 4, size, size, size, device=DEVICE)
    y = torch.randint(0, 4, (1, size, size, size), device=DEVICE)
    peaks = {}
    for which, fn in (("ref", lambda: fwd_bwd(model, x, y, SoftDiceLoss())),
                      ("ours", lambda: FGSM(model, eps=0.05, loss=SoftDiceLoss())(x, y))):
        _sync()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        fn()
        _sync()
        peaks[which] = torch.cuda.max_memory_allocated(DEVICE) - base
    return {"fgsm3d_peak_over_fwd_bwd_peak": peaks["ours"] / peaks["ref"], "shape": [1, 4, size, size, size],
            "ours_peak_MiB": peaks["ours"] / 2**20, "ref_peak_MiB": peaks["ref"] / 2**20}


def bench_memory(q: bool) -> dict:
    if DEVICE.type == "cuda":
        return bench_memory_cuda(q)
    size = 64 if q else 128
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = {}
    for which in ("ours", "ref"):
        code = _MEM_CHILD.format(root=root, size=size, which=which)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res[which] = int(p.stdout.strip().splitlines()[-1])
    return {"fgsm3d_peak_over_fwd_bwd_peak": res["ours"] / res["ref"], "shape": [1, 4, size, size, size],
            "ours_peak_MiB": res["ours"] / 2**20, "ref_peak_MiB": res["ref"] / 2**20}


GOALS = {
    "fgsm_over_fwd_bwd": ("<=", 1.05),
    "ifgsm_over_n_fwd_bwd": ("<=", 1.05),
    "fast_eps_tick_over_forward": ("<=", 1.15),
    "fgsm_over_torchattacks": ("<=", 1.00),
    "pgd_over_torchattacks": ("<=", 1.00),
    "dgde_batched_over_loop_candidates_per_s": (">=", 5.0),
    "dgde_auto_over_loop_candidates_per_s": (">=", 5.0),
    "fgsm3d_peak_over_fwd_bwd_peak": ("<=", 1.2),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    gpu = f", {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""
    results = {
        "machine": (f"{platform.processor() or platform.machine()}, {args.threads} threads, "
                    f"torch {torch.__version__}, device {DEVICE}{gpu}"),
    }
    for name, fn in [("gradient", bench_gradient_paths), ("torchattacks", bench_vs_torchattacks),
                     ("dgde", bench_dgde), ("memory", bench_memory)]:
        t = time.perf_counter()
        results[name] = fn(args.quick)
        results[name]["bench_s"] = round(time.perf_counter() - t, 1)
    print(f"# {results['machine']}")
    print(f"{'ratio':45s} {'value':>8s}  goal")
    for group in results.values():
        if not isinstance(group, dict):
            continue
        for k, v in group.items():
            if k in GOALS:
                op, goal = GOALS[k]
                ok = v <= goal if op == "<=" else v >= goal
                print(f"{k:45s} {v:8.3f}  {op} {goal}  {'met' if ok else 'NOT met'}")
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
