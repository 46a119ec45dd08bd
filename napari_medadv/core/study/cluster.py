"""Where a study's cases run: a Dask LocalCluster, an existing scheduler, or batch-job workers on
SLURM/PBS/LSF through dask-jobqueue (:class:`ClusterSpec`, :func:`open_cluster`), and the checks
that every worker can read what the cases need (:func:`check_workers`).

Batch-job workers are dask-jobqueue's: its ``SLURMCluster``/``PBSCluster``/``LSFCluster`` write
and submit the job scripts and cancel the jobs when closed, and every setting not given here comes
from dask-jobqueue's own configuration (``~/.config/dask/jobqueue.yaml``, ``jobqueue.slurm.*``), as
its users expect. The cluster adapts between 0 and ``jobs`` jobs and is closed when the study
ends, fails or is interrupted (Ctrl-C): :func:`open_cluster` is a context manager.

GPU workers: one worker per GPU, each declaring the Dask resource ``GPU=1``; cases are then
submitted needing ``GPU=1`` (:attr:`OpenCluster.gpu`), so at most one case runs per GPU, and each
worker keeps its models loaded on its own device (:func:`~.cases.cached_model`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..allocator import child_environ
from ..errors import MedadvError

JOBQUEUE_KINDS = ("slurm", "pbs", "lsf")
#: what a worker that cannot read an input is told to do
REACH_FIX = ("put the data and models on a shared filesystem every worker mounts at the same path, "
             "or pass --stage to send them to the workers through Dask (small datasets)")


@dataclass
class ClusterSpec:
    """How to get workers. ``kind``: ``local`` (a LocalCluster of ``workers``), ``scheduler``
    (an existing one at ``address``) or ``slurm``/``pbs``/``lsf`` (batch jobs, at most ``jobs``).

    Batch-job settings left ``None`` come from dask-jobqueue's configuration.
    """

    kind: str = "local"
    workers: int | None = None
    processes: bool = True
    gpus: int = 0  # local: GPU workers (one per GPU, resource GPU=1); 0: CPU workers
    address: str | None = None
    jobs: int = 1
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    cores: int | None = None
    memory: str | None = None
    gpus_per_job: int = 0
    interface: str | None = None
    job_directives: list[str] = field(default_factory=list)
    log_directory: str | None = None

    def validate(self) -> None:
        if self.kind not in ("local", "scheduler", *JOBQUEUE_KINDS):
            raise MedadvError(f"unknown cluster kind {self.kind!r}; use one of {', '.join(JOBQUEUE_KINDS)}")
        if self.kind == "scheduler" and not self.address:
            raise MedadvError("a scheduler cluster needs its address (tcp://host:8786)")
        if self.jobs < 1:
            raise MedadvError(f"--jobs must be at least 1, got {self.jobs}")
        if self.gpus_per_job < 0 or (self.cores is not None and self.cores < 1):
            raise MedadvError("--cores must be at least 1 and --gpus-per-job at least 0")
        if self.gpus_per_job and self.cores is not None and self.cores < self.gpus_per_job:
            raise MedadvError(f"--cores {self.cores} is fewer than --gpus-per-job {self.gpus_per_job} "
                              "(one worker per GPU needs at least one core each)")


@dataclass
class OpenCluster:
    """A connected client, whether cases need the ``GPU`` resource, and a one-line description."""

    client: object
    gpu: bool
    description: str
    batch: bool = False
    submit_errors: list = field(default_factory=list)  # batch jobs: why submissions failed


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec, log: Callable[[str], None] | None = None) -> Iterator[OpenCluster]:
    """Start (or connect to) the workers of ``spec``; close everything on exit, also on errors
    and Ctrl-C (batch jobs are cancelled by dask-jobqueue's ``close``)."""
    from distributed import Client, LocalCluster  # deferred: heavy, unused by sequential studies

    spec.validate()
    cluster = None
    client = None
    try:
        if spec.kind == "scheduler":
            try:
                client = Client(spec.address, timeout="20s")
            except OSError as exc:
                raise MedadvError(f"cannot reach the Dask scheduler at {spec.address} ({exc})") from None
            gpu = any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values())
            yield OpenCluster(client, gpu, f"scheduler {spec.address}")
        elif spec.kind == "local":
            n = spec.workers or spec.gpus or max(1, os.cpu_count() or 1)
            threads = max(1, (os.cpu_count() or 1) // n) if spec.processes else 1
            # processes: TCP on the loopback interface only; threads: Dask's in-process transport
            # worker processes get the command's allocator set-up (core.allocator: 1.6× at BraTS size)
            env = {"OMP_NUM_THREADS": str(threads), **child_environ()}
            net = {"host": "127.0.0.1", "env": env} if spec.processes else {}
            res = {"resources": {"GPU": 1}} if spec.gpus else {}
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=spec.processes,
                                   dashboard_address=None, memory_limit=0, **net, **res)
            client = Client(cluster)
            kind = "GPU" if spec.gpus else ("process" if spec.processes else "thread")
            yield OpenCluster(client, bool(spec.gpus), f"LocalCluster of {n} {kind} workers")
        else:
            cluster = jobqueue_cluster(spec)
            cluster.adapt(minimum_jobs=0, maximum_jobs=spec.jobs)
            client = Client(cluster)
            if log:
                log(f"{spec.kind.upper()} workers as batch jobs (0..{spec.jobs} jobs); scheduler at "
                    f"{cluster.scheduler_address}; job script:\n{cluster.job_script()}")
            yield OpenCluster(client, spec.gpus_per_job > 0,
                              f"{spec.kind.upper()} batch jobs (at most {spec.jobs})", batch=True,
                              submit_errors=cluster.medadv_submit_errors)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            try:
                cluster.close()
            except AssertionError:  # dask-jobqueue cannot close a job it failed to submit; nothing runs
                if not getattr(cluster, "medadv_submit_errors", None):
                    raise


def jobqueue_cluster(spec: ClusterSpec):
    """dask-jobqueue's cluster for ``spec.kind``; settings given override its configuration.

    One worker per job with one Dask thread (PyTorch uses the job's cores), or with
    ``gpus_per_job`` G: G workers per job, each ``GPU=1`` and one thread.
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise MedadvError("--cluster needs dask-jobqueue: pip install 'napari-medadv[cluster]'") from None
    base = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
            "lsf": dask_jobqueue.LSFCluster}[spec.kind]
    errors: list[str] = []

    class Job(base.job_cls):
        """dask-jobqueue's job, remembering why a submission failed (adaptive scaling only logs it)."""

        async def start(self):
            try:
                await super().start()
            except Exception as exc:  # noqa: BLE001 - kept for the study to report, then re-raised
                errors.append(_submit_error(exc))
                raise

    cls = type(base.__name__, (base,), {"job_cls": Job})
    kw: dict = {k: v for k, v in (("queue", spec.queue), ("account", spec.account), ("walltime", spec.walltime),
                                  ("cores", spec.cores), ("memory", spec.memory), ("interface", spec.interface),
                                  ("log_directory", spec.log_directory)) if v is not None}
    directives = list(spec.job_directives)
    g = spec.gpus_per_job
    extra_args = ["--nthreads", "1"]  # one case at a time per worker: its models stay on its device
    if g:
        kw["processes"] = g
        extra_args += ["--resources", "GPU=1"]
        directives += {"slurm": [f"--gres=gpu:{g}"], "pbs": [f"-l ngpus={g}"], "lsf": [f'-gpu "num={g}"']}[spec.kind]
    else:
        kw["processes"] = 1
    if spec.interface is not None:
        kw["scheduler_options"] = {"interface": spec.interface}
    try:
        cluster = cls(job_extra_directives=directives or None, worker_extra_args=extra_args, **kw)
    except ValueError as exc:  # e.g. cores/memory neither given nor in jobqueue.yaml
        raise MedadvError(f"--cluster {spec.kind}: {str(exc).splitlines()[0]} (give --cores/--memory or set "
                          f"them in dask-jobqueue's configuration, jobqueue.{spec.kind})") from None
    cluster.medadv_submit_errors = errors
    return cluster


def _submit_error(exc: BaseException) -> str:
    """The scheduler's own words from a failed job submission (sbatch/qsub/bsub stderr)."""
    text = str(exc)
    err = text.split("stderr:", 1)[1] if "stderr:" in text else text
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-2:]) if lines else type(exc).__name__


# --------------------------------------------------------------------------- reachability


def probe_paths(paths: Sequence[str], dask_worker=None) -> dict:
    """On a worker: which of ``paths`` it cannot read, with its name and host (as a task, or by
    ``client.run``, which passes ``dask_worker``)."""
    missing = [p for p in paths if not os.access(p, os.R_OK)]
    return {"worker": where_am_i(dask_worker), "host": socket.gethostname(), "missing": missing}


def where_am_i(worker=None) -> str:
    """The Dask worker running this (``name (address)``), or ``local`` outside Dask."""
    if worker is None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            return "local"
    return f"{worker.name} ({worker.address})"


def unreachable_error(report: dict) -> MedadvError:
    first = report["missing"][0]
    more = f" and {len(report['missing']) - 1} more" if len(report["missing"]) > 1 else ""
    return MedadvError(f"worker {report['worker']} on {report['host']} cannot read {first}{more}: {REACH_FIX}")


def check_workers(oc: OpenCluster, paths: Sequence[str], resources: dict | None = None,
                  timeout: float | None = None) -> int:
    """Ask the workers whether they can read ``paths`` before the first case: a probe task
    (which waits for the first worker, as batch jobs start it) and then ``client.run`` on every
    connected worker. Raises :func:`unreachable_error` for the first worker that cannot read
    one, or the batch system's refusal of a job; returns the number of workers asked."""
    from distributed import TimeoutError as DaskTimeout  # deferred: heavy

    client = oc.client
    first = client.submit(probe_paths, list(paths), pure=False, resources=resources)
    waited = 0.0
    while True:
        if oc.submit_errors:
            raise MedadvError(f"the batch system refused the worker job: {oc.submit_errors[0]}")
        try:
            rep = first.result(timeout=2)
            break
        except (DaskTimeout, TimeoutError):
            waited += 2
            if timeout is not None and waited >= timeout:
                raise MedadvError(f"no worker started within {timeout:.0f} s ({oc.description})") from None
    if rep["missing"]:
        raise unreachable_error(rep)
    answers = client.run(probe_paths, list(paths))
    for rep in answers.values():
        if rep["missing"]:
            raise unreachable_error(rep)
    return len(answers)


# --------------------------------------------------------------------------- GPUs


def gpu_index(worker_name, n_gpus: int) -> int:
    """Which of ``n_gpus`` visible GPUs a worker uses: LocalCluster workers are named 0..n-1,
    dask-jobqueue's workers of one job ``<job>-0``..``<job>-(G-1)``; any other name hashes."""
    if n_gpus <= 1:
        return 0
    s = str(worker_name)
    m = re.search(r"(\d+)$", s)
    if m is not None:
        return int(m.group(1)) % n_gpus
    import hashlib

    return int(hashlib.sha256(s.encode()).hexdigest(), 16) % n_gpus


def absolute(path: str | Path) -> str:
    """``path`` made absolute against the current folder (``~`` expanded, ``..`` removed; symlinks
    kept, since a shared filesystem is often reached through one)."""
    return os.path.abspath(Path(path).expanduser())
