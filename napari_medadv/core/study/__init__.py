"""Robustness studies: a dataset × models × a grid of attacks, run case by case (on Dask), with
statistics, tables, figures and a Markdown/HTML report (``medadv study``)."""

from .cases import (
    Case,
    Dataset,
    GridPoint,
    ProgressCallback,
    Study,
    StudyConfig,
    StudyProgress,
    StudyResult,
    case_seed,
    default_workers,
    discover_dataset,
    expand_grid,
    grid_from_flags,
    materialize_phantoms,
    parse_phantom_spec,
    run_case,
    transfer_attack,
)
from .report import build_report
from .store import NO_ATTACK, REGIONS, load_rows

__all__ = [
    "NO_ATTACK", "REGIONS", "Case", "Dataset", "GridPoint", "ProgressCallback", "Study", "StudyConfig",
    "StudyProgress", "StudyResult", "build_report", "case_seed", "default_workers", "discover_dataset",
    "expand_grid", "grid_from_flags", "load_rows", "materialize_phantoms", "parse_phantom_spec", "run_case",
    "transfer_attack",
]
