"""Running a study (:class:`Study`): the cases of a dataset, each attacked and evaluated by
:func:`~.cases.run_case`, stored as they finish, then tables, statistics, figures and the report.

One case's rows are stored in ``OUT/cases/<case>.json`` (atomically) the moment the case finishes,
so an interrupted study loses only the cases in flight and a re-run skips every stored case whose
*fingerprint* (dataset entry, model checksums, grid, seed, ROI mode) still matches. The tables,
statistics, figures and report are rebuilt from the stored cases at the end of every run
(:mod:`.report`).

Cases run on Dask distributed: a :class:`distributed.LocalCluster` by default (one worker per
CPU core, or per GPU when CUDA is present), an existing cluster with ``scheduler=ADDRESS``, batch
jobs on SLURM/PBS/LSF (:mod:`.cluster`), or in-process with ``workers=0``. Paths are made
absolute here (the client) and every worker is asked whether it can read them before the first
case (or they are sent with ``stage``: :mod:`.staging`). A case that raises on every try is
recorded in ``OUT/failed/`` and reported; the others go on. Every attack is seeded from (study seed, case, model, grid
point), independently of where and in which order it runs, so a parallel run yields the same
numbers as a sequential one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import metrics as M
from ..cooccurrence import inverse_cooccurrence_from_csv
from ..errors import MedadvError
from ..files import package_versions, write_json
from . import store
from .cases import cached_model, run_case
from .cluster import ClusterSpec, absolute, check_workers, open_cluster
from . import staging
from .config import ProgressCallback, StudyConfig, StudyProgress, model_file_groups, model_paths
from .dataset import Case, Dataset, discover_dataset, materialize_phantoms, parse_phantom_spec
from .report import build_report
from .sanity_runs import run_study_sanity


@dataclass
class StudyResult:
    out: Path
    n_cases: int
    n_run: int
    n_skipped: int
    seconds: float
    files: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)  # case id -> error line

    @property
    def n_failed(self) -> int:
        return len(self.failed)


class Study:
    """A study bound to an output folder: ``Study(config, out).run()``."""

    def __init__(self, config: StudyConfig, out: str | Path):
        config.validate()
        self.config = config.resolved()  # absolute paths: workers run in other folders
        self.out = Path(absolute(out))
        self.cases_dir = self.out / store.CASES
        self._dataset: Dataset | None = None
        self._extra: dict | None = None
        self._checksums: dict | None = None

    # -- preparation ----------------------------------------------------------------------
    def dataset(self, log: Callable[[str], None] | None = None) -> Dataset:
        if self._dataset is None:
            src = self.config.dataset
            if src.startswith("phantoms:"):
                folder = materialize_phantoms(src, self.out / "data", log)
                ds = discover_dataset(folder, self.config.labels_csv)
                kind, seeds = parse_phantom_spec(src)
                if kind == "glioma":  # the folder may hold cases of an earlier, wider seed range: not those
                    wanted = {f"glioma_{s:03d}" for s in seeds}
                    ds.cases = [c for c in ds.cases if c.case_id in wanted]
                ds.note = (f"held-out {kind} phantoms generated at study time from seeds "
                           f"{seeds[0]}..{seeds[-1]} ({len(seeds)} cases; training seeds start at 1000)")
            else:
                ds = discover_dataset(src, self.config.labels_csv)
            self._dataset = ds
        return self._dataset

    def extra(self) -> dict:
        """Dataset-wide inputs of every case: class names and the inverse co-occurrence matrix."""
        if self._extra is None:
            ds = self.dataset()
            src = self.config.cooccurrence_from
            if src:  # the paper's setting: co-occurrences of the training labels
                inv = inverse_cooccurrence_from_csv(src, ds.class_names)
                note = f"training labels {src}"
            else:
                y = ds.label_matrix()
                inv = None if y is None else M.inverse_cooccurrence(y)
                note = None if y is None else "the evaluated set's labels (no training labels CSV given)"
            self._extra = {"class_names": ds.class_names,
                           "inverse_cooccurrence": None if inv is None else inv.tolist(),
                           "cooccurrence_source": note}
        return self._extra

    def model_checksums(self) -> dict:
        if self._checksums is None:
            c = self.config
            self._checksums = {spec: cached_model(spec, c.device, c.trust_model_code).checksum for spec in c.models}
        return self._checksums

    def fingerprint(self, case: Case) -> str:
        """What a stored case was computed from. Paths enter it relative to the current folder when
        inside it, as they were typed before the client made them absolute, so studies stored
        earlier (the committed reports) still resume."""
        c = self.config
        models = {relative_spec(m): v for m, v in self.model_checksums().items()}
        payload = {"case": [case.case_id, relative(case.path), case.labels], "models": models,
                   "grid": [gp.key for gp in c.points()], "seed": c.seed, "roi": c.roi, "transfer": c.transfer,
                   "track_iterations": c.track_iterations, "extra": self.extra()}
        if c.breaking_eps not in (None, False):  # only when asked: older studies keep their fingerprints
            payload["breaking_eps"] = c.breaking()
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def case_file(self, case: Case) -> Path:
        return store.case_file(self.out, case.case_id)

    def is_done(self, case: Case) -> bool:
        stored = store.stored_fingerprint(self.case_file(case))  # None: missing, or damaged and recomputed
        return stored is not None and stored == self.fingerprint(case)

    # -- running --------------------------------------------------------------------------
    def run(self, *, workers: int | None = None, scheduler: str | None = None, processes: bool = True,
            cluster: ClusterSpec | None = None, stage: bool = False, progress: ProgressCallback | None = None,
            should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None,
            report: bool = True, command: Sequence[str] | None = None) -> StudyResult:
        """Run every case not stored yet, then rebuild tables, figures and the report.

        ``workers=0``: in this process, one case after another. Otherwise Dask: ``cluster`` (a
        :class:`~.cluster.ClusterSpec`: LocalCluster, scheduler or SLURM/PBS/LSF batch jobs), or
        the shorthands ``scheduler`` (an address) or a LocalCluster with ``workers`` workers
        (default: GPUs if any, else CPU cores) on 127.0.0.1, as processes unless ``processes=False``.
        ``stage``: send the case and model files to the workers through Dask (:mod:`.staging`)
        instead of asking whether they can read them.

        A case that raises (on Dask: on every one of its tries) is recorded in ``OUT/failed/`` and
        listed in the report; the other cases go on. Only when no case at all succeeds or is stored
        does the run raise, with the first case's error.
        """
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        ds = self.dataset(log)
        cases = ds.cases
        if not cases:
            raise MedadvError(f"{ds.root}: the dataset has no cases")
        config = asdict(self.config)
        self._write_meta(ds, config, command)
        todo, skipped = [], 0
        for c in cases:
            if self.is_done(c):
                skipped += 1
            else:
                todo.append(c)
        total = len(cases)
        state = {"done": skipped, "new": 0, "failed": {}}
        t_run = time.perf_counter()

        def finished(result: dict, case: Case):
            store.write_case(self.case_file(case), result, self.fingerprint(case))
            store.clear_failure(self.out, case.case_id)
            state["done"] += 1
            state["new"] += 1
            self._report_progress(progress, state, total, skipped, t_run, case,
                                  f"{case.case_id} done in {result['seconds']:.1f} s")

        def failed(case: Case, error: str, tries: int):
            store.write_failure(self.out, case.case_id, error, tries)
            state["failed"][case.case_id] = error
            state["done"] += 1
            self._report_progress(progress, state, total, skipped, t_run, case, f"{case.case_id} FAILED: {error}")

        if progress is not None:
            progress(StudyProgress(skipped, total, skipped, 0.0, None, None,
                                   f"{skipped} of {total} cases already stored; {len(todo)} to run"))
        if todo:
            if workers == 0 and scheduler is None and cluster is None:
                for c in todo:
                    if should_stop is not None and should_stop():
                        break
                    try:
                        result = run_case(c, config, extra=self.extra())
                    except Exception as exc:  # noqa: BLE001 - recorded as a failed case, the study goes on
                        failed(c, error_line(exc), 1)
                    else:
                        finished(result, c)
            else:
                spec = cluster or ClusterSpec("scheduler" if scheduler else "local", workers=workers, processes=processes,
                                              address=scheduler, gpus=_local_gpus(self.config.device, workers))
                self._run_dask(todo, config, ds, spec, finished, failed, should_stop, log, stage)
        if state["failed"] and state["new"] == 0 and skipped == 0:
            case, error = next(iter(state["failed"].items()))
            raise MedadvError(f"every case failed; {case}: {error}" if len(todo) > 1 else error)
        if self.config.sanity_settings() is not None and not (should_stop is not None and should_stop()):
            run_study_sanity(self, cases, log, should_stop)
        files = build_report(self.out) if report else {}
        return StudyResult(self.out, total, state["new"], skipped, time.perf_counter() - t0, files,
                           dict(state["failed"]))

    def _write_meta(self, ds: Dataset, config: dict, command) -> None:
        write_json(self.out / "study.json", {"config": config, "dataset": {"kind": ds.kind, "root": ds.root,
                                                                            "n_cases": len(ds.cases), "note": ds.note,
                                                                            "class_names": ds.class_names,
                                                                            "cooccurrence_source":
                                                                                self.extra().get("cooccurrence_source")},
                                             "models": self.model_checksums(), "grid": [gp.key for gp in self.config.points()],
                                             "versions": package_versions(extra=("dask", "distributed", "dask_jobqueue",
                                                                                 "pandas", "matplotlib")),
                                             "command": " ".join(command) if command else None})

    @staticmethod
    def _report_progress(progress, state, total, skipped, t_run, case, message):
        if progress is None:
            return
        el = time.perf_counter() - t_run
        left = total - state["done"]
        n = state["done"] - skipped
        progress(StudyProgress(state["done"], total, skipped, el, el / n * left if n else None, case.case_id, message))

    def _run_dask(self, todo, config, ds, spec: ClusterSpec, finished, failed, should_stop, log, stage=False):
        from distributed import as_completed  # deferred: heavy, unused by workers=0

        tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        paths = self.config.input_paths() + ([ds.root] if self.config.dataset.startswith("phantoms:") else [])
        with open_cluster(spec, log) as oc:
            client = oc.client
            resources = {"GPU": 1} if oc.gpu else None
            if oc.batch and log:
                log("waiting for the first batch job to start a worker (Ctrl-C cancels the jobs)")
            staged = None
            if stage:
                groups = [[c.path] for c in todo] + [g for m in self.config.models for g in model_file_groups(m)]
                packed = staging.pack(groups)
                staging.register(client, packed)
                staged = {"key": packed["key"], "map": packed["map"]}
                if log:
                    log(f"--stage: {len(packed['data']) / 2**20:.1f} MB of case and model files sent to the workers")
            n = check_workers(oc, [] if stage else paths, resources, timeout=None if oc.batch else 120)
            if log:
                log(f"{oc.description}: {n} worker(s) connected" + ("" if stage else ", all can read the dataset and models"))
            extra = self.extra()
            futures = {client.submit(run_case, c, config, extra, staged, key=f"medadv-case-{store.safe_name(c.case_id)}-{tag}",
                                     pure=False, retries=RETRIES, resources=resources): c for c in todo}
            # the futures' own client's loop: as_completed defaults to the *default* client's, and
            # with another client in the process (a notebook's, a test's) a future whose event was
            # cleared (its worker died, the case is retried) is then awaited on two loops, which
            # asyncio refuses ("bound to a different event loop")
            for fut in as_completed(futures, loop=client.loop):
                if should_stop is not None and should_stop():
                    for f in futures:
                        f.cancel()
                    break
                case = futures[fut]
                if fut.status == "finished":
                    finished(fut.result(), case)
                else:  # "error" after every retry, or "cancelled" (the scheduler lost it)
                    exc = fut.exception() if fut.status == "error" else None
                    failed(case, _dask_error(exc, fut.status), RETRIES + 1)


def relative(path: str) -> str:
    """``path`` relative to the current folder when inside it, else unchanged."""
    rel = os.path.relpath(path)
    return path if rel == ".." or rel.startswith("../") else rel


def relative_spec(spec: str) -> str:
    paths = model_paths(spec)
    return spec.replace(paths[0], relative(paths[0]), 1) if paths else spec


#: Dask runs a raising case once more (a GPU shared with another job, a network filesystem hiccup)
RETRIES = 1


def error_line(exc: BaseException) -> str:
    """A failed case's error as one line: the message of our errors, ``Type: message`` otherwise."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, MedadvError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def _dask_error(exc, status: str) -> str:
    if exc is None:
        return f"the case was {status} by the Dask scheduler"
    if type(exc).__name__ == "KilledWorker":
        return (f"the case's worker died on every try ({error_line(exc)}): out of memory, or a crash in native "
                "code; the workers' logs say which")
    return error_line(exc)


def _local_gpus(device: str, workers: int | None) -> int:
    """GPU workers of a local cluster: one per visible GPU unless the study runs on the CPU."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 0
    n = torch.cuda.device_count()
    return min(n, workers) if workers else n
