"""A study's dataset: its cases (BraTS case folders, or images with a labels CSV) found on disk,
and held-out phantom cases generated on demand (``phantoms:glioma:5-24``)."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ..data import cxr, glioma
from ..data.seeds import TRAIN_SEED_START
from ..errors import InputFileError, MedadvError
from ..files import atomic_write
from ..io.nifti import find_brats_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")


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
    bad = [s for s in seeds if s < 1 or s >= TRAIN_SEED_START]
    if bad or not seeds:
        raise MedadvError(f"phantom dataset {spec!r}: held-out seeds must lie in 1..{TRAIN_SEED_START - 1} "
                          f"(seeds >= {TRAIN_SEED_START} are the demo models' training cases)")
    return parts[1], sorted(set(seeds))


def materialize_phantoms(spec: str, folder: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Generate held-out phantom cases into ``folder`` (existing ones are kept: resumable)."""
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
