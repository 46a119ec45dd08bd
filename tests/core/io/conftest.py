"""Fixtures for the I/O tests (builders live in ``io_testutils``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from io_testutils import NIBABEL_DATA, build_series


@pytest.fixture
def ct_series(tmp_path) -> dict:
    return build_series(tmp_path / "series")


@pytest.fixture
def nifti4d() -> Path:
    return NIBABEL_DATA / "example4d.nii.gz"


@pytest.fixture
def nifti3d() -> Path:
    return NIBABEL_DATA / "anatomical.nii"
