"""Study throughput on three kinds of workers, same study, one run: cases per minute sequentially
(no Dask), on a Dask LocalCluster (worker processes on 127.0.0.1) and on a single-node SLURM
(``--cluster slurm``: dask-jobqueue batch jobs; the daemons are the test suite's,
``tests/core/_slurm.py``, started here in a temporary folder and stopped at the end). Checks that
the three runs stored the same numbers.

    python benchmarks/bench_cluster.py                 # 4 shipped glioma cases, demo:unet3d, FGSM ε 0.02/0.05
    python benchmarks/bench_cluster.py --workers 4 --jobs 4 --cases 4

Start-up is included in each figure (LocalCluster: process spawn and imports per worker; SLURM:
job submission, scheduling and the same imports), so small studies gain less than large ones.
SLURM needs ``slurm-wlm`` and ``munge`` and root (the daemons run as root); without them its
line says why it was skipped. Nothing is asserted: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--model", default="demo:unet3d")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05])
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    ap.add_argument("--jobs", type=int, default=2, help="SLURM jobs (one worker each, one core each)")
    args = ap.parse_args()

    import torch

    from napari_medadv.core.data.paths import sample_data_dir
    from napari_medadv.core.study import Study, StudyConfig, load_rows
    from napari_medadv.core.study.cluster import ClusterSpec

    sys.path.insert(0, str(REPO / "tests" / "core"))
    import _slurm

    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster."))
    results: dict = {"cases": args.cases, "model": args.model, "eps": args.eps, "cpu_count": os.cpu_count()}
    try:
        data = tmp / "data"
        data.mkdir()
        for case in sorted((sample_data_dir() / "glioma").glob("glioma_*"))[: args.cases]:
            shutil.copytree(case, data / case.name)
        cfg = StudyConfig(dataset=str(data), models=[args.model], grid=[{"attack": "fgsm", "eps": list(args.eps)}])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))  # as each LocalCluster worker

        def timed(name, **run):
            t = time.perf_counter()
            res = Study(cfg, tmp / name).run(report=False, **run)
            s = time.perf_counter() - t
            results[f"{name}_s"] = round(s, 1)
            results[f"{name}_cases_per_min"] = round(res.n_run / s * 60, 2)

        timed("sequential", workers=0)
        timed("localcluster", workers=args.workers, processes=True)
        try:
            slurm = _slurm.start(tmp / "slurm", cpus=os.cpu_count() or 2)
        except _slurm.SlurmUnavailable as exc:
            results["slurm"] = f"skipped: {exc}"
        else:
            os.environ["SLURM_CONF"] = slurm.env["SLURM_CONF"]
            os.environ["OMP_NUM_THREADS"] = "1"  # what each 1-core job may use
            try:
                timed("slurm", cluster=ClusterSpec("slurm", jobs=args.jobs, cores=1, memory="2GB",
                                                   walltime="00:30:00", interface="lo",
                                                   log_directory=str(tmp / "slurm-logs")))
            finally:
                slurm.stop()
        key = ["case", "source", "target", "grid_key"]
        ref = load_rows(tmp / "sequential")[0].drop(columns="seconds").sort_values(key).reset_index(drop=True)
        for name in ("localcluster", "slurm"):
            if (tmp / name / "cases").is_dir():
                df = load_rows(tmp / name)[0].drop(columns="seconds").sort_values(key).reset_index(drop=True)
                num = ref.select_dtypes("number").columns
                results[f"{name}_max_abs_difference"] = float((df[num] - ref[num]).abs().max().max())
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
