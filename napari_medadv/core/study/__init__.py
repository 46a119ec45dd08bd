"""Robustness studies (``medadv study``): a dataset × models × a grid of attacks, run case by case
on Dask, with statistics, tables, figures and a Markdown/HTML report.

``grid`` (attack configurations), ``dataset`` (the cases), ``config`` (what defines a study),
``cases`` (one case: attack and evaluate), ``store`` (stored per-case results), ``runner``
(:class:`Study`), ``cluster`` (LocalCluster, scheduler, SLURM/PBS/LSF batch jobs, GPU workers),
``staging`` (files sent to workers), ``stats`` (tests, corrections) and ``report`` (tables,
figures, the document).
"""

from .cases import case_seed, run_case, transfer_attack
from .config import ProgressCallback, StudyConfig, StudyProgress, default_workers
from .dataset import Case, Dataset, discover_dataset, materialize_phantoms, parse_phantom_spec
from .grid import GridPoint, expand_grid, grid_from_flags
from .report import build_report
from .runner import Study, StudyResult
from .store import NO_ATTACK, REGIONS, load_rows

__all__ = [
    "NO_ATTACK", "REGIONS", "Case", "Dataset", "GridPoint", "ProgressCallback", "Study", "StudyConfig",
    "StudyProgress", "StudyResult", "build_report", "case_seed", "default_workers", "discover_dataset",
    "expand_grid", "grid_from_flags", "load_rows", "materialize_phantoms", "parse_phantom_spec", "run_case",
    "transfer_attack",
]
