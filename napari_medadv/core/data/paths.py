"""Where the shipped sample data and demo weights live (editable checkout or installed wheel)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MedadvError

_PKG = Path(__file__).resolve().parents[2]  # the napari_medadv package folder


def sample_data_dir() -> Path:
    """The ``sample_data`` folder: ``$MEDADV_SAMPLE_DATA``, the copy inside an installed wheel,
    or the repository's folder for an editable install."""
    env = os.environ.get("MEDADV_SAMPLE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [_PKG / "_bundled_sample_data", _PKG.parent / "sample_data"]
    for c in candidates:
        if (c / "PROVENANCE.md").is_file():
            return c
    raise MedadvError(
        "the sample data folder was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall napari-medadv or set MEDADV_SAMPLE_DATA"
    )


def demo_models_dir() -> Path:
    return sample_data_dir() / "models"
