"""Robustness studies: a dataset × models × a grid of attacks, with statistics and a report
(``medadv study``; the GUI's Model dock calls :func:`transfer_attack`).

A study runs *cases*. For each case, every source model is attacked with every grid point
(registry attack + parameter values, plus the "no attack" baseline) and the adversarial image is
evaluated on the source model — and, with ``transfer=True``, on every other model (craft on A,
evaluate on B: Ghamizi et al. 2023, Table 2). One case's rows are stored in
``OUT/cases/<case>.json`` (atomically) the moment the case finishes, so an interrupted study loses
only the cases in flight and a re-run skips every stored case whose *fingerprint* (dataset
entry, model checksums, grid, seed, ROI mode) still matches. The tables, statistics, figures and
report are rebuilt from the stored cases at the end of every run (:mod:`.report`).

Cases run on Dask distributed: a :class:`distributed.LocalCluster` by default (one worker per
CPU core, or per GPU when CUDA is present), an existing cluster with ``scheduler=ADDRESS``, or
in-process with ``workers=0``. Every attack is seeded from (study seed, case, model, grid
point), independently of where and in which order it runs, so a parallel run yields the same
numbers as a sequential one.

Grid (YAML, or :func:`grid_from_flags`)::

    dataset: sample_data/glioma          # BraTS case folders | images + labels CSV | phantoms:glioma:5-24
    models: [demo:unet3d, demo:unet3d-distill]
    transfer: false
    seed: 0
    attacks:
      - attack: fgsm                     # any name in the attack registry
        eps: [0.01, 0.05]                # a value or a list; lists are crossed
      - attack: ifgsm
        eps: 0.05
        steps: [5, 10]
      - attack: [fgsm, motion, biasfield]  # a list of sources: each gets the entry's other axes
        psnr: [40, 35, 30]               # matched image quality (or ssim: [0.95, 0.9])
        tol: 0.25                        # optional: accepted |achieved - target| (dB / SSIM)

Parameters are validated against the registry entry's ``params``, so any registered attack
(e.g. an MR artifact with a ``severity`` parameter) can be put in a grid without code here.

**Matched image quality** (``psnr:`` or ``ssim:``): each point means "this source at the knob
value (``eps`` of an attack, ``severity`` of an MR artifact) that brings *this case* to this
PSNR/SSIM". The search (:func:`~.matching.match_for_image`, same ROI, labels and seed as the
unmatched points) runs per case inside :func:`run_case`; every row records the target, the
quality reached, the knob and its value, and whether the target was reached within the
tolerance (a source whose strongest setting stays above the target, like ghosting at low PSNR,
gives its closest value with ``match_reached = False``). Such an entry must not also fix the
knob (``eps``/``severity``): the search sets it. All targets of one source on one case share
its seed (:attr:`GridPoint.seed_key`): the same motion trajectory, bias field or noise field,
scaled to each target, so a curve follows one event as it grows.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputFileError, MedadvError
from .files import atomic_write, package_versions, write_json
from .study_store import NO_ATTACK, REGIONS, load_rows  # noqa: F401 (the study's public names)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")


# --------------------------------------------------------------------------- grid


QUALITY_AXES = ("psnr", "ssim")  # matched-quality grid axes (see the module docstring)


@dataclass(frozen=True)
class GridPoint:
    """One attack configuration: a registry name (or ``"none"``), its parameter values and,
    for a matched-quality point, the quality to reach (``(("psnr", 40.0),)``, optionally with
    ``("tol", 0.25)``): the knob is then found per case."""

    attack: str
    params: tuple = ()  # sorted ((name, value), ...)
    match: tuple = ()  # sorted ((metric, target), ("tol", value)?) for matched quality

    @property
    def params_dict(self) -> dict:
        return dict(self.params)

    @property
    def key(self) -> str:
        items = sorted(self.params + self.match)
        if not items:
            return self.attack
        return f"{self.attack}[{','.join(f'{k}={_fmt_value(v)}' for k, v in items)}]"

    @property
    def seed_key(self) -> str:
        """What the point's seed derives from: its key, except that the targets of a matched
        point share their source's seed — one case meets the same random event (motion
        trajectory, bias field, noise field, random start) at every target, only scaled."""
        return GridPoint(self.attack, self.params).key if self.match else self.key

    @property
    def match_metric(self) -> str | None:
        return next((k for k, _ in self.match if k in QUALITY_AXES), None)

    @property
    def match_target(self) -> float:
        return float(dict(self.match).get(self.match_metric, math.nan)) if self.match else math.nan

    @property
    def match_tol(self) -> float | None:
        return dict(self.match).get("tol")

    @property
    def label(self) -> str:
        if self.attack == NO_ATTACK:
            return "no attack"
        from .attacks import ATTACKS

        name = ATTACKS[self.attack].label if self.attack in ATTACKS else self.attack
        parts = [f"{'ε' if k == 'eps' else k}={_fmt_value(v)}" for k, v in self.params]
        if self.match:
            unit = " dB" if self.match_metric == "psnr" else ""
            parts.append(f"at {self.match_metric.upper()} {_fmt_value(self.match_target)}{unit}")
        return f"{name} {' '.join(parts)}".strip()

    @property
    def eps(self) -> float:
        return float(self.params_dict.get("eps", math.nan))

    @property
    def steps(self) -> float:
        return float(self.params_dict.get("steps", math.nan))


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand_grid(entries: Sequence[dict]) -> list[GridPoint]:
    """``[{attack: NAME | [NAMES], param: value | [values], ...}, ...]`` -> grid points (the
    no-attack baseline first). A list of attacks crosses each with the entry's other axes.
    ``psnr``/``ssim`` (with an optional ``tol``) make matched-quality points. Unknown
    attacks/parameters and contradictory entries raise ``MedadvError`` naming them."""
    points: list[GridPoint] = [GridPoint(NO_ATTACK)]
    for i, entry in enumerate(entries):
        where = f"grid entry {i + 1}"
        if not isinstance(entry, dict) or "attack" not in entry:
            raise MedadvError(f"{where} must be a mapping with an 'attack' key, got {entry!r}")
        names = entry["attack"] if isinstance(entry["attack"], (list, tuple)) else [entry["attack"]]
        if not names:
            raise MedadvError(f"{where}: 'attack' is an empty list")
        match_axes = _match_axes(entry, where)
        rest = {k: v for k, v in entry.items() if k not in ("attack", "tol", *QUALITY_AXES)}
        for name in (str(n) for n in names):
            if name == NO_ATTACK:
                continue
            axes = _param_axes(name, rest, where)
            if match_axes:
                _check_matchable(name, rest, match_axes[0][0][0], where)
            for combo in itertools.product(*axes) if axes else [()]:
                for m in itertools.product(*match_axes) if match_axes else [()]:
                    gp = GridPoint(name, tuple(sorted(combo)), tuple(sorted(m)))
                    if gp not in points:
                        points.append(gp)
    return points


def _param_axes(name: str, entry: dict, where: str) -> list[list[tuple]]:
    from .attacks import ATTACKS

    if name not in ATTACKS:
        raise MedadvError(f"{where}: unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    spec = ATTACKS[name]
    known = {p.name: p for p in spec.params}
    axes = []
    for k, v in entry.items():
        if k not in known and k != "loss":
            raise MedadvError(f"{where}: {spec.label} has no parameter {k!r}; "
                              f"it takes {', '.join(known) or 'none'}")
        kind = known[k].kind if k in known else str
        values = v if isinstance(v, (list, tuple)) else [v]
        if not values:
            raise MedadvError(f"{where}: {k} has an empty list of values")
        axes.append([(k, _coerce(kind, x, f"{where}: {k}")) for x in values])
    return axes


def _match_axes(entry: dict, where: str) -> list[list[tuple]]:
    """The matched-quality axes of a grid entry: ``[[(metric, t1), (metric, t2), ...], [("tol", v)]?]``."""
    given = [k for k in QUALITY_AXES if k in entry]
    if len(given) > 1:
        raise MedadvError(f"{where}: give psnr or ssim, not both (one matched-quality axis per entry)")
    if not given:
        if "tol" in entry:
            raise MedadvError(f"{where}: tol is the tolerance of a psnr/ssim target; the entry has none")
        return []
    metric = given[0]
    values = entry[metric] if isinstance(entry[metric], (list, tuple)) else [entry[metric]]
    if not values:
        raise MedadvError(f"{where}: {metric} has an empty list of values")
    targets = []
    for v in values:
        t = _coerce(float, v, f"{where}: {metric}")
        ok = t is not None and math.isfinite(t) and (t > 0 if metric == "psnr" else -1.0 < t <= 1.0)
        if not ok:
            need = "a finite PSNR in dB > 0" if metric == "psnr" else "an SSIM in (-1, 1]"
            raise MedadvError(f"{where}: {metric} target {v!r} must be {need}")
        targets.append((metric, t))
    axes = [targets]
    if "tol" in entry:
        tol = _coerce(float, entry["tol"], f"{where}: tol")
        if tol is None or not (math.isfinite(tol) and tol > 0):
            raise MedadvError(f"{where}: tol must be a number > 0, got {entry['tol']!r}")
        axes.append([("tol", tol)])
    return axes


def _check_matchable(name: str, params: dict, metric: str, where: str) -> None:
    from .matching import knob_for

    try:
        knob = knob_for(name)
    except ValueError as exc:
        raise MedadvError(f"{where}: {exc}") from None
    if knob in params:
        raise MedadvError(f"{where}: {metric} sets {name}'s {knob} (found per case to reach the target); "
                          f"drop {knob} from this entry, or put fixed {knob} values in an entry of their own")


def _coerce(kind, value, where: str):
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return kind(value)
    except (TypeError, ValueError):
        raise MedadvError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def grid_from_flags(attacks: Sequence[str], eps: Sequence[float] | None = None,
                    steps: Sequence[int] | None = None, extra: dict | None = None, *,
                    psnr: Sequence[float] | None = None, ssim: Sequence[float] | None = None,
                    tol: float | None = None) -> list[dict]:
    """Grid entries from CLI flags: each attack gets the ε/steps lists it takes a parameter for.

    With ``psnr``/``ssim`` every attack gets a matched-quality entry (its knob found per case);
    attacks that take ε also keep an entry with the fixed ``eps`` values when those are given.
    """
    from .attacks import ATTACKS

    if psnr and ssim:
        raise MedadvError("give PSNR or SSIM targets, not both")
    quality = ("psnr", list(psnr)) if psnr else ("ssim", list(ssim)) if ssim else None
    if tol is not None and quality is None:
        raise MedadvError("a match tolerance needs PSNR or SSIM targets")
    entries = []
    for name in attacks:
        spec = ATTACKS.get_spec(name)
        takes = {p.name for p in spec.params}
        e: dict = {"attack": name}
        if steps and "steps" in takes:
            e["steps"] = list(steps)
        for k, v in (extra or {}).items():
            if k in takes:
                e[k] = v
        if quality is not None:
            if eps and "eps" in takes:
                entries.append({**e, "eps": list(eps)})
            entries.append({**e, quality[0]: quality[1], **({} if tol is None else {"tol": tol})})
            continue
        if eps and "eps" in takes:
            e["eps"] = list(eps)
        entries.append(e)
    return entries


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Case:
    """One study case: an image file/folder and, for classifiers, its multi-hot labels."""

    case_id: str
    path: str
    labels: tuple | None = None  # classification: one 0/1 per class, in ``class_names`` order


@dataclass
class Dataset:
    kind: str  # "brats" | "images"
    root: str
    cases: list[Case]
    class_names: list[str] | None = None
    note: str = ""

    def label_matrix(self) -> np.ndarray | None:
        if not self.class_names:
            return None
        return np.array([c.labels for c in self.cases], dtype=np.float64)


def parse_phantom_spec(spec: str) -> tuple[str, list[int]]:
    """``phantoms:glioma:5-24`` / ``phantoms:glioma:1,2,7`` -> (kind, seeds)."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "phantoms" or parts[1] not in ("glioma", "cxr"):
        raise MedadvError(f"phantom dataset {spec!r} must look like phantoms:glioma:5-24 or phantoms:cxr:1-40")
    seeds: list[int] = []
    try:
        for chunk in parts[2].split(","):
            if "-" in chunk:
                a, b = (int(s) for s in chunk.split("-", 1))
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(chunk))
    except ValueError:
        raise MedadvError(f"phantom dataset {spec!r}: seeds must be integers like 5-24 or 1,2,7") from None
    from .data.seeds import TRAIN_SEED_START

    bad = [s for s in seeds if s < 1 or s >= TRAIN_SEED_START]
    if bad or not seeds:
        raise MedadvError(f"phantom dataset {spec!r}: held-out seeds must lie in 1..{TRAIN_SEED_START - 1} "
                          f"(seeds >= {TRAIN_SEED_START} are the demo models' training cases)")
    return parts[1], sorted(set(seeds))


def materialize_phantoms(spec: str, folder: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Generate held-out phantom cases into ``folder`` (existing ones are kept: resumable)."""
    from .data import cxr, glioma

    kind, seeds = parse_phantom_spec(spec)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "glioma":
        for s in seeds:
            cid = f"glioma_{s:03d}"
            dest = folder / cid
            if dest.is_dir():
                continue
            tmp = Path(tempfile.mkdtemp(prefix=f".{cid}.", dir=folder))
            channels, seg, affine = glioma.make_glioma_case(s)
            glioma.write_brats_case(tmp, cid, channels, seg, affine)
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest)
            if log:
                log(f"generated held-out phantom {cid} (seed {s})")
        return folder
    import imageio.v3 as iio

    rows = []
    for s in seeds:
        img, labels = cxr.make_cxr_case(s)
        name = f"case_{s:03d}.png"
        if not (folder / name).is_file():
            arr = np.clip(np.round(np.asarray(img, dtype=np.float64) * 65535), 0, 65535).astype(np.uint16)
            atomic_write(folder / name, lambda f, a=arr: iio.imwrite(f, a, extension=".png"))
        rows.append([name] + [int(labels[f]) for f in cxr.CXR_FINDINGS])
    text = "file," + ",".join(cxr.CXR_FINDINGS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    atomic_write(folder / "labels.csv", lambda f: Path(f).write_text(text))
    return folder


def discover_dataset(path: str | Path, labels_csv: str | Path | None = None) -> Dataset:
    """A folder of BraTS case folders (or one case folder), or images with a labels CSV.

    Labels CSV: a ``file`` column (paths relative to the CSV) and one 0/1 column per class.
    Every problem raises :class:`InputFileError` naming the file or folder.
    """
    from .io.nifti import find_brats_files

    root = Path(path).expanduser()
    if not root.exists():
        raise InputFileError(root, "dataset folder not found")
    if labels_csv is None and root.is_file() and root.suffix.lower() == ".csv":
        labels_csv, root = root, root.parent
    if labels_csv is None and root.is_dir() and (root / "labels.csv").is_file():
        labels_csv = root / "labels.csv"
    if labels_csv is not None:
        return _images_with_labels(Path(labels_csv).expanduser())
    if not root.is_dir():
        return Dataset("images", str(root.parent), [Case(_case_id(root), str(root))])
    if find_brats_files(root) is not None:
        return Dataset("brats", str(root.parent), [Case(root.name, str(root))])
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if find_brats_files(sub) is not None:
            cases.append(Case(sub.name, str(sub)))
    if cases:
        return Dataset("brats", str(root), cases)
    files = sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))
    if not files:
        raise InputFileError(root, "no BraTS case folders (…_t1/_t1ce/_t2/_flair) and no images "
                                   "(PNG/JPEG/TIFF/DICOM/NIfTI) in this folder")
    return Dataset("images", str(root), [Case(_case_id(p), str(p)) for p in files])


def _is_image(p: Path) -> bool:
    name = p.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES) and not name.endswith("_seg.nii.gz")


def _case_id(p: Path) -> str:
    name = p.name
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def _images_with_labels(csv_path: Path) -> Dataset:
    if not csv_path.is_file():
        raise InputFileError(csv_path, "labels CSV not found")
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(csv_path, f"cannot read the labels CSV ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputFileError(csv_path, "labels CSV needs a header (file,<class>,...) and at least one row")
    header = [h.strip() for h in rows[0]]
    if "file" not in header or len(header) < 2:
        raise InputFileError(csv_path, f"labels CSV header must be file,<class1>,<class2>,...; got {','.join(header)}")
    fi = header.index("file")
    classes = [h for i, h in enumerate(header) if i != fi]
    cases = []
    seen = set()
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise InputFileError(csv_path, f"line {n} has {len(r)} fields, the header {len(header)}")
        f = csv_path.parent / r[fi].strip()
        if not f.exists():
            raise InputFileError(csv_path, f"line {n}: image {r[fi].strip()} not found")
        vals = []
        for i, c in enumerate(r):
            if i == fi:
                continue
            try:
                v = float(c)
            except ValueError:
                v = math.nan
            if v not in (0.0, 1.0):
                raise InputFileError(csv_path, f"line {n}: label {header[i]}={c!r} must be 0 or 1")
            vals.append(int(v))
        cid = _case_id(f)
        if cid in seen:
            raise InputFileError(csv_path, f"line {n}: {r[fi].strip()} is listed twice")
        seen.add(cid)
        cases.append(Case(cid, str(f), tuple(vals)))
    return Dataset("images", str(csv_path.parent), cases, class_names=classes, note=f"labels from {csv_path.name}")


# --------------------------------------------------------------------------- configuration


@dataclass
class StudyConfig:
    """Everything that defines a study's numbers (and its fingerprint)."""

    dataset: str
    models: list[str]
    grid: list[dict]
    labels_csv: str | None = None
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
        import yaml

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


# --------------------------------------------------------------------------- progress


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


# --------------------------------------------------------------------------- one case


_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def _model(spec: str, device: str, trust: bool):
    """Models cached per (spec, device, thread): Dask worker threads never share a module."""
    from .models import load_model

    key = (spec, device, trust, threading.get_ident())
    with _MODELS_LOCK:
        m = _MODELS.get(key)
    if m is None:
        m = load_model(spec, device=_worker_device(device), trust_code=trust)
        with _MODELS_LOCK:
            _MODELS[key] = m
    return m


def _worker_device(device: str) -> str:
    """``auto`` on a multi-GPU Dask worker: one GPU per worker (by worker name)."""
    if device != "auto":
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 1:
        try:
            from distributed import get_worker

            name = get_worker().name
            idx = int(name) if str(name).isdigit() else int(hashlib.sha256(str(name).encode()).hexdigest(), 16)
            return f"cuda:{idx % n}"
        except (ImportError, ValueError):
            pass
    return "auto"


def case_seed(seed: int, case_id: str, model: str, key: str) -> int:
    """Seed of one attack: a function of what it attacks, not of scheduling order."""
    digest = hashlib.sha256(f"{seed}|{case_id}|{model}|{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_case(case: Case, config: dict, extra: dict | None = None) -> dict:
    """Attack one case with every source model and grid point; return its rows.

    ``config`` is :func:`dataclasses.asdict` of a :class:`StudyConfig`; ``extra`` holds what the
    study derived from the whole dataset (class names, inverse co-occurrence matrix).
    """
    from .io import read_image
    from .pipeline import model_input

    extra = extra or {}
    cfg = StudyConfig(**config)
    points = cfg.points()
    image = read_image(case.path)
    models = {s: _model(s, cfg.device, cfg.trust_model_code) for s in cfg.models}
    rows: list[dict] = []
    history: list[dict] = []
    t_case = time.perf_counter()
    clean_cache: dict = {}

    def clean_output(spec: str):
        if spec not in clean_cache:  # one clean forward per model and case
            clean_cache[spec] = models[spec].forward(model_input(image, models[spec]))  # also checks the image
        return clean_cache[spec]

    for src, m in models.items():
        mapping = m.check_image(image.array, str(image.source), image.channel_names)
        task = m.info.task
        labels = _case_labels(case, image, m, extra)
        targets = list(models) if cfg.transfer else [src]
        for gp in points:
            base = {"case": case.case_id, "source": src, "grid_key": gp.key, "attack": gp.attack,
                    "attack_label": gp.label, "eps": gp.eps if gp.attack != NO_ATTACK else 0.0,
                    "steps": gp.steps, "params": json.dumps(gp.params_dict, sort_keys=True), "task": task,
                    "channels": mapping.describe()}
            if gp.attack == NO_ATTACK:
                for tgt in targets:
                    if tgt != src:
                        continue  # the clean evaluation belongs to each model once
                    out = clean_output(tgt)
                    rows.append({**base, "target": tgt, "seed": -1, "seconds": 0.0,
                                 **_quality(image.array, image.array),
                                 **_evaluate(models[tgt], out, out, labels, case, extra)})
                continue
            params = gp.params_dict
            if gp.attack == "pgd-risk" and params.get("cooccurrence") is None:
                if extra.get("inverse_cooccurrence") is None:
                    raise MedadvError("pgd-risk needs a labels CSV to build the inverse co-occurrence matrix")
                params["cooccurrence"] = np.asarray(extra["inverse_cooccurrence"])
            from .attacks import ATTACKS

            iterative = any(p.name == "steps" for p in ATTACKS[gp.attack].params)
            track = cfg.track_iterations and iterative and not ATTACKS[gp.attack].gradient_free
            seed = case_seed(cfg.seed, case.case_id, src, gp.seed_key)
            if gp.match:
                adv, clean_out, adv_out, result, seconds, matched = _matched_attack(
                    image, m, gp, params, labels, cfg.roi, seed, clean_output(src), track)
                base = {**base, **matched}
            else:
                if track:
                    params["track_metrics"] = True
                adv, clean_out, adv_out, result, seconds = _attack(image, m, gp.attack, params, labels, cfg.roi,
                                                                     seed, clean_output(src))
            quality = _quality(image.array, adv)
            for tgt in targets:
                tm = models[tgt]
                if tgt == src:
                    t_clean, t_adv, tlabels = clean_out, adv_out, labels
                else:
                    t_clean = clean_output(tgt)
                    tm.module.set_input_spacing(tuple(float(v) for v in image.geometry.spacing))
                    t_adv = tm.forward(tm.to_batch(adv))
                    tlabels = _case_labels(case, image, tm, extra)
                rows.append({**base, "target": tgt, "seed": seed, "seconds": round(seconds, 3), **quality,
                             **_evaluate(tm, t_clean, t_adv, tlabels, case, extra)})
            # the engine records each step's metrics at the iterate *before* its update, plus the final
            # iterate: entry i is the image after i updates (0 = the clean image or random start)
            for i, h in enumerate(result.history):
                history.append({"case": case.case_id, "source": src, "grid_key": gp.key, "attack": gp.attack,
                                "attack_label": gp.label, "eps": gp.eps, "steps": gp.steps,
                                "step": i, "loss": _f(h.get("loss")),
                                "psnr": _f(h.get("psnr")), "dice_fg": _f(h.get("dice"))})
    return {"case": case.case_id, "path": case.path, "rows": rows, "history": history,
            "seconds": round(time.perf_counter() - t_case, 2)}


def _attack(image, model, attack: str, params: dict, labels, roi_mode: str, seed: int, clean_out=None):
    """One registry attack on one image — :func:`~.pipeline.iter_attack` without its full
    metrics.json block (per-label Dice blocks, per-channel norms) that a study does not tabulate.

    Returns ``(adversarial C *spatial, clean output, adversarial output, AttackResult, seconds)``.
    """
    from .pipeline import start_attack

    s = start_attack(image, model, attack, params=params, labels=labels, roi="auto" if roi_mode == "auto" else None,
                     seed=seed, clean_output=clean_out)
    t0 = time.perf_counter()
    result = s.attack.run(s.x, s.labels)
    seconds = time.perf_counter() - t0
    clean_out = s.clean_output
    adv_out = model.forward(result.adversarial)
    adv = result.adversarial[0].detach().cpu().numpy().astype(np.float32)
    return adv, clean_out, adv_out, result, seconds


def _matched_attack(image, model, gp: GridPoint, params: dict, labels, roi_mode: str, seed: int, clean_out,
                    track: bool):
    """A matched-quality grid point on one case: search the knob that reaches the point's
    PSNR/SSIM (:func:`~.matching.match_for_image`), then evaluate the image it gave.

    Returns :func:`_attack`'s tuple plus the row fields of the match (target, achieved, knob,
    value, reached). ``seconds`` is the whole search. An iterative attack whose iterations are
    tracked is run once more at the found value (same seed: the same image) for its history.
    """
    from types import SimpleNamespace

    from .matching import match_for_image

    t0 = time.perf_counter()
    try:
        mr = match_for_image(image, model, gp.attack, **{gp.match_metric: gp.match_target}, params=params,
                             labels=labels, roi="auto" if roi_mode == "auto" else None, seed=seed,
                             tol=gp.match_tol)
    except ValueError as exc:
        raise MedadvError(f"{gp.label}: {exc}") from None
    seconds = time.perf_counter() - t0
    matched = {"match_metric": mr.metric, "match_target": mr.target, "match_achieved": mr.achieved,
               "match_tol": mr.tolerance, "match_knob": mr.knob, "match_value": mr.value,
               "match_reached": bool(mr.reached), "match_evaluations": len(mr.evaluations)}
    if mr.knob == "eps":
        matched["eps"] = mr.value
    if track:
        adv, clean_out, adv_out, result, _ = _attack(image, model, gp.attack, {**mr.params, "track_metrics": True},
                                                     labels, roi_mode, seed, clean_out)
        return adv, clean_out, adv_out, result, seconds, matched
    x = mr.perturbed  # the image at the value found: no need to run the source again
    adv_out = model.forward(x)
    adv = x[0].detach().cpu().numpy().astype(np.float32)
    return adv, clean_out, adv_out, SimpleNamespace(history=[]), seconds, matched


def _f(v) -> float:
    return math.nan if v is None else float(v)


def _case_labels(case: Case, image, model, extra: dict):
    if model.info.task == "segmentation":
        return image.labels
    if case.labels is None:
        return None
    names = extra.get("class_names") or []
    model_names = model.info.class_names or names
    missing = [n for n in model_names if n not in names]
    if missing:
        raise MedadvError(f"the labels CSV has no column for the model's class(es) {', '.join(missing)}")
    return [case.labels[names.index(n)] for n in model_names]


def _quality(clean: np.ndarray, adv: np.ndarray) -> dict:
    if np.array_equal(clean, adv):
        return {"psnr": math.inf, "ssim": 1.0, "rmse": 0.0, "linf": 0.0, "l0_fraction": 0.0}
    from .pipeline import image_quality_per_channel

    iq = image_quality_per_channel(clean, adv, [str(i) for i in range(clean.shape[0])])
    return {k: iq[k] for k in ("psnr", "ssim", "rmse", "linf", "l0_fraction")}


def _evaluate(model, clean_out, adv_out, labels, case: Case, extra: dict) -> dict:
    """Per-case metrics of one (target) model's outputs."""
    from . import metrics as M

    if model.info.task == "segmentation":
        seg_clean = model.to_label_map(clean_out)[0]
        seg_adv = model.to_label_map(adv_out)[0]
        ref = labels if labels is not None else seg_clean
        out = {"reference": "ground truth" if labels is not None else "clean prediction"}
        if model.info.brats_regions(int(clean_out.shape[1])):
            for r, v in M.dice_regions(seg_adv, ref).items():
                out[f"dice_{r}"] = v
        else:  # any other model: Dice per label, named as the model names its labels
            values = sorted((set(np.unique(ref).tolist()) | set(np.unique(seg_clean).tolist())) - {0})
            for v, d in M.dice_per_label(seg_adv, ref, values).items():
                out[f"dice_label_{model.info.label_name(v)}"] = d
        out["dice_fg"] = out["dice_WT"] if "dice_WT" in out else M.foreground_dice(seg_adv, ref)
        out["changed_voxels"] = int((seg_clean != seg_adv).sum())
        return out
    pc = model.probabilities(clean_out)[0].detach().cpu().numpy().astype(np.float64)
    pa = model.probabilities(adv_out)[0].detach().cpu().numpy().astype(np.float64)
    names = model.info.class_names or [str(i) for i in range(len(pc))]
    out: dict = {"reference": "ground truth" if labels is not None else "clean prediction"}
    ref = np.asarray(labels, dtype=np.float64) if labels is not None else pc
    for k in (1, 3):
        if k <= len(pc):
            out[f"k{k}_acc"] = float(M.k_accuracy_per_sample(pa[None], ref[None], k)[0])
    eps_ = 1e-7
    out["mse"] = float(np.mean((pa - pc) ** 2))
    q = np.clip(pa, eps_, 1 - eps_)
    out["bce"] = float(np.mean(-(pc * np.log(q) + (1 - pc) * np.log(1 - q))))
    inv = extra.get("inverse_cooccurrence")
    out["risk"] = float(M.risk(pa[None], pc[None], np.asarray(inv))) if inv is not None else math.nan
    out["top1_changed"] = bool(np.argmax(pc) != np.argmax(pa))
    for i, n in enumerate(names):
        out[f"p_clean_{n}"] = float(pc[i])
        out[f"p_adv_{n}"] = float(pa[i])
        if labels is not None:
            out[f"y_{n}"] = int(labels[i])
    return out


# --------------------------------------------------------------------------- transfer (GUI)


def transfer_attack(image, source, target, attack: str, *, params: dict | None = None, labels=None,
                    roi="auto", seed: int | None = None, callback=None, should_stop=None) -> dict:
    """Craft an adversarial image on ``source`` and evaluate it on ``target`` (both
    :class:`~napari_medadv.core.models.LoadedModel`): Ghamizi's transfer setting.

    Returns ``{"outcome": AttackOutcome (on the source), "target_clean": output,
    "target_adversarial": output, "metrics": {...}}`` where ``metrics`` holds, for segmentation,
    Dice per region on the target (vs ``labels`` or the target's clean prediction) and, for
    classifiers, the target's probabilities and k-robust accuracy — the numbers of one cell of
    the transfer matrix.
    """
    from .pipeline import run_attack

    target.check_image(image.array, str(image.source), image.channel_names)
    o = run_attack(image, source, attack, params=params, labels=labels, roi=roi, seed=seed,
                   callback=callback, should_stop=should_stop)
    from .pipeline import model_input

    x_clean = model_input(image, target)
    t_clean = target.forward(x_clean)
    t_adv = target.forward(target.to_batch(o.adversarial))
    case = Case(str(image.source), str(image.source), None if labels is None or target.info.task == "segmentation"
                else tuple(int(v) for v in np.asarray(labels).ravel()))
    extra = {"class_names": target.info.class_names}
    metrics = _evaluate(target, t_clean, t_adv, labels, case, extra)
    return {"outcome": o, "target_clean": t_clean, "target_adversarial": t_adv, "metrics": metrics}


# --------------------------------------------------------------------------- the study


@dataclass
class StudyResult:
    out: Path
    n_cases: int
    n_run: int
    n_skipped: int
    seconds: float
    files: dict = field(default_factory=dict)


def _safe_name(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


class Study:
    """A study bound to an output folder: ``Study(config, out).run()``."""

    def __init__(self, config: StudyConfig, out: str | Path):
        config.validate()
        self.config = config
        self.out = Path(out)
        self.cases_dir = self.out / "cases"
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
            from . import metrics as M

            ds = self.dataset()
            y = ds.label_matrix()
            inv = None if y is None else M.inverse_cooccurrence(y)
            self._extra = {"class_names": ds.class_names,
                           "inverse_cooccurrence": None if inv is None else inv.tolist()}
        return self._extra

    def model_checksums(self) -> dict:
        if self._checksums is None:
            self._checksums = {spec: _model(spec, self.config.device, self.config.trust_model_code).checksum
                               for spec in self.config.models}
        return self._checksums

    def fingerprint(self, case: Case) -> str:
        c = self.config
        payload = {"case": [case.case_id, case.path, case.labels], "models": self.model_checksums(),
                   "grid": [gp.key for gp in c.points()], "seed": c.seed, "roi": c.roi, "transfer": c.transfer,
                   "track_iterations": c.track_iterations, "extra": self.extra()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def case_file(self, case: Case) -> Path:
        return self.cases_dir / f"{_safe_name(case.case_id)}.json"

    def is_done(self, case: Case) -> bool:
        f = self.case_file(case)
        if not f.is_file():
            return False
        try:
            return json.loads(f.read_text()).get("fingerprint") == self.fingerprint(case)
        except (OSError, json.JSONDecodeError):
            return False  # a damaged file is recomputed

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
                                                                            "class_names": ds.class_names},
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
            write_json(self.case_file(case), {**result, "fingerprint": self.fingerprint(case)})
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
            from .report import build_report

            files = build_report(self.out)
        return StudyResult(self.out, total, state["new"], skipped, time.perf_counter() - t0, files)

    def _run_dask(self, todo, config, extra, finished, workers, scheduler, processes, should_stop):
        from distributed import Client, LocalCluster, as_completed

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
            futures = {client.submit(run_case, c, config, extra, key=f"medadv-case-{_safe_name(c.case_id)}-"
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


def default_workers() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    except ImportError:
        pass
    return max(1, os.cpu_count() or 1)
