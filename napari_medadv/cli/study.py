"""``medadv study`` — robustness studies on a dataset (thin layer over :mod:`napari_medadv.core.study`)
and the ``--defense`` options of ``medadv train`` (over :mod:`napari_medadv.core.training.defenses`).

    medadv study DATASET --model SPEC [--model SPEC ...] --attack fgsm --eps 0.01 0.05 --out DIR
    medadv study DATASET --model SPEC --attack fgsm --attack motion --psnr 40 35 30 --out DIR
    medadv study --grid grid.yaml --out DIR [--workers N | --sequential | --scheduler ADDRESS]
    medadv study ... --cluster slurm --queue gpu --walltime 01:00:00 --cores 8 --memory 32GB --gpus-per-job 1 --jobs 4

DATASET: a folder of BraTS case folders, a folder of images with ``labels.csv`` (or ``--labels``),
or ``phantoms:glioma:5-24`` (held-out phantoms generated into DIR/data). Re-running the same
command resumes: finished cases are skipped. Exit code 1 when some cases failed (listed in the
report and on stderr; a re-run tries them again).
"""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "study", help="robustness study: dataset x models x attack grid, with statistics and a report",
        description="Attack every case of a dataset with a grid of attacks x parameters on one or more "
                    "models; write per-case results, Liu/Ghamizi-style summary tables with Wilcoxon tests "
                    "(Bonferroni), curves and report.md/report.html into --out. Cases run on Dask "
                    "(a LocalCluster by default); re-running resumes.")
    s.add_argument("dataset", nargs="?", help="folder of BraTS case folders | folder of images with labels.csv | "
                                              "labels CSV | phantoms:glioma:A-B (held-out seeds, generated)")
    s.add_argument("--grid", help="YAML file with dataset, models, attacks (flags given here override it)")
    s.add_argument("--model", action="append", dest="models", default=[],
                   help="model spec (repeat for several: the first is the baseline of model comparisons)")
    s.add_argument("--attack", action="append", dest="attacks", default=[],
                   help="attack from the registry (repeat); gets the --eps/--steps values it takes")
    s.add_argument("--eps", type=float, nargs="+", help="ε values (fraction of each channel's range)")
    s.add_argument("--steps", type=int, nargs="+", help="iteration counts (iterative attacks)")
    mq = s.add_mutually_exclusive_group()
    mq.add_argument("--psnr", type=float, nargs="+", metavar="DB",
                    help="matched image quality: run every --attack at the ε/severity that brings each case to "
                         "these PSNRs (searched per case); with --eps, attacks taking ε also run at those values")
    mq.add_argument("--ssim", type=float, nargs="+", metavar="SSIM", help="as --psnr, for SSIM targets")
    s.add_argument("--match-tol", type=float, metavar="TOL",
                   help="accepted |reached - target| of --psnr/--ssim (default 0.1 dB / 0.002)")
    s.add_argument("--labels", help="labels CSV for image datasets (file,<class>,...)")
    s.add_argument("--loss", nargs="+", metavar="LOSS",
                   help="attack loss(es) of the gradient attacks, crossed with the grid: dice, ce, bce, mse, ol "
                        "(e.g. --loss mse bce ol: Ghamizi's Table 5)")
    s.add_argument("--cooccurrence-from", metavar="CSV",
                   help="training labels CSV (file,<class>,...) for the inverse co-occurrence matrix of pgd-risk "
                        "and RISK (default: the evaluated set's labels, said in the report)")
    s.add_argument("--transfer", action="store_true",
                   help="also evaluate every adversarial image on every other model (transfer matrix)")
    s.add_argument("--baseline-model", help="model the others are compared with (default: the first)")
    s.add_argument("--seed", type=int, default=None, help="study seed (default 0)")
    s.add_argument("--perturb-background", action="store_true",
                   help="perturb the zero background of skull-stripped images too")
    s.add_argument("--no-iterations", action="store_true", help="do not record per-iteration PSNR/Dice")
    s.add_argument("--title", help="report title")
    s.add_argument("--device", default=None, help="cpu (default), cuda, auto")
    s.add_argument("--trust-model-code", action="store_true")
    ex = s.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, help="LocalCluster workers (default: GPUs if any, else CPU cores)")
    ex.add_argument("--sequential", action="store_true", help="no Dask: run the cases one after another here")
    ex.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    ex.add_argument("--cluster", choices=("slurm", "pbs", "lsf"),
                    help="start the workers as batch jobs (dask-jobqueue); options below, the rest from "
                         "dask-jobqueue's config (~/.config/dask/jobqueue.yaml)")
    s.add_argument("--stage", action="store_true",
                   help="send the case and model files to the workers through Dask (small datasets; for workers "
                        "that share no filesystem with this machine)")
    s.add_argument("--threads", action="store_true",
                   help="LocalCluster workers as threads in this process instead of processes")
    _add_cluster_options(s)
    s.add_argument("--out", required=True, help="study folder (created; re-running resumes)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_study)
    return s


#: --cluster options: (flag, ClusterSpec field, type, help)
CLUSTER_OPTIONS = (
    ("--jobs", "jobs", int, "at most this many batch jobs at once (the cluster adapts between 0 and J; default 1)"),
    ("--queue", "queue", str, "queue / partition"),
    ("--account", "account", str, "account / project to charge"),
    ("--walltime", "walltime", str, "time limit of each job, e.g. 01:00:00"),
    ("--cores", "cores", int, "cores per job"),
    ("--memory", "memory", str, "memory per job, e.g. 16GB"),
    ("--gpus-per-job", "gpus_per_job", int, "GPUs per job: one worker per GPU, cases need a GPU (resource GPU=1)"),
    ("--interface", "interface", str, "network interface the scheduler and workers talk on (ib0, eth0, lo)"),
)


def _add_cluster_options(s) -> None:
    g = s.add_argument_group("batch-job workers (with --cluster slurm|pbs|lsf)")
    for flag, dest, typ, help_ in CLUSTER_OPTIONS:
        g.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    g.add_argument("--job-directive", dest="job_directives", action="append", default=[], metavar="LINE",
                   help="extra line for the job script header, e.g. --job-directive=--constraint=a100 (repeat)")


def _cluster_spec(args, out: str):
    """The ClusterSpec of --cluster and its options; None without --cluster."""
    from pathlib import Path

    from ._common import CLIError
    from napari_medadv.core.study.cluster import ClusterSpec

    given = [f for f, d, _, _ in CLUSTER_OPTIONS if getattr(args, d) is not None]
    if args.job_directives:
        given.append("--job-directive")
    if args.cluster is None:
        if given:
            raise CLIError(f"{', '.join(given)} need --cluster slurm|pbs|lsf")
        return None
    opts = {d: getattr(args, d) for _, d, _, _ in CLUSTER_OPTIONS if getattr(args, d) is not None}
    return ClusterSpec(args.cluster, job_directives=list(args.job_directives),
                       log_directory=str(Path(out).absolute() / "cluster-logs"), **opts)


class StudyBar:
    """One line per finished case on stderr: cases done / total, elapsed, ETA."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def __call__(self, p) -> None:
        eta = "" if p.eta is None else f", ETA {_hms(p.eta)}"
        bar = "#" * int(p.fraction * 24)
        self.stream.write(f"study [{bar:<24}] {p.done}/{p.total} cases, {_hms(p.elapsed)}{eta}  {p.message}\n")
        self.stream.flush()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cmd_study(args) -> int:
    from ._common import CLIError
    from napari_medadv.core.study import Study, StudyConfig, grid_from_flags

    if any(v is not None for v in (args.eps, args.steps, args.psnr, args.ssim, args.match_tol)):
        if not args.attacks:
            raise CLIError("--eps/--steps/--psnr/--ssim need --attack NAME")
    grid = grid_from_flags(args.attacks, args.eps, args.steps, psnr=args.psnr, ssim=args.ssim,
                           tol=args.match_tol) if args.attacks else None
    if args.loss:
        from napari_medadv.core.attacks import ATTACKS
        from napari_medadv.core.losses import LOSSES

        bad = [x for x in args.loss if x not in LOSSES]
        if bad:
            raise CLIError(f"unknown loss {', '.join(bad)}; choose from {', '.join(LOSSES)}")
        if not grid:
            raise CLIError("--loss needs --attack NAME")
        for e in grid:
            spec = ATTACKS.get_spec(e["attack"])
            if spec.kind == "adversarial" and not spec.gradient_free:
                e["loss"] = list(args.loss)
    overrides = dict(dataset=args.dataset, models=args.models or None, grid=grid, labels_csv=args.labels,
                     cooccurrence_from=args.cooccurrence_from,
                     seed=args.seed, device=args.device, baseline_model=args.baseline_model, title=args.title,
                     transfer=True if args.transfer else None, trust_model_code=True if args.trust_model_code else None,
                     roi="none" if args.perturb_background else None,
                     track_iterations=False if args.no_iterations else None)
    if args.grid:
        cfg = StudyConfig.from_yaml(args.grid, **overrides)
    else:
        missing = [n for n, v in (("DATASET", args.dataset), ("--model", args.models), ("--attack", args.attacks))
                   if not v]
        if missing:
            raise CLIError(f"give {', '.join(missing)} (or a --grid YAML file)")
        cfg = StudyConfig(**{k: v for k, v in overrides.items() if v is not None})
    workers = 0 if args.sequential else args.workers
    cluster = _cluster_spec(args, args.out)
    t0 = time.perf_counter()
    try:
        res = _run(Study(cfg, args.out), args, workers, cluster)
    except KeyboardInterrupt:
        print(f"medadv: interrupted; the finished cases are stored in {args.out}/cases and the workers were "
              "shut down: run the same command again to resume", file=sys.stderr)
        return 130
    failed = f", {res.n_failed} failed" if res.n_failed else ""
    print(f"{res.n_cases} cases ({res.n_run} run, {res.n_skipped} already stored{failed}) in "
          f"{time.perf_counter() - t0:.0f} s; report: {res.files.get('report_md', args.out)}")
    for case, error in res.failed.items():
        print(f"medadv: case {case} failed: {error}", file=sys.stderr)
    return 1 if res.n_failed else 0


def _run(study, args, workers, cluster):
    return study.run(workers=workers, scheduler=args.scheduler, processes=not args.threads,
                     cluster=cluster, stage=args.stage,
                     progress=None if args.quiet else StudyBar(),
                     log=None if args.quiet else (lambda s: print(s, file=sys.stderr)),
                     command=["medadv", *(sys.argv[1:] if sys.argv and sys.argv[0].endswith("medadv")
                                          else ["study", *_argv_of(args)])])


def _argv_of(args) -> list[str]:
    """A replayable command line from the parsed arguments (when not called as ``medadv``)."""
    out = [args.dataset] if args.dataset else []
    if args.grid:
        out += ["--grid", args.grid]
    for m in args.models:
        out += ["--model", m]
    for a in args.attacks:
        out += ["--attack", a]
    if args.eps:
        out += ["--eps", *map(str, args.eps)]
    if args.steps:
        out += ["--steps", *map(str, args.steps)]
    for flag, v in (("--psnr", args.psnr), ("--ssim", args.ssim)):
        if v:
            out += [flag, *map(str, v)]
    if args.loss:
        out += ["--loss", *args.loss]
    for flag, v in (("--labels", args.labels), ("--cooccurrence-from", args.cooccurrence_from),
                    ("--baseline-model", args.baseline_model), ("--seed", args.seed),
                    ("--match-tol", args.match_tol), ("--title", args.title)):
        if v is not None:
            out += [flag, str(v)]
    for flag, v in (("--transfer", args.transfer), ("--perturb-background", args.perturb_background),
                    ("--no-iterations", args.no_iterations)):
        if v:
            out.append(flag)
    return out + ["--out", args.out]
