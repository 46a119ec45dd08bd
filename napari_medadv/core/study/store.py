"""A study's stored results, read back: the per-case rows and per-step history that the study
writes (``cases/*.json``) and the report reads. Both import this module; neither imports the
other's internals (no study <-> report import loop)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputFileError

#: grid key of the clean (no attack) evaluation of every case
NO_ATTACK = "none"
#: BraTS tumour regions, the Dice columns of BraTS-labelled models
REGIONS = ("WT", "TC", "ET")


def load_rows(out: str | Path):
    """``(per-case rows, per-step history)`` as pandas DataFrames from the stored cases."""
    import pandas as pd

    rows, hist = [], []
    for f in sorted((Path(out) / "cases").glob("*.json")):
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
