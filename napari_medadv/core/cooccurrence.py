"""Label co-occurrence from a labels CSV: the inverse co-occurrence matrix C of Ghamizi et al.
2023 (section 5) that risk-targeted PGD aims at and RISK weighs with.

The paper builds C from the *training* labels (the NIH dataset's co-occurrences); without
them a study falls back on the labels of the set it evaluates (said in its report). The CSV is
the labels format of studies: a header with an optional ``file`` column and one column per
class, and one 0/1 row per image; the images themselves are not needed here.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputFileError
from .metrics import inverse_cooccurrence


def read_label_matrix(path) -> tuple[list[str], np.ndarray]:
    """``(class names, (n, M) 0/1 matrix)`` of a labels CSV; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "labels CSV not found")
    try:
        with open(p, newline="") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(p, f"cannot read the labels CSV ({exc})") from None
    if len(rows) < 2:
        raise InputFileError(p, "labels CSV needs a header (file,<class>,...) and at least one row")
    header = [h.strip() for h in rows[0]]
    keep = [i for i, h in enumerate(header) if h != "file"]
    if not keep:
        raise InputFileError(p, "labels CSV has no class column")
    values = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise InputFileError(p, f"line {n} has {len(r)} fields, the header {len(header)}")
        try:
            v = [float(r[i]) for i in keep]
        except ValueError:
            raise InputFileError(p, f"line {n}: labels must be 0 or 1") from None
        if any(x not in (0.0, 1.0) for x in v):
            raise InputFileError(p, f"line {n}: labels must be 0 or 1")
        values.append(v)
    return [header[i] for i in keep], np.asarray(values, dtype=np.float64)


def inverse_cooccurrence_from_csv(path, class_names: Sequence[str] | None = None) -> np.ndarray:
    """The normalised inverse co-occurrence matrix of a labels CSV
    (:func:`~napari_medadv.core.metrics.inverse_cooccurrence`), its rows and columns in the
    order of ``class_names`` (a model's classes; every one must be a column) or, without
    names, in the CSV's column order."""
    names, y = read_label_matrix(path)
    if class_names:
        missing = [c for c in class_names if c not in names]
        if missing:
            raise InputFileError(path, f"labels CSV has no column for the class(es) {', '.join(missing)}; "
                                       f"it has {', '.join(names)}")
        y = y[:, [names.index(c) for c in class_names]]
    return inverse_cooccurrence(y)
