"""Study scale-out benchmark: the same small study run sequentially and on a 2-worker Dask
LocalCluster (worker processes on 127.0.0.1), timed in the same session; prints the ratio and
checks that both runs stored the same numbers.

    python benchmarks/bench_study.py             # 4 shipped glioma cases, demo:unet3d, FGSM ε 0.02/0.05
    python benchmarks/bench_study.py --cases 2   # quicker
    python benchmarks/bench_study.py --eps 0.01 0.02 0.05 0.1 0.2 0.3   # more work per case

A ratio near 1/2 on an idle 2-core machine is the best case; LocalCluster start-up (process
spawn, torch/MONAI import per worker) is included, so small studies gain less. Nothing is
asserted: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--model", default="demo:unet3d")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05], help="FGSM ε values (more = more work per case)")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from napari_medadv.core.data.paths import sample_data_dir
    from napari_medadv.core.study import Study, StudyConfig, load_rows

    tmp = Path(tempfile.mkdtemp(prefix="bench_study."))
    try:
        data = tmp / "data"
        data.mkdir()
        for case in sorted((sample_data_dir() / "glioma").glob("glioma_*"))[: args.cases]:
            shutil.copytree(case, data / case.name)
        cfg = StudyConfig(dataset=str(data), models=[args.model], grid=[{"attack": "fgsm", "eps": list(args.eps)}])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # same per-task threads as each worker
        t = time.perf_counter()
        Study(cfg, tmp / "seq").run(workers=0, report=False)
        t_seq = time.perf_counter() - t
        t = time.perf_counter()
        Study(cfg, tmp / "dask").run(workers=2, processes=True, report=False)
        t_dask = time.perf_counter() - t
        key = ["case", "source", "target", "grid_key"]
        a = load_rows(tmp / "seq")[0].drop(columns="seconds").sort_values(key).reset_index(drop=True)
        b = load_rows(tmp / "dask")[0].drop(columns="seconds").sort_values(key).reset_index(drop=True)
        num = a.select_dtypes("number").columns
        max_diff = float((a[num] - b[num]).abs().max().max())
        same = a.drop(columns=num).equals(b.drop(columns=num))
        print(json.dumps({
            "cases": args.cases, "model": args.model, "eps": args.eps, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "sequential_s": round(t_seq, 1), "dask_2_workers_s": round(t_dask, 1),
            "ratio_dask_over_sequential": round(t_dask / t_seq, 3),
            "max_abs_difference_of_numbers": max_diff, "same_labels_and_keys": bool(same),
            "pandas": pd.__version__,
        }, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
