"""Live ε in a worker thread after another thread has run PyTorch ÷ the same in the first thread
that ran it (the full-size radiograph, ``demo:cxr``; prints ratios measured in one run).

With PyTorch's OpenMP backend, each thread that starts a parallel region gets its own OpenMP
team; here (2 cores, libgomp from the PyPI CPU wheel) the live-ε update of the radiograph takes
about twice as long in every thread once a second thread has run a parallel region (16-19 ms
before, 31-37 ms after, in the first thread as in the second; 33 → 59-61 ms on a slower day).
Neither ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` nor ``MALLOC_ARENA_MAX`` changes it. This is why
the viewer runs all of its PyTorch work on one thread (``napari_medadv/_qt/lane.py``), where it
used to run it from the Qt thread, napari's worker pool and three latest-value-wins threads.

    python benchmarks/bench_threads.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    torch.set_num_threads(2)
    first = ThreadPoolExecutor(1)  # the only thread that runs PyTorch until the second part

    def setup():
        from benchmarks.bench_real_size import radiograph
        from napari_medadv.core.live import LiveEps
        from napari_medadv.core.models import load_model

        return LiveEps(radiograph(), load_model("demo:cxr"))

    live = first.submit(setup).result()

    def update() -> float:
        t0 = time.perf_counter()
        live.outcome(0.03, metrics=False)
        return time.perf_counter() - t0

    m = statistics.median
    alone = m([first.submit(update).result() for _ in range(args.repeats)])
    second = m([update() for _ in range(args.repeats)])  # the main thread: a second OpenMP team
    after = m([first.submit(update).result() for _ in range(args.repeats)])
    print(f"live-ε update of the radiograph 1955×1841 (demo:cxr): {1000 * alone:.1f} ms while one thread runs "
          f"PyTorch; then in a second thread {1000 * second:.1f} ms ({second / alone:.2f}×) and back in the "
          f"first {1000 * after:.1f} ms ({after / alone:.2f}×)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
