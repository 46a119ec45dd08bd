"""Running a study (:class:`Study`): the cases of a dataset, each attacked and evaluated by
:func:`~.cases.run_case`, stored as they finish, then tables, statistics, figures and the report.

One case's rows are stored in ``OUT/cases/<case>.json`` (atomically) the moment the case finishes,
so an interrupted study loses only the cases in flight and a re-run skips every stored case whose
*fingerprint* (dataset entry, model checksums, grid, seed, ROI mode) still matches. The tables,
statistics, figures and report are rebuilt from the stored cases at the end of every run
(:mod:`.report`).

Cases run on Dask distributed: a :class:`distributed.LocalCluster` by default (one worker per
CPU core, or per GPU when CUDA is present), an existing cluster with ``scheduler=ADDRESS``, or
in-process with ``workers=0``. Every attack is seeded from (study seed, case, model, grid
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
from .config import ProgressCallback, StudyConfig, StudyProgress, default_workers
from .dataset import Case, Dataset, discover_dataset, materialize_phantoms, parse_phantom_spec
from .report import build_report


@dataclass
class StudyResult:
    out: Path
    n_cases: int
    n_run: int
    n_skipped: int
    seconds: float
    files: dict = field(default_factory=dict)


class Study:
    """A study bound to an output folder: ``Study(config, out).run()``."""

    def __init__(self, config: StudyConfig, out: str | Path):
        config.validate()
        self.config = config
        self.out = Path(out)
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
        c = self.config
        payload = {"case": [case.case_id, case.path, case.labels], "models": self.model_checksums(),
                   "grid": [gp.key for gp in c.points()], "seed": c.seed, "roi": c.roi, "transfer": c.transfer,
                   "track_iterations": c.track_iterations, "extra": self.extra()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def case_file(self, case: Case) -> Path:
        return store.case_file(self.out, case.case_id)

    def is_done(self, case: Case) -> bool:
        stored = store.stored_fingerprint(self.case_file(case))  # None: missing, or damaged and recomputed
        return stored is not None and stored == self.fingerprint(case)

    # -- running --------------------------------------------------------------------------
    def run(self, *, workers: int | None = None, scheduler: str | None = None, processes: bool = True,
            progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None,
            log: Callable[[str], None] | None = None, report: bool = True,
            command: Sequence[str] | None = None) -> StudyResult:
        """Run every case not stored yet, then rebuild tables, figures and the report.

        ``workers=0``: in this process, one case after another. Otherwise Dask: ``scheduler``
        (an address) or a LocalCluster with ``workers`` workers (default: GPUs if any, else CPU
        cores) on 127.0.0.1, as processes unless ``processes=False``.
        """
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        ds = self.dataset(log)
        cases = ds.cases
        if not cases:
            raise MedadvError(f"{ds.root}: the dataset has no cases")
        config = asdict(self.config)
        extra = self.extra()
        write_json(self.out / "study.json", {"config": config, "dataset": {"kind": ds.kind, "root": ds.root,
                                                                            "n_cases": len(cases), "note": ds.note,
                                                                            "class_names": ds.class_names,
                                                                            "cooccurrence_source":
                                                                                extra.get("cooccurrence_source")},
                                             "models": self.model_checksums(), "grid": [gp.key for gp in self.config.points()],
                                             "versions": package_versions(extra=("dask", "distributed", "pandas", "matplotlib")),
                                             "command": " ".join(command) if command else None})
        todo, skipped = [], 0
        for c in cases:
            if self.is_done(c):
                skipped += 1
            else:
                todo.append(c)
        total = len(cases)
        state = {"done": skipped, "new": 0}
        t_run = time.perf_counter()

        def finished(result: dict, case: Case):
            store.write_case(self.case_file(case), result, self.fingerprint(case))
            state["done"] += 1
            state["new"] += 1
            if progress is not None:
                el = time.perf_counter() - t_run
                left = total - state["done"]
                eta = el / state["new"] * left if state["new"] else None
                progress(StudyProgress(state["done"], total, skipped, el, eta, case.case_id,
                                       f"{case.case_id} done in {result['seconds']:.1f} s"))

        if progress is not None:
            progress(StudyProgress(skipped, total, skipped, 0.0, None, None,
                                   f"{skipped} of {total} cases already stored; {len(todo)} to run"))
        if todo:
            if workers == 0 and scheduler is None:
                for c in todo:
                    if should_stop is not None and should_stop():
                        break
                    finished(run_case(c, config, extra), c)
            else:
                self._run_dask(todo, config, extra, finished, workers, scheduler, processes, should_stop)
        files = {}
        if report:
            files = build_report(self.out)
        return StudyResult(self.out, total, state["new"], skipped, time.perf_counter() - t0, files)

    def _run_dask(self, todo, config, extra, finished, workers, scheduler, processes, should_stop):
        from distributed import Client, LocalCluster, as_completed  # deferred: heavy, unused by workers=0

        cluster = None
        if scheduler:
            client = Client(scheduler, timeout="20s")
        else:
            n = workers or default_workers()
            threads = max(1, (os.cpu_count() or 1) // n) if processes else 1
            # processes: TCP on the loopback interface only; threads: Dask's in-process transport
            net = {"host": "127.0.0.1", "env": {"OMP_NUM_THREADS": str(threads)}} if processes else {}
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                                   dashboard_address=None, memory_limit=0, **net)
            client = Client(cluster)
        try:
            futures = {client.submit(run_case, c, config, extra, key=f"medadv-case-{store.safe_name(c.case_id)}-"
                                     f"{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]}",
                                     pure=False): c for c in todo}
            for fut in as_completed(futures):
                if should_stop is not None and should_stop():
                    for f in futures:
                        f.cancel()
                    break
                finished(fut.result(), futures[fut])
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
