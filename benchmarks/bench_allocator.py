"""The memory allocator at BraTS size: i-FGSM (3 steps, ``demo:unet3d``, 4×240×240×155) with glibc's
defaults ÷ with :func:`napari_medadv.core.allocator.reuse_freed_memory` (what the ``medadv`` and
``napari-medadv`` commands set up). Allocator settings hold for a whole process, so each setting
runs in its own child processes, interleaved (system, tuned, system, tuned); each child runs the
attack twice on a thread (as the viewer's torch lane does) and reports the second run: wall time,
CPU time in the kernel, page faults, peak and final resident memory.

    python benchmarks/bench_allocator.py [--pairs 2]      # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, threading, time
sys.path.insert(0, {root!r})
from napari_medadv.core.allocator import reuse_freed_memory
done = reuse_freed_memory()
from dataclasses import replace
import psutil, torch
torch.set_num_threads({threads})
from benchmarks.bench_real_size import brats_size_case
from napari_medadv.core.models import load_model
from napari_medadv.core.pipeline import run_attack
image, labels = brats_size_case()
image = replace(image, labels=labels)
model = load_model("demo:unet3d", device="cpu")
out = {{}}
def run():
    for _ in range(2):
        r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
        run_attack(image, model, "ifgsm", params={{"eps": 0.03, "steps": 3}}, labels=image.labels, seed=0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.update(seconds=time.perf_counter() - t0, sys=r1.ru_stime - r0.ru_stime, faults=r1.ru_minflt - r0.ru_minflt)
t = threading.Thread(target=run); t.start(); t.join()
out.update(allocator=done, peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           rss_gb=psutil.Process().memory_info().rss / 2**30)
print("RESULT " + json.dumps(out))
"""


def child(tuned: bool, threads: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MEDADV_ALLOCATOR"] = "heap" if tuned else "system"
    p = subprocess.run([sys.executable, "-c", CHILD.format(root=root, threads=threads)], env=env, text=True,
                       capture_output=True, check=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    runs = {False: [], True: []}
    for _ in range(args.pairs):
        for tuned in (False, True):
            r = child(tuned, args.threads)
            runs[tuned].append(r)
            print(f"  {r['allocator']}: {r['seconds']:.1f} s, kernel {r['sys']:.1f} s, {r['faults']} page faults, "
                  f"peak {r['peak_gb']:.2f} GB, resident after {r['rss_gb']:.2f} GB", flush=True)
    m = statistics.median
    sys_t, heap = runs[False], runs[True]
    print(f"i-FGSM 3 steps at BraTS size: heap reuse {m(r['seconds'] for r in heap):.1f} s vs system allocator "
          f"{m(r['seconds'] for r in sys_t):.1f} s -> time ratio "
          f"{m(r['seconds'] for r in heap) / m(r['seconds'] for r in sys_t):.2f}; peak memory ratio "
          f"{m(r['peak_gb'] for r in heap) / m(r['peak_gb'] for r in sys_t):.2f} "
          f"(medians of {args.pairs} pairs of processes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
