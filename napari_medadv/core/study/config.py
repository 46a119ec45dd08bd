"""What defines a study (:class:`StudyConfig`, read from a YAML grid file or built from CLI flags),
the progress it reports after every case, and the default number of Dask workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..errors import InputFileError, MedadvError
from .grid import GridPoint, expand_grid


@dataclass
class StudyConfig:
    """Everything that defines a study's numbers (and its fingerprint)."""

    dataset: str
    models: list[str]
    grid: list[dict]
    labels_csv: str | None = None
    cooccurrence_from: str | None = None  # training labels CSV for pgd-risk/RISK (default: the evaluated set)
    transfer: bool = False
    seed: int = 0
    roi: str = "auto"  # "auto" (non-zero support of skull-stripped images) | "none"
    track_iterations: bool = True
    device: str = "cpu"
    trust_model_code: bool = False
    baseline_model: str | None = None  # reference for defended-vs-undefended tests (default: first)
    title: str = "Robustness study"

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> StudyConfig:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise InputFileError(p, "grid file not found") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputFileError(p, f"cannot read the YAML grid ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputFileError(p, "the grid file must be a YAML mapping (dataset, models, attacks, ...)")
        known = {f for f in cls.__dataclass_fields__}
        data = {("grid" if k == "attacks" else k): v for k, v in data.items()}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputFileError(p, f"unknown key(s) {', '.join(unknown)}; known: attacks, "
                                    + ", ".join(sorted(known - {'grid'})))
        for k, v in overrides.items():
            if v is not None and v != [] and v != ():
                data[k] = v
        if isinstance(data.get("models"), str):
            data["models"] = [data["models"]]
        missing = [k for k in ("dataset", "models", "grid") if not data.get(k)]
        if missing:
            raise InputFileError(p, f"missing {', '.join('attacks' if m == 'grid' else m for m in missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputFileError(p, str(exc)) from None

    def points(self) -> list[GridPoint]:
        return expand_grid(self.grid)

    def validate(self) -> None:
        if not self.models:
            raise MedadvError("a study needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise MedadvError("a model is listed twice")
        if self.roi not in ("auto", "none"):
            raise MedadvError(f"roi must be 'auto' or 'none', got {self.roi!r}")
        if self.baseline_model is not None and self.baseline_model not in self.models:
            raise MedadvError(f"baseline model {self.baseline_model!r} is not one of the study's models")
        self.points()


@dataclass
class StudyProgress:
    """Reported after every finished (or skipped) case."""

    done: int
    total: int
    skipped: int
    elapsed: float
    eta: float | None
    case: str | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[StudyProgress], object]


def default_workers() -> int:
    """Dask workers of a local study: one per GPU when CUDA is present, else one per CPU core."""
    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return max(1, os.cpu_count() or 1)
