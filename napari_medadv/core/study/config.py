"""What defines a study (:class:`StudyConfig`, read from a YAML grid file or built from CLI flags),
the progress it reports after every case, and the default number of Dask workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from ..errors import InputFileError, MedadvError
from .cluster import absolute
from .grid import GridPoint, expand_grid
from .robustness import breaking_settings, sanity_settings
from .store import NO_ATTACK


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
    breaking_eps: dict | bool | None = None  # opt-in: breaking ε per case and model (.robustness)
    sanity: dict | bool | None = None  # opt-in: evaluation sanity checks once per model (.robustness)

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
        self.breaking()
        self.sanity_settings()

    def breaking(self) -> dict | None:
        """The validated ``breaking_eps`` key (:func:`~.robustness.breaking_settings`), or None."""
        eps = sorted({gp.eps for gp in self.points() if gp.attack != NO_ATTACK and not gp.match
                      and gp.eps == gp.eps})
        return breaking_settings(self.breaking_eps, eps)

    def sanity_settings(self) -> dict | None:
        """The validated ``sanity`` key (:func:`~.robustness.sanity_settings`), or None."""
        return sanity_settings(self.sanity)

    def resolved(self) -> StudyConfig:
        """This config with the dataset, labels CSV and model files as absolute paths, resolved
        here (the client): Dask workers run in other folders, often on other machines."""
        ds = self.dataset if self.dataset.startswith("phantoms:") else absolute(self.dataset)
        return replace(self, dataset=ds, labels_csv=None if self.labels_csv is None else absolute(self.labels_csv),
                       models=[absolute_model_spec(m) for m in self.models],
                       sanity=_absolute_sanity(self.sanity),
                       baseline_model=None if self.baseline_model is None else absolute_model_spec(self.baseline_model))

    def input_paths(self) -> list[str]:
        """The files and folders every worker must read: the dataset (or labels CSV) and the model
        files (after :meth:`resolved`). Generated phantoms live in the output folder."""
        paths = [] if self.dataset.startswith("phantoms:") else [self.dataset]
        if self.labels_csv:
            paths.append(self.labels_csv)
        for m in self.models:
            paths.extend(model_paths(m))
        return paths


def _absolute_sanity(value):
    """The ``sanity`` key with its transfer source model's file made absolute (workers, like models)."""
    if not isinstance(value, dict) or not value.get("source_model"):
        return value
    return {**value, "source_model": absolute_model_spec(str(value["source_model"]))}


def model_file_groups(spec: str) -> list[list[str]]:
    """What ``--stage`` sends for a model: its file or folder, with a TorchScript file's JSON sidecar."""
    paths = model_paths(spec)
    if not paths:
        return []
    p = Path(paths[0])
    if spec.startswith("torchscript:"):
        return [[str(p), str(p.with_suffix(".json")), str(p) + ".json"]]
    if spec.startswith("trained:"):  # medadv train's NAME.pt + NAME.json, side by side
        return [[str(p), str(p.with_suffix(".pt" if p.suffix == ".json" else ".json"))]]
    return [[str(p)]]


#: model schemes whose value starts with a file or folder (``nnunet:DIR[:FOLDS][:notta]``)
PATH_SCHEMES = ("torchscript", "bundle", "nnunet", "trained")


def model_paths(spec: str) -> list[str]:
    """The file or folder a model spec reads (none for ``demo:``, ``xrv:`` and code factories)."""
    scheme, _, value = spec.partition(":")
    if scheme not in PATH_SCHEMES or not value:
        return []
    return [value.split(":", 1)[0] if scheme == "nnunet" else value]


def absolute_model_spec(spec: str) -> str:
    """``torchscript:model.pt`` -> ``torchscript:/abs/model.pt`` (``nnunet:DIR:0,1`` keeps its folds)."""
    paths = model_paths(spec)
    if not paths:
        return spec
    scheme, _, value = spec.partition(":")
    return f"{scheme}:{absolute(paths[0])}{value[len(paths[0]):]}"


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
