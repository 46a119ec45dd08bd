"""A study's stored results: one JSON file per finished case (``OUT/cases/<case>.json``, its rows,
per-step history and fingerprint), written by the runner and read back as tables by the report.
Both import this module; neither imports the other's internals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import InputFileError
from ..files import write_json

#: grid key of the clean (no attack) evaluation of every case
NO_ATTACK = "none"
#: BraTS tumour regions, the Dice columns of BraTS-labelled models
REGIONS = ("WT", "TC", "ET")
#: the folder of a study's stored cases, one JSON file each
CASES = "cases"
#: the folder of the cases that raised on every try (one JSON file each: the error, where it ran)
FAILED = "failed"


def safe_name(case_id: str) -> str:
    """A case id as a file-name stem (and a Dask key part): anything but ``[A-Za-z0-9-_.]`` → ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


def case_file(out: str | Path, case_id: str) -> Path:
    """Where a study in ``out`` stores case ``case_id``."""
    return Path(out) / CASES / f"{safe_name(case_id)}.json"


def write_case(path: Path, result: dict, fingerprint: str) -> None:
    """Store one finished case (:func:`~.cases.run_case`'s result) with its fingerprint, atomically."""
    write_json(path, {**result, "fingerprint": fingerprint})


def write_failure(out: str | Path, case_id: str, error: str, tries: int) -> None:
    """Record that case ``case_id`` failed (a re-run tries it again)."""
    write_json(Path(out) / FAILED / f"{safe_name(case_id)}.json", {"case": case_id, "error": error, "tries": tries})


def clear_failure(out: str | Path, case_id: str) -> None:
    (Path(out) / FAILED / f"{safe_name(case_id)}.json").unlink(missing_ok=True)


def load_failures(out: str | Path) -> list[dict]:
    """The failed cases of the last run(s): ``[{case, error, tries}]`` by case."""
    found = []
    for f in sorted((Path(out) / FAILED).glob("*.json")):
        try:
            found.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            found.append({"case": f.stem, "error": "(damaged failure record)", "tries": None})
    return found


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint a stored case was computed with; ``None`` when the file is missing or
    damaged (the case is then recomputed)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def load_rows(out: str | Path):
    """``(per-case rows, per-step history)`` as pandas DataFrames from the stored cases."""
    rows, hist = [], []
    for f in sorted((Path(out) / CASES).glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f, f"damaged case result ({exc}); delete it to recompute the case") from None
        rows.extend(data["rows"])
        hist.extend(data["history"])
    df = pd.DataFrame(rows)
    if "match_reached" in df:  # only matched-quality rows have it: a nullable boolean, not object
        df["match_reached"] = df["match_reached"].astype("boolean")
    return df, pd.DataFrame(hist)
